#!/usr/bin/env python3
"""Generates an OpenAPI 3.0.3 document for Proxmox VE's `/api2/json` from its API schema.

Usage: scripts/pve-openapi.py [--example NAME=VALUE ...] [--perl-scalars] [--perl-scalar 'METHOD /path' ...]
                             APIDATA ROUTES_FILE > out.json

APIDATA is Proxmox's `apidata.json` (the API viewer's tree). ROUTES_FILE lists the
operations to document, one `METHOD /path/{param}` a line, paths relative to `/api2/json`
in Proxmox's syntax (`#` starts a comment). A route missing from APIDATA is an error.
The document has no `servers`: pass `--url https://HOST:PORT/api2/json` to schemathesis.

Proxmox's JSON-schema dialect is mapped as follows (see `convert`):
- booleans are Proxmox's 0/1 (also true/false): `anyOf: [boolean, integer 0|1]`;
- `optional: 1` is "not required"; in answers an optional property (or `data`) may also be
  null, as Proxmox's own validator lets undefined values pass there;
- Perl patterns are anchored (Proxmox matches `^(?:PAT)$`) and rewritten for Python/ECMA
  (`(?^:` groups, atomic groups, possessive quantifiers, `{,n}`, `\\d`); a pattern that
  still does not compile is dropped (reported on stderr);
- well-known Proxmox formats (`pve-node`, `pve-userid`, `pve-storage-id`, their `-list`
  and `-opt` forms, ...) become patterns; other formats, property-string formats
  (objects) included, stay plain strings. The format and `typetext` are kept as
  `x-pve-format` / `x-pve-typetext` and no OpenAPI `format` is emitted;
- `additionalProperties: 0` forbids other keys; absent, other keys are allowed (as in
  Proxmox's validator);
- indexed keys (`net[n]`) are expanded to `net0`..`netN` (N from "n is A to B" in the
  description, else Proxmox's limit);
- answers are `{"data": RETURNS}` under 200; every other status is `default`, Proxmox's
  error shape `{"data": null, "errors"?: {param: message}}`; a 400 must name the refused
  parameter in `errors`.

--perl-scalars loosens answers to what Proxmox's Perl validator accepts: an integer or
number may be a numeric string, a string may be a number.
--perl-scalar 'METHOD /path' does the same for one operation only: where Proxmox itself
answers a number as a string and clients rely on it (`GET /cluster/nextid` answers "100",
and clients parse `data` as a string).
--example NAME=VALUE sets the `example` of every path parameter NAME.
"""

import json
import re
import sys

# Proxmox's limits for indexed keys whose description does not give the range.
INDEX_RANGES = {
    "net": 31, "ipconfig": 31, "unused": 255, "hostpci": 15, "numa": 7, "virtiofs": 9,
    "usb": 14, "serial": 3, "parallel": 2, "ide": 3, "sata": 5, "scsi": 30, "virtio": 15,
    "link": 7, "dev": 255, "mp": 255, "acmedomain": 4,
}

USER_RE = r"[^\s:/]+"
USER_ITEM_RE = r"[^\s:/,;]+"  # inside a list (the list splits on , ; and spaces)
REALM_RE = r"[A-Za-z][A-Za-z0-9.\-_]+"
TOKEN_NAME_RE = r"[A-Za-z][A-Za-z0-9.\-_]+"
LABEL_RE = r"[a-zA-Z0-9](?:[a-zA-Z0-9\-]*[a-zA-Z0-9])?"
STORAGE_RE = r"[a-z][a-z0-9\-_.]*[a-z0-9]"
EMAIL_RE = r"[\w+\-~]+(?:\.[\w+\-~]+)*@[a-zA-Z0-9\-]+(?:\.[a-zA-Z0-9\-]+)*"

# Proxmox format -> (pattern, pattern of one item inside a `-list`), unanchored.
FORMATS = {
    "pve-node": LABEL_RE,
    "pve-vmid": r"[1-9][0-9]{2,8}",
    "pve-storage-id": STORAGE_RE,
    "pve-configid": r"[a-z][a-z0-9_]+",
    "pve-userid": (f"{USER_RE}@{REALM_RE}", f"{USER_ITEM_RE}@{REALM_RE}"),
    "pve-tokenid": (f"{USER_RE}@{REALM_RE}!{TOKEN_NAME_RE}", f"{USER_ITEM_RE}@{REALM_RE}!{TOKEN_NAME_RE}"),
    "pve-groupid": r"[A-Za-z0-9.\-_]+",
    "pve-roleid": r"[A-Za-z0-9.\-_]+",
    "pve-poolid": r"[A-Za-z0-9.\-_]+(?:/[A-Za-z0-9.\-_]+){0,2}",
    "pve-realm": REALM_RE,
    "pve-volume-id": f"{STORAGE_RE}:.+",
    "pve-storage-content": r"images|rootdir|vztmpl|iso|backup|snippets|import|none",
    "dns-name": rf"(?:{LABEL_RE}\.)*{LABEL_RE}",
    "email": EMAIL_RE,
    "mac-addr": r"[a-fA-F0-9]{2}(?::[a-fA-F0-9]{2}){5}",
    "pve-tag": r"[a-zA-Z0-9_][a-zA-Z0-9_\-+.]*",
    # "pve-priv": filled in from apidata (the privileges GET /access/roles/{roleid} lists).
}

LIST_SEP = r"[,;\s]"

warnings = []


def warn(msg):
    if msg not in warnings:
        warnings.append(msg)


def boolean_schema():
    return {"anyOf": [{"type": "boolean"}, {"type": "integer", "enum": [0, 1]}]}


def _class(pattern, i, ci):
    """Parses the character class at `pattern[i] == "["`: (converted class, index after it),
    or None. `ci`: the class is in a case-insensitive group (letters get both cases)."""
    n = len(pattern)
    j = i + 1
    out = "["
    if j < n and pattern[j] == "^":
        out += "^"
        j += 1
    first = True
    while j < n:
        c = pattern[j]
        if c == "]" and not first:
            return out + "]", j + 1
        first = False
        if c == "[" and pattern.startswith(("[:", "[=", "[."), j):
            return None  # POSIX class
        if c == "\\" and j + 1 < n:
            e = pattern[j + 1]
            j += 2
            if e == "d":
                out += "0-9"
            elif e in "pPhHvVXRN":
                return None
            else:
                out += "\\" + e  # \w \s \S \x.. \0 \n \t, escaped punctuation
            continue
        lit = c
        j += 1
        if c in "[]":
            lit = "\\" + c
        # A range X-Y (Y not the closing bracket).
        if j + 1 < n and pattern[j] == "-" and pattern[j + 1] != "]":
            hi = pattern[j + 1]
            k = j + 2
            if hi == "\\" and k < n:
                hi = "\\" + pattern[k]
                k += 1
            out += f"{lit}-{hi}"
            if ci and len(c) == 1 and len(hi) == 1 and c.isalpha() and hi.isalpha() and c.islower() == hi.islower():
                out += f"{c.swapcase()}-{hi.swapcase()}"
            j = k
            continue
        out += lit
        if ci and c.isalpha() and c.swapcase() != c:
            out += c.swapcase()
    return None


def perl_regex(pattern, where):
    """A Perl pattern as an anchored Python/ECMA one, or None if it cannot be converted."""
    out = []
    i, n = 0, len(pattern)
    groups = []  # case-insensitivity of each open group
    ci = False
    quantifiable = False  # whether the previous token takes a quantifier (a `+` after one is possessive)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            e = pattern[i + 1]
            i += 2
            quantifiable = True
            if e == "d":
                out.append("[0-9]")
            elif e in "@/":
                out.append(e)
            elif e == "A":
                out.append("^")
                quantifiable = False
            elif e in "zZ":
                out.append("$")
                quantifiable = False
            elif e in "GpPXRhHvVKN" or e.isdigit() and e != "0":
                return None  # not expressible (or backreferences)
            else:
                out.append("\\" + e)
            continue
        if c == "[":
            r = _class(pattern, i, ci)
            if r is None:
                return None
            out.append(r[0])
            i = r[1]
            quantifiable = True
            continue
        if c == "(":
            quantifiable = False
            if not pattern.startswith("(?", i):
                groups.append(ci)
                out.append("(")
                i += 1
                continue
            m = re.match(r"\(\?(\^?)([a-zA-Z]*)(?:-([a-zA-Z]*))?:", pattern[i:])
            if m:
                caret, on, off = m.group(1), m.group(2), m.group(3) or ""
                if set(on + off) - set("imsx") or set(on + off) & set("msx"):
                    return None  # only case-insensitivity is rewritten
                groups.append(ci)
                if caret:
                    ci = False
                if "i" in on:
                    ci = True
                if "i" in off:
                    ci = False
                out.append("(?:")
                i += len(m.group(0))
                continue
            if pattern.startswith("(?>", i):
                groups.append(ci)
                out.append("(?:")  # atomic group: matches more strings without it
                i += 3
                continue
            m = re.match(r"\(\?P?<([A-Za-z_]\w*)>", pattern[i:])
            if m:
                groups.append(ci)
                out.append("(")  # named group: Python and ECMA spell it differently
                i += len(m.group(0))
                continue
            for look in ("(?=", "(?!", "(?<=", "(?<!"):
                if pattern.startswith(look, i):
                    groups.append(ci)
                    out.append(look)
                    i += len(look)
                    break
            else:
                return None
            continue
        if c == ")":
            if not groups:
                return None
            ci = groups.pop()
            out.append(")")
            i += 1
            quantifiable = True
            continue
        if c == "{":
            m = re.match(r"\{(\d*)(,?)(\d*)\}", pattern[i:])
            if m and quantifiable and (m.group(1) or m.group(3)):
                lo = m.group(1) or "0"
                out.append("{" + lo + m.group(2) + m.group(3) + "}")
                i += len(m.group(0))
                if i < n and pattern[i] == "+":
                    i += 1  # possessive
                elif i < n and pattern[i] == "?":
                    out.append("?")
                    i += 1
                quantifiable = False
                continue
            out.append("\\{")
            i += 1
            quantifiable = True
            continue
        if c in "*+?":
            if not quantifiable:
                return None
            out.append(c)
            i += 1
            if i < n and pattern[i] == "+":
                i += 1  # possessive
            elif i < n and pattern[i] == "?":
                out.append("?")
                i += 1
            quantifiable = False
            continue
        if c in "|^$":
            out.append(c)
            i += 1
            quantifiable = c == "$"
            continue
        if c == "}":
            out.append("\\}")
        elif ci and c.isalpha() and c.swapcase() != c:
            out.append(f"[{c}{c.swapcase()}]")
        else:
            out.append(c)
        i += 1
        quantifiable = True
    if groups:
        return None
    converted = "^(?:" + "".join(out) + ")$"
    try:
        re.compile(converted)
    except re.error as e:
        warn(f"{where}: pattern {pattern!r} dropped ({e})")
        return None
    return converted


def format_pattern(fmt):
    """The anchored pattern for a Proxmox format name, or None."""
    base, suffix = fmt, ""
    for s in ("-list", "-opt"):
        if fmt.endswith(s) and fmt[: -len(s)] in FORMATS:
            base, suffix = fmt[: -len(s)], s
    if base not in FORMATS:
        return None
    p = FORMATS[base]
    whole, item = (p, p) if isinstance(p, str) else p
    if suffix == "-list":
        body = f"{LIST_SEP}*(?:(?:{item})(?:{LIST_SEP}+(?:{item}))*{LIST_SEP}*)?"
    elif suffix == "-opt":
        body = f"(?:{whole})?"
    else:
        body = whole
    return "^(?:" + body + ")$"


def number(v):
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return None
    return None


def fits(schema, value):
    """Whether `value` is a valid default for the converted `schema` (roughly)."""
    t = schema.get("type")
    if "anyOf" in schema:
        return value in (0, 1, True, False)
    if "enum" in schema and value not in schema["enum"]:
        return False
    if t == "string":
        if not isinstance(value, str):
            return False
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return False
        return True
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return t is None


def describe(s):
    parts = [s.get("description", "").strip()]
    if s.get("verbose_description"):
        parts = [s["verbose_description"].strip()]
    if s.get("requires"):
        parts.append(f"Requires `{s['requires']}`.")
    return "\n\n".join(p for p in parts if p)


COMPONENTS = {}


def component_name(text):
    return re.sub(r"[^A-Za-z0-9.\-_]+", "_", text).strip("_")


def expand_indexed(props, where, conv):
    """Converted properties, `net[n]` expanded to `net0` .. `netN`, each a `$ref` to one
    component. `conv(key, schema)` converts one property."""
    out = {}
    for k, v in props.items():
        m = re.fullmatch(r"(.+)\[n\]", k)
        if not m:
            out[k] = (conv(k, v), v)
            continue
        base = m.group(1)
        r = re.search(r"n is (\d+) to (\d+)", v.get("description", ""))
        lo, hi = (int(r.group(1)), int(r.group(2))) if r else (0, INDEX_RANGES.get(base, 9))
        if base == "usb":
            hi = max(hi, INDEX_RANGES["usb"])  # "n is 0 to 4, ... can be up to 14"
        name = component_name(f"{where}.{base}N")
        COMPONENTS[name] = conv(k, {**v, "optional": 0})
        ref = {"$ref": f"#/components/schemas/{name}"}
        for i in range(lo, hi + 1):
            out[f"{base}{i}"] = (ref, v)
    return out


def convert(s, where, answer, perl_scalars=False):
    """A Proxmox schema as an OpenAPI 3.0 schema; `answer` marks response schemas."""
    if not isinstance(s, dict):
        return {}
    if "oneOf" in s:
        alts = [convert({**a, "optional": 0}, where, answer, perl_scalars) for a in s["oneOf"]]
        out = {"anyOf": alts}
        if describe(s):
            out["description"] = describe(s)
        return out
    t = s.get("type")
    out = {}
    if t == "boolean":
        out = boolean_schema()
    elif t in ("string", "integer", "number"):
        out["type"] = t
    elif t == "array":
        out["type"] = "array"
        out["items"] = convert(s.get("items", {}), where + "[]", answer, perl_scalars)
    elif t == "object" or (t is None and "properties" in s):
        out["type"] = "object"
        props = expand_indexed(
            s.get("properties") or {}, where,
            lambda k, v: convert(v, f"{where}.{k}", answer, perl_scalars))
        if props:
            out["properties"] = {}
            required = []
            for k, (sub, v) in props.items():
                if answer and v.get("optional"):
                    sub = nullable(sub)
                out["properties"][k] = sub
                if not v.get("optional") and "alias" not in v:
                    required.append(k)
            if required:
                out["required"] = required
        ap = s.get("additionalProperties")
        if isinstance(ap, dict):
            out["additionalProperties"] = convert(ap, where + "{}", answer, perl_scalars)
        elif ap is not None and not ap:
            out["additionalProperties"] = False
    elif t == "null":
        out = {"nullable": True, "enum": [None]}
    elif t in (None, "any"):
        out = {}
    else:
        warn(f"{where}: unknown type {t!r}, left unconstrained")
        out = {}

    # Proxmox's schema has `"enum": null` where the values depend on the host (download-url's
    # `compression`): no constraint.
    if t in ("string", "integer", "number") and s.get("enum") is not None:
        out["enum"] = list(s["enum"])
        if t != "string":
            out["enum"] = [number(x) for x in out["enum"] if number(x) is not None]
    if t in ("integer", "number"):
        for k in ("minimum", "maximum"):
            if k in s and number(s[k]) is not None:
                out[k] = number(s[k])
    if t == "string":
        if "maxLength" in s and number(s["maxLength"]) is not None:
            out["maxLength"] = int(number(s["maxLength"]))
        if "minLength" in s and number(s["minLength"]) is not None:
            out["minLength"] = int(number(s["minLength"]))
        pat = None
        if "pattern" in s:
            pat = perl_regex(s["pattern"], where)
            if pat is None:
                warn(f"{where}: pattern {s['pattern']!r} dropped")
        fmt = s.get("format")
        if isinstance(fmt, str):
            out["x-pve-format"] = fmt
            fpat = format_pattern(fmt)
            if fpat and pat and fpat != pat:
                out["allOf"] = [{"pattern": fpat}]
            elif fpat:
                pat = fpat
        elif isinstance(fmt, dict):
            out["x-pve-format"] = "property-string"
        if pat and "enum" not in out:
            out["pattern"] = pat
    if "typetext" in s:
        out["x-pve-typetext"] = s["typetext"]
    d = describe(s)
    if d:
        out["description"] = d

    if "default" in s:
        dv = s["default"]
        if t in ("integer", "number") or t == "boolean":
            dv = number(dv) if number(dv) is not None else dv
        if fits(out, dv):
            out["default"] = dv
        else:
            out["x-pve-default"] = dv

    if perl_scalars and answer and t in ("string", "integer", "number"):
        other = {"type": "string", "pattern": r"^-?[0-9]+$"} if t == "integer" else (
            {"type": "string", "pattern": r"^-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?$"}
            if t == "number" else {"type": "number"})
        annot = {k: out.pop(k) for k in list(out) if k.startswith("x-") or k in ("description", "default")}
        out = {"anyOf": [out, other], **annot}
    return out


def nullable(schema):
    if not schema:
        return schema
    if "type" in schema and "anyOf" not in schema and "allOf" not in schema:
        out = dict(schema)
        out["nullable"] = True
        if "enum" in out:
            out["enum"] = out["enum"] + [None]
        return out
    keep = {k: schema[k] for k in schema if k.startswith("x-") or k == "description"}
    inner = {k: v for k, v in schema.items() if k not in keep}
    return {"anyOf": [inner, {"nullable": True, "enum": [None]}], **keep}


def load_tree(path):
    with open(path) as f:
        tree = json.load(f)
    index = {}
    stack = list(tree)
    while stack:
        node = stack.pop()
        index[node["path"]] = node
        stack.extend(node.get("children") or [])
    return index


def read_routes(path):
    routes = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].startswith("/"):
                sys.exit(f"{path}:{lineno}: expected `METHOD /path`, got {line!r}")
            routes.append((parts[0].upper(), parts[1].rstrip("/") or "/"))
    return routes


PARAM_ERROR_SCHEMA = {
    "type": "object",
    "description": "A 400 answer: `errors` names at least one parameter.",
    "required": ["data", "errors"],
    "properties": {
        "data": {"nullable": True, "enum": [None]},
        "errors": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}},
    },
}

ERROR_SCHEMA = {
    "type": "object",
    "description": "Proxmox's error answer: `data` is null, `errors` maps parameters to messages.",
    "required": ["data"],
    "properties": {
        "data": {"nullable": True, "enum": [None]},
        "errors": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def operation(method, path, info, examples, perl_scalars):
    where = f"{method} {path}"
    params = info.get("parameters") or {}
    raw = params.get("properties") or {}
    path_names = re.findall(r"\{([^}]+)\}", path)
    parameters = []
    for name in path_names:
        if name not in raw:
            warn(f"{where}: path parameter {name} undocumented, taken as a string")
        schema = convert(raw.get(name, {"type": "string"}), f"{where} {name}", False)
        p = {"name": name, "in": "path", "required": True, "schema": schema}
        if name in examples:
            p["example"] = examples[name]
        parameters.append(p)
    rest = expand_indexed(
        {k: v for k, v in raw.items() if k not in path_names}, where,
        lambda k, v: convert(v, f"{where} {k}", False))
    op = {
        "operationId": where,
        "summary": info.get("description", "").split("\n")[0],
        "description": info.get("description", ""),
        "parameters": parameters,
    }
    if info.get("permissions"):
        op["x-pve-permissions"] = info["permissions"]
    if method in ("GET", "DELETE", "HEAD"):
        for k, (schema, v) in rest.items():
            parameters.append({"name": k, "in": "query", "required": not v.get("optional"), "schema": schema})
    elif rest:
        body = {"type": "object", "properties": {k: schema for k, (schema, _) in rest.items()}}
        required = [k for k, (_, v) in rest.items() if not v.get("optional")]
        if required:
            body["required"] = required
        if params.get("additionalProperties") is not None and not params.get("additionalProperties"):
            body["additionalProperties"] = False
        name = component_name(f"{where} body")
        COMPONENTS[name] = body
        ref = {"$ref": f"#/components/schemas/{name}"}
        op["requestBody"] = {
            "required": bool(required),
            "content": {"application/x-www-form-urlencoded": {"schema": ref}, "application/json": {"schema": ref}},
        }
    returns = info.get("returns") or {}
    data = convert(returns, f"{where} returns", True, perl_scalars)
    if returns.get("optional") and returns.get("type") != "null":
        data = nullable(data)
    op["responses"] = {
        "200": {
            "description": "OK",
            "content": {
                "application/json": {
                    "schema": {"type": "object", "required": ["data"], "properties": {"data": data}}
                }
            },
        },
        # A refused parameter names itself (Proxmox's "Parameter verification failed").
        "400": {
            "description": "Parameter verification failed",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ParamError"}}},
        },
        "default": {
            "description": "Error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        },
    }
    return op


def links(paths):
    """Links from a create (`POST P` with body key K) to the operations on `P/{K}...`."""
    for path, item in paths.items():
        post = item.get("post")
        if not post or "requestBody" not in post:
            continue
        ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        body = COMPONENTS[ref.rsplit("/", 1)[1]].get("properties", {})
        found = {}
        for other, other_item in paths.items():
            m = re.match(re.escape(path) + r"/\{([^}]+)\}(?:/|$)", other)
            if not m or m.group(1) not in body:
                continue
            key = m.group(1)
            if re.findall(r"\{([^}]+)\}", other) != re.findall(r"\{([^}]+)\}", path) + [key]:
                continue
            for method, op in other_item.items():
                params = {n: f"$request.path.{n}" for n in re.findall(r"\{([^}]+)\}", path)}
                params[key] = f"$request.body#/{key}"
                name = op["operationId"].replace("/", "_").replace("{", "").replace("}", "").replace(" ", "_")
                found[name] = {"operationId": op["operationId"], "parameters": params}
        # A create addressed by its own path (`POST /access/users/{u}/token/{t}`).
        for method, op in item.items():
            if method != "post":
                pnames = re.findall(r"\{([^}]+)\}", path)
                if pnames and pnames[-1] in path.rsplit("/", 1)[-1]:
                    name = op["operationId"].replace("/", "_").replace("{", "").replace("}", "").replace(" ", "_")
                    found[name] = {"operationId": op["operationId"],
                                   "parameters": {n: f"$request.path.{n}" for n in pnames}}
        if found:
            post["responses"]["200"]["links"] = found


def main(argv):
    examples = {}
    perl_scalars = False
    perl_scalar_ops = set()
    args = []
    it = iter(argv)
    for a in it:
        if a == "--example":
            kv = next(it, None)
            if not kv or "=" not in kv:
                sys.exit("--example takes NAME=VALUE")
            k, v = kv.split("=", 1)
            examples[k] = int(v) if v.isdigit() else v
        elif a.startswith("--example="):
            k, v = a[len("--example="):].split("=", 1)
            examples[k] = int(v) if v.isdigit() else v
        elif a == "--perl-scalars":
            perl_scalars = True
        elif a == "--perl-scalar":
            one = next(it, None)
            if not one or " " not in one:
                sys.exit("--perl-scalar takes 'METHOD /path'")
            perl_scalar_ops.add(tuple(one.split(" ", 1)))
        elif a in ("-h", "--help"):
            print(__doc__)
            return 0
        else:
            args.append(a)
    if len(args) != 2:
        sys.stderr.write(__doc__)
        return 2
    index = load_tree(args[0])
    routes = read_routes(args[1])

    roles = index.get("/access/roles/{roleid}", {}).get("info", {}).get("GET", {})
    privs = sorted((roles.get("returns") or {}).get("properties", {}))
    if privs:
        FORMATS["pve-priv"] = "|".join(re.escape(p) for p in privs)

    missing = [f"{m} {p}" for m, p in routes if m not in (index.get(p) or {}).get("info", {})]
    if missing:
        sys.stderr.write("routes not in %s:\n  %s\n" % (args[0], "\n  ".join(missing)))
        return 1

    paths = {}
    for method, path in routes:
        info = index[path]["info"][method]
        loose = perl_scalars or (method, path) in perl_scalar_ops
        paths.setdefault(path, {})[method.lower()] = operation(method, path, info, examples, loose)
    links(paths)
    doc = {
        "openapi": "3.0.3",
        "info": {
            "title": "Proxmox VE API (/api2/json), as served by Horcrux",
            "version": "pve",
            "description": "Generated by scripts/pve-openapi.py from Proxmox's apidata.json.",
        },
        "paths": paths,
        "components": {"schemas": {"Error": ERROR_SCHEMA, "ParamError": PARAM_ERROR_SCHEMA, **COMPONENTS}},
    }
    json.dump(doc, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")
    for w in warnings:
        sys.stderr.write(f"warning: {w}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
