#!/usr/bin/env python3
"""Lists the `/api2/json` operations a running Horcrux serves, out of Proxmox's schema.

Usage: scripts/pve-served-routes.py APIDATA BASE_URL > routes.txt

BASE_URL is `https://HOST:PORT/api2/json`. Every operation of APIDATA (Proxmox's
`apidata.json`) is probed once, without credentials and without parameters: Horcrux
answers an operation it does not serve with 501 "not implemented" (as Proxmox does), and
one it serves with anything else (401, or a 400 for a missing parameter), before acting.
The output is one `METHOD /path` per line, for `pve-openapi.py`. The check that runs
schemathesis over it is therefore generic: a compat route is covered the day it lands.
"""

import json
import ssl
import sys
import urllib.error
import urllib.request

# Path parameters get a value of their kind; the answer only has to show whether the
# route exists.
SAMPLE = {"node": "probe", "vmid": "100", "upid": "UPID:probe:00000000:00000000:00000000:probe:0:root@pam:"}


def walk(nodes):
    for n in nodes:
        for method in sorted((n.get("info") or {}).keys()):
            yield method, n["path"]
        yield from walk(n.get("children") or [])


def served(base, method, path, ctx):
    concrete = path
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            concrete = concrete.replace(part, SAMPLE.get(part[1:-1], "probe"), 1)
    body = b"" if method in ("POST", "PUT") else None
    req = urllib.request.Request(base + concrete, data=body, method=method)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status not in (405, 501)
    except urllib.error.HTTPError as e:
        return e.code not in (405, 501)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        tree = json.load(f)
    base = sys.argv[2].rstrip("/")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for method, path in walk(tree):
        if served(base, method, path, ctx):
            print(f"{method} {path}")


if __name__ == "__main__":
    main()
