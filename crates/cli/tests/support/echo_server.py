#!/usr/bin/env python3
"""A small HTTP backend for tests: answers every request with JSON naming itself
(`--name`), echoing method, path, headers and the body's length. `/status/CODE`
answers CODE; `/delay/MS` answers after MS milliseconds; `/last` shows the previous
request; `--fail-every N` answers 503
to all but every Nth request (a flaky backend). A request with `Upgrade: websocket`
is switched (101) and every byte sent after it is echoed back."""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--address", required=True)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--name", required=True)
parser.add_argument("--fail-every", type=int, default=0)
parser.add_argument("--tls-cert", help="serve HTTPS with this certificate chain")
parser.add_argument("--tls-key", help="and this private key")
parser.add_argument("--tls-client-ca", help="require a client certificate from this CA")
args = parser.parse_args()

lock = threading.Lock()
count = 0
last = b"{}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def handle_any(self):
        global count, last
        if self.path == "/last":
            # What the previous request looked like (mirrored requests get no reply).
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(last)))
            self.end_headers()
            self.wfile.write(last)
            return
        with lock:
            count += 1
            n = count
        length = int(self.headers.get("content-length") or 0)
        received = self.rfile.read(length) if length else b""
        if self.headers.get("upgrade", "").lower() == "websocket":
            self.switch()
            return
        status = 200
        if self.path.startswith("/delay/"):
            time.sleep(int(self.path.split("/")[2]) / 1000)
        if self.path.startswith("/status/"):
            status = int(self.path.split("/")[2])
        elif args.fail_every and n % args.fail_every != 0:
            status = 503
        body = json.dumps({
            "name": args.name,
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "count": n,
            "body_length": len(received),
            "tls": bool(args.tls_cert),
            "client_cn": client_cn(self.connection),
            # Tells one upstream connection from another.
            "client_port": self.client_address[1],
        }).encode()
        with lock:
            last = body
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("x-backend", args.name)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def switch(self):
        self.send_response(101)
        self.send_header("upgrade", "websocket")
        self.send_header("connection", "upgrade")
        self.send_header("x-backend", args.name)
        self.end_headers()
        self.wfile.flush()
        while True:
            data = self.connection.recv(4096)
            if not data:
                break
            self.connection.sendall(data)
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = handle_any


def client_cn(connection):
    """The common name of the client's certificate, when it sent one."""
    peer = connection.getpeercert() if hasattr(connection, "getpeercert") else None
    for rdn in (peer or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


server = ThreadingHTTPServer((args.address, args.port), Handler)
if args.tls_cert:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    if args.tls_client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(args.tls_client_ca)
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
