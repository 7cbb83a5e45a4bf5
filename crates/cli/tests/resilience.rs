//! Resilience, protocols and bad input, through Envoy and through weft with the same
//! assertions: circuit breakers, outlier detection, connect failures and empty
//! clusters; WebSocket, h2c, large bodies and gRPC through a sidecar; malformed and
//! oversized requests refused while the proxy keeps serving.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::mesh::{Dataplane, Mesh};

/// A service per behaviour, and the client's sidecar in local mode.
fn services(b: u8) -> String {
    let service = |name: &str, port: u32, protocol: &str| {
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: p{port}, protocol: {protocol}}}]
  workloadSelector: {{labels: {{app: {name}}}}}
---"#
        )
    };
    let workload = |name: &str, app: &str, ip: &str| {
        format!(
            r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}}}
spec: {{address: 127.{b}.{ip}, labels: {{app: {app}}}}}
---"#
        )
    };
    let mut yaml = String::new();
    for (name, port, protocol) in [
        ("slow", 9080, "HTTP"),
        ("flaky", 9080, "HTTP"),
        ("empty", 9080, "HTTP"),
        ("echo", 9080, "HTTP"),
        ("shadow", 9080, "HTTP"),
    ] {
        yaml.push_str(&service(name, port, protocol));
    }
    yaml.push_str(&service("grpc-echo", 9090, "GRPC"));
    for (name, app, ip) in [
        ("slow-1", "slow", "1.1"),
        ("flaky-good", "flaky", "1.2"),
        ("flaky-bad", "flaky", "1.3"),
        ("echo-1", "echo", "1.4"),
        ("grpc-1", "grpc-echo", "1.5"),
        ("shadow-1", "shadow", "1.6"),
    ] {
        yaml.push_str(&workload(name, app, ip));
    }
    yaml.push_str(&format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: gone}}
spec:
  hosts: [gone.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.{b}.1.9}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: slow}}
spec:
  host: slow
  trafficPolicy:
    connectionPool: {{tcp: {{maxConnections: 1}}, http: {{http1MaxPendingRequests: 1}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: flaky}}
spec:
  host: flaky
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: flaky}}
spec:
  hosts: [flaky]
  http:
  - retries: {{attempts: 0}}
    route: [{{destination: {{host: flaky}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: grpc-echo}}
spec:
  hosts: [grpc-echo]
  http:
  - match: [{{headers: {{x-deny: {{exact: "yes"}}}}}}]
    fault: {{abort: {{grpcStatus: PERMISSION_DENIED, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: grpc-echo}}}}]
  - retries: {{attempts: 4, retryOn: unavailable}}
    route: [{{destination: {{host: grpc-echo}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: grpc-over-http}}
spec:
  hosts: [grpc-over-http.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9091, name: http-grpc, protocol: HTTP, targetPort: 9090}}]
  workloadSelector: {{labels: {{app: grpc-echo}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: grpc-over-http}}
spec:
  host: grpc-over-http
  trafficPolicy: {{connectionPool: {{http: {{h2UpgradePolicy: UPGRADE}}}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo}}
spec:
  host: echo
  trafficPolicy: {{connectionPool: {{http: {{maxRequestsPerConnection: 1}}}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo}}
spec:
  hosts: [echo]
  http:
  - match: [{{uri: {{prefix: /delay}}}}]
    timeout: 500ms
    route: [{{destination: {{host: echo}}}}]
  - match: [{{uri: {{prefix: /mirror}}}}]
    mirror: {{host: shadow}}
    mirrorPercentage: {{value: 100}}
    route: [{{destination: {{host: echo}}}}]
  - route: [{{destination: {{host: echo}}}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client}}
spec:
  workloadSelector: {{labels: {{app: client}}}}
  egress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    bind: 127.{b}.2.1
    hosts: ["./*"]
  - port: {{number: 9090, protocol: GRPC, name: grpc}}
    bind: 127.{b}.2.1
    hosts: ["./*"]
  - port: {{number: 9091, protocol: HTTP, name: http-grpc}}
    bind: 127.{b}.2.1
    hosts: ["./*"]
"#
    ));
    yaml
}

fn start(kind: Dataplane, b: u8) -> Mesh {
    let mut mesh = Mesh::start(b, &[("services.yaml", &services(b))]);
    mesh.backend("slow-1", &format!("127.{b}.1.1"), 9080, 0);
    mesh.backend("flaky-good", &format!("127.{b}.1.2"), 9080, 0);
    mesh.backend("flaky-bad", &format!("127.{b}.1.3"), 9080, 1_000_000);
    mesh.backend("echo-1", &format!("127.{b}.1.4"), 9080, 0);
    mesh.grpc_server("grpc-1", &format!("127.{b}.1.5"), 9090, 3);
    mesh.backend("shadow-1", &format!("127.{b}.1.6"), 9080, 0);
    let node = format!("sidecar~127.{b}.2.1~client.default~default.svc.cluster.local");
    mesh.proxy(kind, "client", &node, &[("app", "client")], &format!("127.{b}.2.1"), true);
    let url = format!("http://127.{b}.2.1:9080/");
    mesh.wait_until("the client's egress listener", || mesh.curl(&["-H", "Host: echo", &url]).status == 200);
    mesh
}

/// Envoy's text for failures before any response headers.
const RESET_BEFORE_HEADERS: &str = "upstream connect error or disconnect/reset before headers.";

fn circuit_breakers_outlier_detection_and_failed_upstreams(kind: Dataplane, b: u8) {
    let mesh = start(kind, b);
    let egress = format!("http://127.{b}.2.1:9080");

    // One connection and one pending request allowed: of six concurrent slow requests,
    // the ones beyond that are refused at once with 503 (overflow), the rest served.
    let replies: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> =
            (0..6).map(|_| s.spawn(|| mesh.curl(&["-H", "Host: slow", &format!("{egress}/delay/1500")]))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| panic!("curl thread"))).collect()
    });
    let served = replies.iter().filter(|r| r.status == 200).count();
    let overflowed = replies
        .iter()
        .filter(|r| r.status == 503 && r.body.starts_with(RESET_BEFORE_HEADERS) && r.body.contains("overflow"))
        .count();
    assert!(served >= 1 && overflowed >= 2 && served + overflowed == 6, "{replies:#?}");

    // Outlier detection: after two consecutive 5xx the failing host is ejected, and
    // every later request goes to the healthy one.
    let flaky: Vec<_> = (0..30).map(|_| mesh.curl(&["-H", "Host: flaky", &format!("{egress}/")])).collect();
    let failures = flaky.iter().filter(|r| r.status == 503).count();
    assert!(failures <= 3, "{failures} failures before ejection");
    assert!(flaky[10..].iter().all(|r| (r.status, r.backend()) == (200, "flaky-good")), "{:?}", &flaky[10..]);

    // Nothing listening: 503 with Envoy's reset text, after Istio's default retries.
    let gone = mesh.curl(&["-H", "Host: gone", &format!("{egress}/")]);
    assert_eq!(gone.status, 503, "{gone:?}");
    assert!(gone.body.starts_with(RESET_BEFORE_HEADERS), "{gone:?}");

    // No endpoints at all.
    let empty = mesh.curl(&["-H", "Host: empty", &format!("{egress}/")]);
    assert_eq!((empty.status, empty.body.as_str()), (503, "no healthy upstream"), "{empty:?}");

    // No route for an unknown host.
    assert_eq!(mesh.curl(&["-H", "Host: unknown.example.com", &format!("{egress}/")]).status, 404);
    mesh.wait_synced(1);
}

fn timeouts_and_mirrors(kind: Dataplane, b: u8) {
    let mesh = start(kind, b);
    let egress = format!("http://127.{b}.2.1:9080");

    // The route's 500 ms timeout cuts a 3 s answer short with Envoy's 504.
    let cut = mesh.curl(&["-H", "Host: echo", &format!("{egress}/delay/3000")]);
    assert_eq!((cut.status, cut.body.as_str()), (504, "upstream request timeout"), "{cut:?}");
    assert!(cut.seconds < 2.5, "the timeout did not fire: {}s", cut.seconds);

    // A mirrored request reaches the shadow with `-shadow` on its authority; the
    // client's answer comes from the primary.
    let shadow_last = || mesh.get(&format!("http://127.{b}.1.6:9080/last")).json();
    let primary = mesh.curl(&["-H", "Host: echo", &format!("{egress}/mirror/once")]);
    assert_eq!((primary.status, primary.backend()), (200, "echo-1"), "{primary:?}");
    mesh.wait_until("the mirrored copy", || shadow_last()["path"] == "/mirror/once");
    let copy = shadow_last();
    assert_eq!(copy["headers"]["host"], "echo-shadow", "{copy}");
    assert_eq!(copy["method"], "GET");
}

/// h2load's summary: (requests succeeded, 2xx responses).
fn h2load(args: &[&str]) -> (u64, u64, String) {
    let out = std::process::Command::new("h2load").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run h2load ({e}): scripts/test installs it (Debian package nghttp2-client)")
    });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let number_before = |line_start: &str, word: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| {
                let words: Vec<&str> = l.split([' ', ',']).filter(|w| !w.is_empty()).collect();
                words.iter().position(|w| *w == word).and_then(|i| words.get(i.checked_sub(1)?)?.parse().ok())
            })
            .unwrap_or(0)
    };
    (number_before("requests:", "succeeded"), number_before("status codes:", "2xx"), text)
}

fn load_and_idle_connections(kind: Dataplane, b: u8) {
    let mesh = start(kind, b);
    let target = format!("127.{b}.2.1:9080");
    // Multiplexed HTTP/2 (10 streams per connection) and HTTP/1.1 keep-alive load.
    for extra in [&["-m", "10"][..], &["--h1"][..]] {
        let mut args = vec!["-n", "600", "-c", "4", "--connect-to", &target];
        args.extend_from_slice(extra);
        args.push("http://echo:9080/load");
        let (succeeded, ok, text) = h2load(&args);
        assert_eq!((succeeded, ok), (600, 600), "{extra:?}: {text}");
    }
    // maxRequestsPerConnection 1 (echo's DestinationRule) opens a connection per
    // request; without it (slow) one connection carries them all.
    let ports = |host: &str| -> Vec<u64> {
        (0..3)
            .map(|_| {
                let r = mesh.curl(&["-H", &format!("Host: {host}"), &format!("http://{target}/port")]);
                r.json()["client_port"].as_u64().unwrap_or_else(|| panic!("{r:?}"))
            })
            .collect()
    };
    let fresh = ports("echo");
    assert!(fresh[0] != fresh[1] && fresh[1] != fresh[2], "a new connection per request: {fresh:?}");
    let pooled = ports("slow");
    assert!(pooled.iter().all(|p| *p == pooled[0]), "one reused connection: {pooled:?}");
    // Many idle connections cost little memory each.
    let proxy = "client";
    let before = mesh.rss_kib(proxy);
    let idle: Vec<std::net::TcpStream> =
        (0..2000).map(|_| TcpStream::connect(&target).unwrap_or_else(|e| panic!("{e}"))).collect();
    mesh.wait_until("the proxy to hold every connection", || {
        let stats = mesh.get(&format!("http://127.{b}.2.1:15000/stats?filter=outbound_9080.downstream_cx_active")).body;
        let count = stats.lines().filter_map(|l| l.split(": ").nth(1)?.parse::<u64>().ok()).sum::<u64>();
        kind == Dataplane::Envoy || count >= 2000
    });
    let grown = mesh.rss_kib(proxy).saturating_sub(before);
    eprintln!("{kind:?}: 2000 idle connections added {grown} KiB of RSS");
    assert!(grown < 2000 * 32, "{grown} KiB for 2000 idle connections");
    drop(idle);
    let ok = mesh.curl(&["-H", "Host: echo", &format!("http://{target}/after")]);
    assert_eq!(ok.status, 200);
}

/// Sends raw bytes, returns everything read until the peer closes or goes quiet.
fn raw(address: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).unwrap_or_else(|e| panic!("{address}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap_or_else(|e| panic!("{e}"));
    stream.write_all(request).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") && !request.starts_with(b"GET /ws") {
                    // One response head is enough for these checks.
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn websocket_h2c_bodies_and_grpc(kind: Dataplane, b: u8) {
    let mesh = start(kind, b);
    let address = format!("127.{b}.2.1:9080");

    // WebSocket: the upgrade is forwarded, then bytes flow both ways.
    let mut ws = TcpStream::connect(&address).unwrap_or_else(|e| panic!("{e}"));
    ws.set_read_timeout(Some(Duration::from_secs(10))).unwrap_or_else(|e| panic!("{e}"));
    ws.write_all(b"GET /ws HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && ws.read(&mut byte).is_ok_and(|n| n == 1) {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert_eq!(status_of(&head), 101, "{head}");
    ws.write_all(b"ping through the tunnel").unwrap_or_else(|e| panic!("{e}"));
    let mut echoed = [0u8; 23];
    ws.read_exact(&mut echoed).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&echoed, b"ping through the tunnel");

    // h2c with prior knowledge, answered over HTTP/2.
    let h2 = mesh.curl(&["--http2-prior-knowledge", "-H", "Host: echo", &format!("http://{address}/h2")]);
    assert_eq!((h2.status, h2.backend()), (200, "echo-1"), "{h2:?}");

    // A 200 KB body arrives whole.
    let body = mesh.config_dir.path().join("body.bin");
    std::fs::write(&body, "x".repeat(200_000)).unwrap_or_else(|e| panic!("{e}"));
    let body = format!("@{}", body.display());
    let posted = mesh.curl(&["-H", "Host: echo", "--data-binary", &body, &format!("http://{address}/upload")]);
    assert_eq!(posted.json()["body_length"], 200_000, "{posted:?}");

    // gRPC through the sidecar: retries on UNAVAILABLE make a flaky server succeed, and
    // an injected abort arrives as the configured gRPC status.
    let grpc_to = |port: u16, host: &str, metadata: &[&str]| {
        let mut cmd = std::process::Command::new(common::mesh::python());
        cmd.arg(common::mesh::grpc_script())
            .args(["client", "--target", &format!("127.{b}.2.1:{port}"), "--count", "6"])
            .args(["--authority", &format!("{host}.default.svc.cluster.local:{port}")]);
        for m in metadata {
            cmd.args(["--metadata", m]);
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .collect::<Vec<_>>()
    };
    let grpc = |metadata: &[&str]| grpc_to(9090, "grpc-echo", metadata);
    let calls = grpc(&[]);
    assert_eq!(calls.len(), 6);
    assert!(calls.iter().all(|c| c["ok"] == true && c["name"] == "grpc-1"), "{calls:?}");
    let denied = grpc(&["x-deny=yes"]);
    assert!(denied.iter().all(|c| c["code"] == "PERMISSION_DENIED"), "{denied:?}");
    // An HTTP port upgraded to HTTP/2 upstream by the DestinationRule carries gRPC.
    let upgraded = grpc_to(9091, "grpc-over-http", &[]);
    assert!(upgraded.iter().all(|c| c["ok"] == true && c["name"] == "grpc-1"), "{upgraded:?}");
    mesh.wait_synced(1);
}

fn bad_input_is_refused_and_serving_goes_on(kind: Dataplane, b: u8) {
    let mesh = start(kind, b);
    let address = format!("127.{b}.2.1:9080");

    // Request smuggling: a message with both framings can never be read two ways.
    let both = raw(
        &address,
        b"POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    match kind {
        Dataplane::Envoy => assert_eq!(status_of(&both), 400, "{both}"),
        // A deliberate difference: weft follows RFC 9112 §6.3 instead of refusing. The
        // chunked framing wins, Content-Length is dropped, and the connection is closed
        // after the response, so no second request can hide in the body either way.
        Dataplane::Weft => {
            assert_eq!(status_of(&both), 200, "{both}");
            assert!(both.to_ascii_lowercase().contains("connection: close"), "{both}");
        }
    }

    // Headers beyond the limits (60 KiB, 100 headers): 431.
    let big = format!("GET / HTTP/1.1\r\nHost: echo\r\nx-big: {}\r\n\r\n", "a".repeat(70 * 1024));
    assert_eq!(status_of(&raw(&address, big.as_bytes())), 431);
    let many: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: echo\r\n{many}\r\n");
    assert_eq!(status_of(&raw(&address, many.as_bytes())), 431);

    // Not HTTP at all.
    assert_eq!(status_of(&raw(&address, b"HELLO THERE\r\n\r\n")), 400);

    // And the proxy still serves.
    let ok = mesh.curl(&["-H", "Host: echo", &format!("http://{address}/after")]);
    assert_eq!((ok.status, ok.backend()), (200, "echo-1"));
}

#[test]
fn envoy_circuit_breakers_outlier_detection_and_failed_upstreams() {
    circuit_breakers_outlier_detection_and_failed_upstreams(Dataplane::Envoy, 46);
}

#[test]
fn weft_circuit_breakers_outlier_detection_and_failed_upstreams() {
    circuit_breakers_outlier_detection_and_failed_upstreams(Dataplane::Weft, 146);
}

#[test]
fn envoy_websocket_h2c_bodies_and_grpc() {
    websocket_h2c_bodies_and_grpc(Dataplane::Envoy, 47);
}

#[test]
fn weft_websocket_h2c_bodies_and_grpc() {
    websocket_h2c_bodies_and_grpc(Dataplane::Weft, 147);
}

#[test]
fn envoy_timeouts_and_mirrors() {
    timeouts_and_mirrors(Dataplane::Envoy, 40);
}

#[test]
fn weft_timeouts_and_mirrors() {
    timeouts_and_mirrors(Dataplane::Weft, 140);
}

#[test]
fn envoy_load_and_idle_connections() {
    load_and_idle_connections(Dataplane::Envoy, 38);
}

#[test]
fn weft_load_and_idle_connections() {
    load_and_idle_connections(Dataplane::Weft, 138);
}

#[test]
fn envoy_bad_input_is_refused_and_serving_goes_on() {
    bad_input_is_refused_and_serving_goes_on(Dataplane::Envoy, 48);
}

#[test]
fn weft_bad_input_is_refused_and_serving_goes_on() {
    bad_input_is_refused_and_serving_goes_on(Dataplane::Weft, 148);
}

/// weft drains on SIGTERM, as Istio's agent makes Envoy do: listeners close at once, a
/// request in flight finishes, then the process exits. (Envoy itself exits on SIGTERM
/// without draining, so this scenario has no Envoy twin.)
#[test]
fn weft_drains_in_flight_requests_on_sigterm() {
    let b = 149;
    let mut mesh = start(Dataplane::Weft, b);
    let egress = format!("http://127.{b}.2.1:9080");
    std::thread::scope(|s| {
        let slow = s.spawn(|| mesh.curl(&["-H", "Host: slow", &format!("{egress}/delay/2000")]));
        std::thread::sleep(Duration::from_millis(700));
        mesh.terminate("client");
        mesh.wait_until("the listener to close", || {
            mesh.curl(&["-H", "Host: echo", &format!("{egress}/")]).status == 0
        });
        let finished = slow.join().unwrap_or_else(|_| panic!("curl thread"));
        assert_eq!((finished.status, finished.backend()), (200, "slow-1"), "{finished:?}");
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = mesh.exit_status("client") {
            break status;
        }
        assert!(started.elapsed() < common::mesh::STARTUP, "the proxy did not exit after draining");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
}
