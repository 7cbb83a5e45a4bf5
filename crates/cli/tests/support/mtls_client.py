#!/usr/bin/env python3
"""Speaks to a sidecar's inbound port as another sidecar would: TLS with ALPN `istio`
and a client certificate, then one HTTP/1.1 GET. Prints the status code and the body,
or `ERROR <reason>` when the handshake or the request fails."""

import argparse
import socket
import ssl
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--connect", required=True, help="ip:port")
parser.add_argument("--cert", help="client certificate chain (PEM)")
parser.add_argument("--key", help="client private key (PEM)")
parser.add_argument("--host", default="server")
parser.add_argument("--path", default="/")
parser.add_argument("--max-tls", choices=["1.2", "1.3"], help="the highest TLS version to offer")
args = parser.parse_args()

ip, port = args.connect.rsplit(":", 1)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["istio-peer-exchange", "istio"])
if args.cert:
    ctx.load_cert_chain(args.cert, args.key)
if args.max_tls == "1.2":
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
try:
    with socket.create_connection((ip, int(port)), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="outbound_.9080_._.server.default.svc.cluster.local") as tls:
            request = f"GET {args.path} HTTP/1.1\r\nHost: {args.host}\r\nConnection: close\r\n\r\n"
            tls.sendall(request.encode())
            data = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
except (OSError, ssl.SSLError) as e:
    print(f"ERROR {e}")
    sys.exit(0)
if not data:
    print("ERROR connection closed without a response")
    sys.exit(0)
head, _, body = data.partition(b"\r\n\r\n")
status = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
print(status)
print(body.decode(errors="replace"))
