#!/usr/bin/env python3
"""Start latency: Horcrux vs bare QEMU, same command line, same run.

Horcrux: time from `POST /api/v1/vms/{id}/start` until its task ends, which happens when
QMP reports the guest `running`. Bare: time from launching the same QEMU command line
(taken from /proc/PID/cmdline of the guest Horcrux started, with the descriptors Horcrux
hands QEMU replaced by the paths they stand for, as one would type it) until its QMP
`query-status` says `running`. Prints per-run figures, medians and the ratio.

usage: bench/vm-start.py HORCRUX_BINARY TINY_GUEST_DIR [RUNS]
"""
import json, os, shutil, signal, socket, ssl, statistics, subprocess, sys, tempfile, time, urllib.request

binary, guest = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
tmp = tempfile.mkdtemp(prefix="horcrux-bench-")
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); port = sock.getsockname()[1]; sock.close()
log = open(os.path.join(tmp, "daemon.log"), "w")
daemon = subprocess.Popen([binary, "serve", "--data-dir", tmp, "--listen", f"127.0.0.1:{port}", "--node-name", "bench"],
                          stdout=log, stderr=log)
ctx = ssl.create_default_context(cafile=None)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
base = f"https://127.0.0.1:{port}/api/v1"


def call(method, path, body=None):
    token = open(os.path.join(tmp, "admin.token")).read().strip()
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ctx, timeout=120) as r:
        return json.load(r)


def wait_task(upid):
    while True:
        t = call("GET", f"/tasks/{upid}")
        if t["status"] == "stopped":
            assert t["exitstatus"] == "OK", t
            return
        time.sleep(0.005)


def qmp_running(path):
    s = socket.socket(socket.AF_UNIX)
    while True:
        try:
            s.connect(path)
            break
        except OSError:
            time.sleep(0.001)
    f = s.makefile("rw")
    f.readline()
    f.write('{"execute":"qmp_capabilities"}\n'); f.flush(); f.readline()
    while True:
        f.write('{"execute":"query-status"}\n'); f.flush()
        while True:
            msg = json.loads(f.readline())
            if "return" in msg:
                break
        if msg["return"].get("status") == "running":
            return s, f
        time.sleep(0.001)


try:
    for _ in range(600):
        try:
            if os.path.exists(os.path.join(tmp, "admin.token")):
                call("GET", "/vms")
                break
        except Exception:
            pass
        time.sleep(0.1)
    boot = {"kernel": f"{guest}/vmlinuz", "initrd": f"{guest}/initrd.gz", "cmdline": "console=ttyS0 stayup"}
    call("POST", "/vms", {"vmid": 100, "name": "bench", "memory_mib": 256, "cores": 1,
                          "disks": [{"storage": "local", "size_mib": 64}], "boot": boot})
    ours, argv = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        upid = call("POST", "/vms/100/start", {})["upid"]
        wait_task(upid)
        ours.append(time.perf_counter() - t0)
        if argv is None:
            pid = open(os.path.join(tmp, "run/qemu/100.pid")).read().strip()
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[:-1]
        wait_task(call("POST", "/vms/100/stop", {})["upid"])
    qmp = os.path.join(tmp, "bare.qmp")
    disk = os.path.join(call("GET", "/storage")[0]["path"], "images/100/vm-100-disk-0.qcow2")
    bare_argv, skip = [], False
    for i, a in enumerate(argv):
        a = a.decode()
        if skip:
            skip = False
            continue
        if a == "-add-fd":
            skip = True
            continue
        if a.startswith("socket,id=qmp,fd="):
            bare_argv[-1] = "-qmp"
            a = f"unix:{qmp},server=on,wait=off"
        elif a == "chardev=qmp,mode=control":
            bare_argv.pop()
            continue
        elif a.startswith("file=/dev/fdset/1,"):
            a = a.replace("/dev/fdset/1", disk)
        elif a.startswith("file:/proc/self/fd/"):
            a = "file:" + os.path.join(tmp, "bare.serial.log")
        elif bare_argv and bare_argv[-1] == "-kernel":
            a = f"{guest}/vmlinuz"
        elif bare_argv and bare_argv[-1] == "-initrd":
            a = f"{guest}/initrd.gz"
        bare_argv.append(a)
    bare = []
    for _ in range(runs):
        if os.path.exists(qmp):
            os.unlink(qmp)
        t0 = time.perf_counter()
        q = subprocess.Popen(bare_argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        s, f = qmp_running(qmp)
        bare.append(time.perf_counter() - t0)
        f.write('{"execute":"quit"}\n'); f.flush()
        s.close()
        q.wait()
    print("argv:", " ".join(a.decode() for a in argv))
    print("bare argv:", " ".join(bare_argv))
    print("run  horcrux_ms  bare_qemu_ms")
    for i, (a, b) in enumerate(zip(ours, bare)):
        print(f"{i:>3}  {a*1000:>10.1f}  {b*1000:>12.1f}")
    mo, mb = statistics.median(ours), statistics.median(bare)
    print(f"median start->QMP running: horcrux {mo*1000:.1f} ms, bare QEMU {mb*1000:.1f} ms, ratio {mo/mb:.2f}x")
finally:
    daemon.send_signal(signal.SIGTERM)
    daemon.wait()
    subprocess.run(["pkill", "-f", os.path.join(tmp, "run/qemu")], check=False)
    shutil.rmtree(tmp, ignore_errors=True)
