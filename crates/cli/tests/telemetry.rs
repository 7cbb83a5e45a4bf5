//! Access logs through the Telemetry API and meshConfig's providers, with real Envoy and
//! weft alike: a JSON log filtered to failures (`response.code >= 400`) and a text log
//! of every request in Istio's default format, each in its own file.

mod common;

use common::mesh::{Dataplane, Mesh};

fn mesh_yaml(b: u8) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo}}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: echo}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: echo-1}}
spec: {{address: 127.{b}.1.1, labels: {{app: echo}}}}
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
"#
    )
}

const TELEMETRY: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging:
  - providers: [{name: failures}]
    filter: {expression: "response.code >= 400"}
  - providers: [{name: everything}]
"#;

fn access_logs_follow_the_telemetry_api(kind: Dataplane, b: u8) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let failures = dir.path().join("failures.log");
    let everything = dir.path().join("everything.log");
    let mesh_config = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh_config,
        format!(
            r#"extensionProviders:
- name: failures
  envoyFileAccessLog:
    path: {}
    logFormat:
      labels: {{code: "%RESPONSE_CODE%", path: "%REQ(:PATH)%", flags: "%RESPONSE_FLAGS%", authority: "%REQ(:AUTHORITY)%", upstream: "%UPSTREAM_HOST%"}}
- name: everything
  envoyFileAccessLog: {{path: {}}}
"#,
            failures.display(),
            everything.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = mesh_config.to_string_lossy().into_owned();
    let mut mesh = Mesh::start_with(
        b,
        &[("mesh.yaml", &mesh_yaml(b)), ("telemetry.yaml", TELEMETRY)],
        &["--mesh-config", &config],
    );
    mesh.backend("echo-1", &format!("127.{b}.1.1"), 9080, 0);
    let node = format!("sidecar~127.{b}.2.1~client.default~default.svc.cluster.local");
    mesh.proxy(kind, "client", &node, &[("app", "client")], &format!("127.{b}.2.1"), true);
    let url = |path: &str| format!("http://127.{b}.2.1:9080{path}");
    mesh.wait_until("the egress listener", || mesh.curl(&["-H", "Host: echo", &url("/ready")]).status == 200);

    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    let before = read(&everything).lines().count();
    assert_eq!(mesh.curl(&["-H", "Host: echo", &url("/ok")]).status, 200);
    assert_eq!(mesh.curl(&["-H", "Host: echo", &url("/status/404")]).status, 404);
    // A chunked upload: the bytes received are counted as they stream, not taken from a
    // Content-Length.
    let upload = "x".repeat(1000);
    let chunked = ["-H", "Host: echo", "-H", "Transfer-Encoding: chunked", "--data-binary", &upload];
    assert_eq!(mesh.curl(&[&chunked[..], &[url("/upload").as_str()]].concat()).status, 200);
    // Lines are written when each response ends: wait for all three.
    mesh.wait_until("the requests in the text log", || read(&everything).lines().count() >= before + 3);

    // Only the failure is in the filtered JSON log, with numbers as numbers.
    let lines: Vec<serde_json::Value> =
        read(&failures).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let entry = &lines[0];
    assert_eq!(entry["code"], 404, "{entry}");
    assert_eq!(entry["path"], "/status/404", "{entry}");
    assert_eq!(entry["flags"], "-", "{entry}");
    assert_eq!(entry["authority"], "echo", "{entry}");
    assert_eq!(entry["upstream"], format!("127.{b}.1.1:9080"), "{entry}");

    // The text log has every request, in Istio's default format.
    let text = read(&everything);
    let ok = text.lines().find(|l| l.contains("\"GET /ok HTTP/1.1\"")).unwrap_or_else(|| panic!("{text}"));
    assert!(ok.starts_with('['), "{ok}");
    assert!(ok.contains(" 200 - via_upstream "), "{ok}");
    assert!(
        ok.contains(&format!("\"echo\" \"127.{b}.1.1:9080\" outbound|9080||echo.default.svc.cluster.local")),
        "{ok}"
    );
    assert!(text.lines().any(|l| l.contains("\"GET /status/404 HTTP/1.1\" 404 ")), "{text}");
    let post = text.lines().find(|l| l.contains("\"POST /upload HTTP/1.1\"")).unwrap_or_else(|| panic!("{text}"));
    assert!(post.contains(" 200 - via_upstream - \"-\" 1000 "), "{post}");
    mesh.wait_synced(1);
}

#[test]
fn envoy_access_logs_follow_the_telemetry_api() {
    access_logs_follow_the_telemetry_api(Dataplane::Envoy, 49);
}

#[test]
fn weft_access_logs_follow_the_telemetry_api() {
    access_logs_follow_the_telemetry_api(Dataplane::Weft, 150);
}

/// Telemetry metric overrides, as the weft proxy carries them out (Envoy has no Istio
/// stats filter): on the client side, `istio_requests_total` loses `response_code` (so
/// a 200 and a 404 count in one series) and gains `request_host` and a header's value;
/// `istio_request_bytes` is dropped; the other metrics keep Istio's standard labels.
/// TCP metrics follow too: `istio_tcp_sent_bytes_total` is dropped, and every client
/// metric gains the destination port.
#[test]
fn weft_metrics_follow_telemetry_overrides() {
    metrics_follow_telemetry_overrides(Dataplane::Weft, 136);
}

/// Envoy, which has no Istio stats filter, takes the same configuration (the optional
/// filter, the TCP chain's metadata) and carries the traffic.
#[test]
fn envoy_accepts_telemetry_overrides() {
    metrics_follow_telemetry_overrides(Dataplane::Envoy, 36);
}

fn metrics_follow_telemetry_overrides(kind: Dataplane, b: u8) {
    let overrides = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT, mode: CLIENT}
      tagOverrides:
        response_code: {operation: REMOVE}
        request_host: {value: request.host}
        tenant: {value: "request.headers['x-tenant']"}
    - match: {metric: REQUEST_SIZE}
      disabled: true
    - match: {metric: TCP_SENT_BYTES}
      disabled: true
    - match: {mode: CLIENT}
      tagOverrides:
        destination_port: {value: string(destination.port)}
"#;
    let tcp = r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo-tcp}
spec:
  hosts: [echo-tcp.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9100, name: tcp, protocol: TCP, targetPort: 9080}]
  workloadSelector: {labels: {app: echo}}
"#;
    let egress = format!("    bind: 127.{b}.2.1\n    hosts: [\"./*\"]\n");
    let yaml = mesh_yaml(b)
        .replace(&egress, &format!("{egress}  - port: {{number: 9100, protocol: TCP, name: tcp}}\n{egress}"))
        + tcp;
    let mut mesh = Mesh::start(b, &[("mesh.yaml", &yaml), ("telemetry.yaml", overrides)]);
    mesh.backend("echo-1", &format!("127.{b}.1.1"), 9080, 0);
    let node = format!("sidecar~127.{b}.2.1~client.default~default.svc.cluster.local");
    let admin = mesh.proxy(kind, "client", &node, &[("app", "client")], &format!("127.{b}.2.1"), true);
    let url = |path: &str| format!("http://127.{b}.2.1:9080{path}");
    mesh.wait_until("the egress listener", || mesh.curl(&["-H", "Host: echo", &url("/ready")]).status == 200);
    if kind == Dataplane::Envoy {
        mesh.wait_synced(1);
        let tcp = mesh.curl(&["-H", "Host: echo", &format!("http://127.{b}.2.1:9100/over-tcp")]);
        assert_eq!(tcp.status, 200, "{}", tcp.body);
        return;
    }
    let metrics = || mesh.get(&format!("http://{admin}/stats/prometheus")).body;
    let before = metrics();
    for path in ["/ok", "/status/404"] {
        mesh.curl(&["-H", "Host: echo", "-H", "x-tenant: blue", &url(path)]);
    }
    mesh.wait_until("the requests counted", || metrics() != before);
    let text = metrics();
    let count: Vec<&str> =
        text.lines().filter(|l| l.starts_with("istio_requests_total{") && l.contains("tenant=\"blue\"")).collect();
    // One series for both requests: the code is gone, the host and tenant are there.
    assert_eq!(count.len(), 1, "{text}");
    assert!(count[0].ends_with(" 2"), "{}", count[0]);
    assert!(!count[0].contains("response_code="), "{}", count[0]);
    assert!(count[0].contains("request_host=\"echo\""), "{}", count[0]);
    assert!(count[0].contains("destination_service=\"echo.default.svc.cluster.local\""), "{}", count[0]);
    assert!(!text.contains("istio_request_bytes_bucket"), "{text}");
    // The duration keeps Istio's labels, each code its own series.
    let durations = text
        .lines()
        .filter(|l| l.starts_with("istio_request_duration_milliseconds_count{") && l.contains("reporter=\"source\""))
        .count();
    assert!(durations >= 2, "{text}");
    assert!(text.lines().any(|l| l.starts_with("istio_request_duration_milliseconds_count{") && l.contains("response_code=\"404\"")), "{text}");
    assert!(count[0].contains("destination_port=\"9080\""), "{}", count[0]);

    // A TCP connection through the egress listener on 9100.
    let before = metrics();
    assert_eq!(mesh.curl(&["-H", "Host: echo", &format!("http://127.{b}.2.1:9100/over-tcp")]).status, 200);
    mesh.wait_until("the TCP connection counted", || {
        metrics().contains("istio_tcp_connections_closed_total{") && metrics() != before
    });
    let text = metrics();
    let opened =
        text.lines().find(|l| l.starts_with("istio_tcp_connections_opened_total{")).unwrap_or_else(|| panic!("{text}"));
    assert!(opened.contains("destination_port=\"9100\""), "{opened}");
    assert!(opened.contains("destination_service=\"echo-tcp.default.svc.cluster.local\""), "{opened}");
    assert!(text.contains("istio_tcp_received_bytes_total{"), "{text}");
    assert!(!text.contains("istio_tcp_sent_bytes_total{"), "{text}");
}
