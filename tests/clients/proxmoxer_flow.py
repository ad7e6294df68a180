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

cfg = api.nodes(node).qemu(vmid).config.get()
assert cfg["name"] == "pxtest" and cfg["memory"] == "128" and cfg["cores"] == 1 and cfg["digest"], cfg

upid = api.nodes(node).qemu(vmid).status.start.post()
wait(api, node, upid, "start")
cur = api.nodes(node).qemu(vmid).status.current.get()
assert cur["status"] == "running", cur
log = api.nodes(node).tasks(upid).log.get()
assert log and "n" in log[0] and "t" in log[0], log

# Config changes as Proxmox clients send them: property strings, digest, delete.
cfg = api.nodes(node).qemu(vmid).config.get()
api.nodes(node).qemu(vmid).config.put(
    memory=192, sockets=1, net0="virtio,firewall=1", virtio1="local:1,format=qcow2",
    description="set by proxmoxer", digest=cfg["digest"])
cfg2 = api.nodes(node).qemu(vmid).config.get()
assert cfg2["memory"] == "192" and cfg2["description"] == "set by proxmoxer", cfg2
assert cfg2["net0"].startswith("virtio=BC:24:11:") and "firewall=1" in cfg2["net0"], cfg2
assert cfg2["virtio1"].startswith("local:") and "size=1G" in cfg2["virtio1"], cfg2
content = api.nodes(node).storage("local").content.get(vmid=vmid)
assert [c["volid"] for c in content] == [cfg2["virtio1"].split(",")[0]], content
assert content[0]["size"] == 1024 ** 3 and content[0]["format"] == "qcow2", content
try:
    api.nodes(node).qemu(vmid).config.put(memory=256, digest=cfg["digest"])
    raise AssertionError("a stale digest was accepted")
except Exception as e:
    assert "digest" in str(e), e
try:
    api.nodes(node).qemu(vmid).config.put(net1="pcnet,bridge=vmbr0")
    raise AssertionError("a bad net was accepted")
except Exception as e:
    assert "net1" in str(e), e
upid = api.nodes(node).qemu(vmid).config.post(delete="description,net0")
wait(api, node, upid, "config via POST")
cfg3 = api.nodes(node).qemu(vmid).config.get()
assert "description" not in cfg3 and "net0" not in cfg3 and cfg3["virtio1"] == cfg2["virtio1"], cfg3

# Reboot, suspend, resume.
upid = api.nodes(node).qemu(vmid).status.reboot.post(timeout=1)
wait(api, node, upid, "reboot")
upid = api.nodes(node).qemu(vmid).status.suspend.post()
wait(api, node, upid, "suspend")
assert api.nodes(node).qemu(vmid).status.current.get()["qmpstatus"] == "paused"
upid = api.nodes(node).qemu(vmid).status.resume.post()
wait(api, node, upid, "resume")
assert api.nodes(node).qemu(vmid).status.current.get()["qmpstatus"] == "running"
# Reset: the same QEMU keeps running (QMP system_reset).
upid = api.nodes(node).qemu(vmid).status.reset.post()
wait(api, node, upid, "reset")
assert api.nodes(node).qemu(vmid).status.current.get()["status"] == "running"
log = api.nodes(node).tasks(upid).log.get()
assert any("reset" in line["t"] for line in log), log

upid = api.nodes(node).qemu(vmid).status.stop.post()
wait(api, node, upid, "stop")
assert api.nodes(node).qemu(vmid).status.current.get()["status"] == "stopped"

# HA, as ha-manager's API users (and Ansible's proxmox HA modules) drive it.
sid = f"vm:{vmid}"
api.cluster.ha.resources.post(sid=sid, state="stopped", max_restart=2, comment="px")
res = api.cluster.ha.resources(sid).get()
assert res["sid"] == sid and res["state"] == "stopped" and res["max_restart"] == 2 and res["type"] == "vm", res
assert res["digest"] and res["failback"] == 1, res
assert any(r["sid"] == sid for r in api.cluster.ha.resources.get(type="vm")), "listed"
api.cluster.ha.resources(sid).put(comment="changed", digest=res["digest"])
try:
    api.cluster.ha.resources(sid).put(comment="stale", digest=res["digest"])
    raise AssertionError("a stale digest was accepted")
except Exception as e:
    assert "digest" in str(e), e
api.cluster.ha.resources(sid).put(delete="comment,max_restart")
res = api.cluster.ha.resources(sid).get()
assert "comment" not in res and res["max_restart"] == 1, res
api.cluster.ha.rules.post(rule="px-na", type="node-affinity", resources=sid, nodes=f"{node}:2", strict=1)
rule = api.cluster.ha.rules("px-na").get()
assert rule["nodes"] == f"{node}:2" and rule["strict"] == 1 and rule["resources"] == sid, rule
try:
    api.cluster.ha.rules.post(rule="px-na2", type="node-affinity", resources=sid, nodes=node)
    raise AssertionError("a conflicting rule was accepted")
except Exception as e:
    assert "px-na" in str(e) and "resources" in str(e), e
assert [r["rule"] for r in api.cluster.ha.rules.get(type="node-affinity")] == ["px-na"]
cur = api.cluster.ha.status.current.get()
svc = [e for e in cur if e["type"] == "service"]
assert svc and svc[0]["sid"] == sid and svc[0]["request_state"] == "stopped", cur
assert any(e["type"] == "quorum" and e["quorate"] == 1 for e in cur), cur
ms = api.cluster.ha.status.manager_status.get()
assert ms["manager_status"]["master_node"] == node and sid in ms["manager_status"]["service_status"], ms
api.cluster.ha.rules("px-na").delete()
api.cluster.ha.resources(sid).delete()
assert not api.cluster.ha.resources.get(), "HA resource removed"

upid = api.nodes(node).qemu(vmid).delete()
wait(api, node, upid, "delete")
assert not any(g["vmid"] == vmid for g in api.nodes(node).qemu.get()), "deleted VM gone"

# Cluster and node views.
cs = api.cluster.status.get()
assert cs[0]["type"] == "cluster" and cs[0]["quorate"] == 1, cs
assert any(e["type"] == "node" and e["name"] == node and e["online"] == 1 for e in cs), cs
st = api.nodes(node).status.get()
assert st["status"] == "online" and st["memory"]["total"] > 0 and len(st["loadavg"]) == 3, st
assert st["cpuinfo"]["cpus"] >= 1 and st["rootfs"]["total"] > 0, st
stor = api.nodes(node).storage.get()
assert stor and stor[0]["total"] > 0 and "images" in stor[0]["content"].split(","), stor
assert stor[0]["active"] == 1 and stor[0]["enabled"] == 1 and stor[0]["type"] == "dir", stor
# Storage configuration as Proxmox's storage.cfg: add, read, change, list, remove.
import tempfile
import proxmoxer.core
extra = tempfile.mkdtemp(prefix="hx-dir-")
made = api.storage.post(storage="extra", type="dir", path=extra, content="iso,vztmpl", nodes=node)
assert made == {"storage": "extra", "type": "dir"}, made
conf = api.storage("extra").get()
assert conf["path"] == extra and conf["content"] == "vztmpl,iso" and conf["nodes"] == node, conf
assert api.storage("extra").put(content="iso", disable=1)["type"] == "dir"
assert api.storage("extra").get()["disable"] == 1
assert [s["storage"] for s in api.storage.get(type="dir")] == ["extra", "local"]
assert [s["storage"] for s in api.nodes(node).storage.get(enabled=1)] == ["local"]
assert [s["storage"] for s in api.nodes(node).storage.get(content="iso")] == ["extra", "local"]
try:
    api.storage.post(storage="bad", type="dir")
    raise SystemExit("a dir storage without path was accepted")
except proxmoxer.core.ResourceException as e:
    assert e.status_code == 400 and "path" in str(e.errors), e
api.storage("extra").delete()
assert [s["storage"] for s in api.storage.get()] == ["local"]

# Upload (multipart, streamed, checksummed) and download-url into the local storage.
import hashlib, http.server, os, threading
iso = os.path.join(tempfile.mkdtemp(prefix="hx-up-"), "tiny.iso")
with open(iso, "wb") as f:
    f.write(os.urandom(3 * 1024 * 1024 + 17))
digest = hashlib.sha256(open(iso, "rb").read()).hexdigest()
with open(iso, "rb") as f:
    upid = api.nodes(node).storage("local").upload.post(
        content="iso", checksum=digest, **{"checksum-algorithm": "sha256"}, filename=f)
wait(api, node, upid, "upload")
isos = api.nodes(node).storage("local").content.get(content="iso")
assert [(v["volid"], v["size"]) for v in isos] == [("local:iso/tiny.iso", 3 * 1024 * 1024 + 17)], isos
try:
    with open(iso, "rb") as f:
        api.nodes(node).storage("local").upload.post(content="iso", filename=f)
    raise SystemExit("an upload over an existing file was accepted")
except proxmoxer.core.ResourceException as e:
    assert e.status_code == 409, e
bad = os.path.join(os.path.dirname(iso), "bad.iso")
os.link(iso, bad)
try:
    with open(bad, "rb") as f:
        api.nodes(node).storage("local").upload.post(
            content="iso", checksum="0" * 64, **{"checksum-algorithm": "sha256"}, filename=f)
    raise SystemExit("a wrong checksum was accepted")
except proxmoxer.core.ResourceException as e:
    assert e.status_code == 400 and "checksum" in str(e), e
assert [v["volid"] for v in api.nodes(node).storage("local").content.get(content="iso")] == ["local:iso/tiny.iso"]

served = os.path.dirname(iso)
class Quiet(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=served, **k)
    def log_message(self, *a):
        pass
httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
threading.Thread(target=httpd.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{httpd.server_address[1]}/tiny.iso"
md5 = hashlib.md5(open(iso, "rb").read()).hexdigest()
upid = api.nodes(node).storage("local").post("download-url", url=url, content="iso",
    filename="fetched.iso", checksum=md5, **{"checksum-algorithm": "md5"})
wait(api, node, upid, "download-url")
upid = api.nodes(node).storage("local").post("download-url", url=url, content="iso", filename="wrong.iso",
    checksum="0" * 32, **{"checksum-algorithm": "md5"})
st = None
for _ in range(200):
    st = api.nodes(node).tasks(upid).status.get()
    if st["status"] == "stopped":
        break
    time.sleep(0.1)
assert st["status"] == "stopped" and "checksum" in st["exitstatus"], st
isos = [v["volid"] for v in api.nodes(node).storage("local").content.get(content="iso")]
assert isos == ["local:iso/fetched.iso", "local:iso/tiny.iso"], isos
httpd.shutdown()

# Disks and snapshots: resize, snapshot tree, config, rollback, move_disk, unlink.
dvmid = int(api.cluster.nextid.get())
upid = api.nodes(node).qemu.create(vmid=dvmid, name="disks", memory=64, virtio0="local:1", scsi1="local:1,format=raw")
wait(api, node, upid, "create with a disk")
q = api.nodes(node).qemu(dvmid)
assert q.config.get()["scsi1"].endswith(".raw,format=raw,size=1G"), q.config.get()
# A raw image on a directory has no snapshots (as in Proxmox): it goes, volume and all.
try:
    q.snapshot.post(snapname="first")
    raise SystemExit("a snapshot of a raw directory image was accepted")
except proxmoxer.core.ResourceException as e:
    assert e.status_code == 400 and "qcow2" in str(e), e
q.unlink.put(idlist="scsi1", force=1)
assert "scsi1" not in q.config.get() and "unused0" not in q.config.get(), q.config.get()
wait(api, node, q.resize.put(disk="virtio0", size="+1G"), "resize")
assert q.config.get()["virtio0"].endswith("size=2G"), q.config.get()
try:
    q.resize.put(disk="virtio0", size="1G")
    raise SystemExit("a shrink was accepted")
except proxmoxer.core.ResourceException as e:
    assert e.status_code == 400 and "size" in str(e.errors), e
wait(api, node, q.snapshot.post(snapname="first", description="before"), "snapshot")
snaps = q.snapshot.get()
assert [x["name"] for x in snaps] == ["first", "current"] and snaps[1]["parent"] == "first", snaps
assert q.snapshot("first").config.get()["description"] == "before"
q.snapshot("first").config.put(description="changed")
assert q.snapshot("first").config.get()["description"] == "changed"
assert {x["cmd"] for x in q.snapshot("first").get()} == {"rollback", "config"}
wait(api, node, q.snapshot("first").rollback.post(), "rollback")
wait(api, node, q.snapshot("first").delete(), "delete snapshot")
assert [x["name"] for x in q.snapshot.get()] == ["current"]
mdir = tempfile.mkdtemp(prefix="hx-mv-")
api.storage.post(storage="mv", type="dir", path=mdir, content="images")
wait(api, node, q.move_disk.post(disk="virtio0", storage="mv"), "move_disk")
conf = q.config.get()
assert conf["virtio0"].startswith(f"mv:{dvmid}/") and conf["unused0"].startswith(f"local:{dvmid}/"), conf
q.unlink.put(idlist="unused0", force=1)
assert "unused0" not in q.config.get()
wait(api, node, q.delete(), "delete the disk guest")
api.storage("mv").delete()

# import-from: an uploaded image becomes a new guest's disk, as large as the image.
import subprocess
img = os.path.join(tempfile.mkdtemp(prefix="hx-imp-"), "cloud.qcow2")
subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, "3G"], check=True)
with open(img, "rb") as f:
    wait(api, node, api.nodes(node).storage("local").upload.post(content="import", filename=f), "upload an image")
ivmid = int(api.cluster.nextid.get())
upid = api.nodes(node).qemu.create(vmid=ivmid, name="imported", memory=64, scsi0="local:0,import-from=local:import/cloud.qcow2")
wait(api, node, upid, "create with import-from")
assert api.nodes(node).qemu(ivmid).config.get()["scsi0"].endswith("size=3G"), api.nodes(node).qemu(ivmid).config.get()
wait(api, node, api.nodes(node).qemu(ivmid).delete(), "delete the imported guest")
res = api.cluster.resources.get(type="storage")
assert res and res[0]["id"] == f"storage/{node}/{res[0]['storage']}" and res[0]["maxdisk"] > 0, res
res = api.cluster.resources.get(type="node")
assert [r["node"] for r in res] == [node], res
assert all(r["type"] == "qemu" for r in api.cluster.resources.get(type="vm"))
assert any(s["storage"] == "local" for s in api.nodes(node).storage.get())
tasks = api.nodes(node).tasks.get()
# Finished tasks list their exit status as `status`, as Proxmox does.
assert any(t["type"] == "qmstart" and t["status"] == "OK" for t in tasks), tasks

# Access control through the Proxmox paths.
roles = {r["roleid"] for r in api.access.roles.get()}
assert {"Administrator", "PVEVMUser", "PVEAuditor", "NoAccess"} <= roles, roles
api.access.users.post(userid="frank@pve", password="frank's password", comment="via proxmoxer")
assert any(u["userid"] == "frank@pve" for u in api.access.users.get())
api.access.acl.put(path="/vms", roles="PVEAuditor", users="frank@pve")
assert any(e["ugid"] == "frank@pve" and e["roleid"] == "PVEAuditor" for e in api.access.acl.get())
tok = api.access.users("frank@pve").token("ro").post(privsep=0)
assert tok["full-tokenid"] == "frank@pve!ro" and tok["value"], tok
fapi = ProxmoxAPI(host, port=int(port), user="frank@pve", token_name="ro", token_value=tok["value"], verify_ssl=False)
perms = fapi.access.permissions.get(path="/vms/100")
assert perms["/vms/100"].get("VM.Audit") == 1 and "VM.Allocate" not in perms["/vms/100"], perms
try:
    fapi.nodes(node).qemu.create(vmid=999, name="nope", memory=128)
    raise AssertionError("an auditor created a VM")
except Exception as e:
    assert "403" in str(e), e

# Users, groups, custom roles and tokens through the Proxmox paths.
api.access.groups.post(groupid="ops", comment="operators")
api.access.users("frank@pve").put(groups="ops", email="frank@example.org", comment="edited")
u = api.access.users("frank@pve").get()
assert u["groups"] == ["ops"] and u["email"] == "frank@example.org" and "ro" in u["tokens"], u
assert any(g["groupid"] == "ops" for g in api.access.groups.get())
api.access.roles.post(roleid="VMWatcher", privs="VM.Audit,VM.Console")
assert api.access.roles("VMWatcher").get() == {"VM.Audit": 1, "VM.Console": 1}
api.access.roles("VMWatcher").put(privs="VM.PowerMgmt", append=1)
assert "VM.PowerMgmt" in api.access.roles("VMWatcher").get()
api.access.users("frank@pve").put(enable=0)
try:
    fapi.nodes.get()
    raise AssertionError("a disabled user's token still works")
except Exception as e:
    assert "401" in str(e), e
api.access.users("frank@pve").put(enable=1)
assert fapi.nodes.get()
assert api.access.users("frank@pve").token("ro").get()["privsep"] == 0
api.access.users("frank@pve").token("ro").delete()
api.access.roles("VMWatcher").delete()
api.access.users("frank@pve").delete()
assert not any(u["userid"] == "frank@pve" for u in api.access.users.get())

# Resource pools.
api.pools.post(poolid="pxpool", comment="from proxmoxer")
pvmid = int(api.cluster.nextid.get())
upid = api.nodes(node).qemu.create(vmid=pvmid, name="pooled", memory=64, pool="pxpool")
wait(api, node, upid, "create in a pool")
members = api.pools.get(poolid="pxpool")[0]["members"]
assert [m["id"] for m in members] == [f"qemu/{pvmid}"], members
assert api.pools("pxpool").get()["members"][0]["vmid"] == pvmid
api.pools("pxpool").put(vms=str(pvmid), delete=1)
assert api.pools("pxpool").get()["members"] == []
upid = api.nodes(node).qemu(pvmid).delete()
wait(api, node, upid, "delete the pooled VM")
api.pools("pxpool").delete()
assert not any(p["poolid"] == "pxpool" for p in api.pools.get())

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
