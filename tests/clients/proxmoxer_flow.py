"""Drives a running Horcrux through proxmoxer (PyPI), unchanged, as Proxmox users do.

Usage: proxmoxer_flow.py HOST PORT TOKEN_SECRET USER PASSWORD
Exits non-zero with a message on the first thing that does not work.
"""
import sys
import time

from proxmoxer import ProxmoxAPI

host, port, secret, user, password = sys.argv[1:6]


def wait(api, node, upid, what):
    deadline = time.time() + 120
    while time.time() < deadline:
        st = api.nodes(node).tasks(upid).status.get()
        if st["status"] == "stopped":
            assert st["exitstatus"] == "OK", f"{what}: {st}"
            return
        time.sleep(0.3)
    raise AssertionError(f"{what}: task {upid} still running")


# API token login (root@pam!admin).
api = ProxmoxAPI(host, port=int(port), user="root@pam", token_name="admin", token_value=secret, verify_ssl=False)
nodes = api.nodes.get()
assert nodes and nodes[0]["status"] == "online", nodes
node = nodes[0]["node"]
vmid = int(api.cluster.nextid.get())
assert vmid >= 100, vmid

upid = api.nodes(node).qemu.create(vmid=vmid, name="pxtest", memory=128, cores=1)
assert upid.startswith(f"UPID:{node}:"), upid
wait(api, node, upid, "create")
assert any(g["vmid"] == vmid for g in api.nodes(node).qemu.get()), "created VM listed"

upid = api.nodes(node).qemu(vmid).status.start.post()
wait(api, node, upid, "start")
cur = api.nodes(node).qemu(vmid).status.current.get()
assert cur["status"] == "running", cur
log = api.nodes(node).tasks(upid).log.get()
assert log and "n" in log[0] and "t" in log[0], log

upid = api.nodes(node).qemu(vmid).status.stop.post()
wait(api, node, upid, "stop")
assert api.nodes(node).qemu(vmid).status.current.get()["status"] == "stopped"

upid = api.nodes(node).qemu(vmid).delete()
wait(api, node, upid, "delete")
assert not any(g["vmid"] == vmid for g in api.nodes(node).qemu.get()), "deleted VM gone"

# Password login (ticket + CSRF), as a user with the Administrator role.
papi = ProxmoxAPI(host, port=int(port), user=user, password=password, verify_ssl=False)
assert papi.nodes.get()[0]["node"] == node
vmid = int(papi.cluster.nextid.get())
upid = papi.nodes(node).qemu.create(vmid=vmid, name="pwtest", memory=128)
wait(papi, node, upid, "create with a ticket")
upid = papi.nodes(node).qemu(vmid).delete()
wait(papi, node, upid, "delete with a ticket")

# Errors arrive as Proxmox's, with the parameter named.
try:
    api.nodes(node).qemu.create(name="novmid", memory=128)
    raise AssertionError("create without vmid succeeded")
except Exception as e:  # proxmoxer.core.ResourceException
    assert "vmid" in str(e), e

print("proxmoxer: OK")
