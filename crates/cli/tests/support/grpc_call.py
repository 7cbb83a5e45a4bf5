#!/usr/bin/env python3
"""One gRPC unary call with Python's grpcio, without generated code: the request is
given as hex bytes, the answer printed as JSON {"code", "details", "response_hex"}.

    grpc_call.py --target HOST:PORT --method /pkg.Service/Method --request-hex HEX \
        [--authority NAME] [--metadata k=v ...]
"""

import argparse
import json

import grpc

parser = argparse.ArgumentParser()
parser.add_argument("--target", required=True)
parser.add_argument("--method", required=True)
parser.add_argument("--request-hex", default="")
parser.add_argument("--authority")
parser.add_argument("--metadata", action="append", default=[])
args = parser.parse_args()

options = [("grpc.default_authority", args.authority)] if args.authority else []
with grpc.insecure_channel(args.target, options=options) as channel:
    call = channel.unary_unary(args.method, request_serializer=None, response_deserializer=None)
    metadata = [tuple(m.split("=", 1)) for m in args.metadata]
    try:
        response = call(bytes.fromhex(args.request_hex), metadata=metadata, timeout=10)
        print(json.dumps({"code": "OK", "details": "", "response_hex": response.hex()}))
    except grpc.RpcError as e:
        print(json.dumps({"code": e.code().name, "details": e.details() or "", "response_hex": ""}))
