#!/usr/bin/env python3
"""The transport reference of `cargo bench --bench storage`: one HTTPS request received
by OpenSSL (Python's ssl) and discarded, or written to FILE and fsynced: what curl, TLS and
the loopback cost on this machine without Horcrux. Usage: tls-sink.py PORT CERT KEY [FILE]
(serves one request, answers 200, exits)."""
import os
import socket
import ssl
import sys

port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
out = open(sys.argv[4], "wb") if len(sys.argv) > 4 else None
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(1)
print("ready", flush=True)
conn, _ = srv.accept()
conn = ctx.wrap_socket(conn, server_side=True)
buf = b""
while b"\r\n\r\n" not in buf:
    buf += conn.recv(65536)
head, body = buf.split(b"\r\n\r\n", 1)
length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
got = len(body)
if out:
    out.write(body)
while got < length:
    piece = conn.recv(1 << 20)
    if not piece:
        sys.exit("cut off")
    got += len(piece)
    if out:
        out.write(piece)
if out:
    out.flush()
    os.fsync(out.fileno())
conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
conn.close()
