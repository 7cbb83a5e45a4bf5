#!/usr/bin/env python3
"""gRPC test peers without generated code (raw-bytes methods).

server: answers /weft.test.Echo/Call with its own name; with --fail-every N all but every
        Nth call fail with UNAVAILABLE (a flaky backend).
client: calls a target (e.g. xds:///reviews.default.svc.cluster.local:9080, with
        GRPC_XDS_BOOTSTRAP set) N times and prints one JSON line per call:
        {"ok": bool, "name": ..., "code": ...}. With --metadata k=v it sends that header.
        With --interval S it keeps calling every S seconds until killed (live edits).
"""

import argparse
import json
import sys
import threading
import time
from concurrent import futures

import grpc

METHOD = "/weft.test.Echo/Call"


def serve(args):
    lock = threading.Lock()
    count = [0]

    def call(request, context):
        with lock:
            count[0] += 1
            n = count[0]
        if args.fail_every and n % args.fail_every != 0:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{args.name} is flaky")
        return args.name.encode()

    handler = grpc.method_handlers_generic_handler(
        "weft.test.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"{args.address}:{args.port}")
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


def client(args):
    metadata = [tuple(m.split("=", 1)) for m in args.metadata]
    options = [("grpc.default_authority", args.authority)] if args.authority else []
    with grpc.insecure_channel(args.target, options=options) as channel:
        call = channel.unary_unary(METHOD)
        i = 0
        while args.interval or i < args.count:
            i += 1
            try:
                reply = call(b"hi", metadata=metadata, timeout=args.timeout)
                print(json.dumps({"ok": True, "name": reply.decode()}), flush=True)
            except grpc.RpcError as e:
                print(json.dumps({"ok": False, "code": e.code().name, "detail": e.details()}), flush=True)
            if args.interval:
                time.sleep(args.interval)


parser = argparse.ArgumentParser()
sub = parser.add_subparsers(dest="mode", required=True)
s = sub.add_parser("server")
s.add_argument("--address", required=True)
s.add_argument("--port", type=int, required=True)
s.add_argument("--name", required=True)
s.add_argument("--fail-every", type=int, default=0)
c = sub.add_parser("client")
c.add_argument("--target", required=True)
c.add_argument("--count", type=int, default=1)
c.add_argument("--interval", type=float, default=0)
c.add_argument("--timeout", type=float, default=20)
c.add_argument("--metadata", action="append", default=[])
c.add_argument("--authority", help="the :authority to send (calls through a sidecar)")
args = parser.parse_args()
serve(args) if args.mode == "server" else client(args)
sys.exit(0)
