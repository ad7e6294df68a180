#!/usr/bin/env python3
"""An HTTPS upload client that writes 1 MiB at a time (curl writes 64 KiB, and on two cores
that costs it a third of its throughput), for `cargo bench --bench storage`.
Usage: upload-client.py PORT PATH_AND_QUERY FILE [TOKEN]; prints the status line, exits 0 on 200."""
import os
import socket
import ssl
import sys

port, target, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
token = sys.argv[4] if len(sys.argv) > 4 else ""
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # a loopback benchmark against the daemon's own certificate
conn = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))
size = os.path.getsize(path)
head = (
    f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
    f"Authorization: Bearer {token}\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
)
conn.sendall(head.encode())
with open(path, "rb") as f:
    while piece := f.read(1 << 20):
        conn.sendall(piece)
answer = b""
while b"\r\n" not in answer:
    got = conn.recv(65536)
    if not got:
        break
    answer += got
status = answer.split(b"\r\n")[0].decode()
print(status)
sys.exit(0 if " 200 " in status + " " else 1)
