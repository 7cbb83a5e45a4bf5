"""An OpenTelemetry collector's OTLP/gRPC trace receiver, for the tracing tests.

Serves opentelemetry.proto.collector.trace.v1.TraceService/Export and appends each span
it receives to --out as one JSON line: ids in hex, the resource's service.name, kind,
status and attributes as strings.
"""

import argparse
import json
import signal
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

parser = argparse.ArgumentParser()
parser.add_argument("--address", required=True)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--out", required=True)
parser.add_argument("--discard", action="store_true",
                    help="only count the spans (benchmarks): the count goes to --out at exit")
args = parser.parse_args()

lock = threading.Lock()
received = 0


def value(v):
    kind = v.WhichOneof("value")
    return str(getattr(v, kind)) if kind else ""


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        global received
        if args.discard:
            with lock:
                received += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            return trace_service_pb2.ExportTraceServiceResponse()
        lines = []
        for rs in request.resource_spans:
            resource = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for span in ss.spans:
                    lines.append(json.dumps({
                        "service": resource.get("service.name", ""),
                        "scope": ss.scope.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "trace_state": span.trace_state,
                        "name": span.name,
                        "kind": span.kind,
                        "status": span.status.code,
                        "start": span.start_time_unix_nano,
                        "end": span.end_time_unix_nano,
                        "attributes": {a.key: value(a.value) for a in span.attributes},
                    }))
        with lock, open(args.out, "a") as f:
            for line in lines:
                f.write(line + "\n")
        return trace_service_pb2.ExportTraceServiceResponse()


server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
server.add_insecure_port(f"{args.address}:{args.port}")
server.start()
print(f"OTLP receiver on {args.address}:{args.port}", file=sys.stderr, flush=True)


def stop(*_):
    if args.discard:
        with open(args.out, "w") as f:
            f.write(f"{received}\n")
    server.stop(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
server.wait_for_termination()
