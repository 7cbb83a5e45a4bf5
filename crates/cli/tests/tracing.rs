//! Tracing as Istio configures it (a Telemetry selecting meshConfig's `opentelemetry`
//! provider), through a chain of three services — frontend → middle → backend, each a
//! `weft demo-app` behind its sidecar — with real Envoy and weft alike. The spans arrive
//! over OTLP/gRPC at a receiver built on OpenTelemetry's own service definition
//! (`support/otlp_receiver.py`), and must form one trace with the right links.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};

use common::mesh::{Dataplane, Mesh, python};
use serde_json::Value;

const APPS: [&str; 3] = ["frontend", "middle", "backend"];

/// The applications listen on 127.0.0.1, as Istio's `defaultEndpoint` requires: a port
/// of their own per test.
fn app_port(b: u8, n: usize) -> u16 {
    30_000 + u16::from(b) * 10 + n as u16
}

fn mesh_yaml(b: u8) -> String {
    let mut yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: otel-collector, namespace: istio-system}}
spec:
  hosts: [otel-collector.istio-system.svc.cluster.local]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 4317, name: grpc-otlp, protocol: GRPC}}]
  endpoints: [{{address: 127.{b}.9.1}}]
"#
    );
    for (i, app) in APPS.iter().enumerate() {
        let n = i + 1;
        let port = app_port(b, n);
        yaml.push_str(&format!(
            r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {app}}}
spec:
  hosts: [{app}.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: {app}}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {app}-1}}
spec: {{address: 127.{b}.10.{n}, labels: {{app: {app}}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: {app}}}
spec:
  workloadSelector: {{labels: {{app: {app}}}}}
  ingress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    bind: 127.{b}.10.{n}
    defaultEndpoint: 127.0.0.1:{port}
  egress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    bind: 127.{b}.11.{n}
    hosts: ["./*", "istio-system/*"]
"#
        ));
    }
    yaml
}

fn telemetry(sampling: u32) -> String {
    format!(
        r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing:
  - providers: [{{name: otel}}]
    randomSamplingPercentage: {sampling}
"#
    )
}

const MESH_CONFIG: &str = r#"extensionProviders:
- name: otel
  opentelemetry: {service: otel-collector.istio-system.svc.cluster.local, port: 4317}
"#;

/// The chain, its proxies and the receiver's spans.
struct Chain {
    mesh: Mesh,
    spans: std::path::PathBuf,
    b: u8,
}

impl Chain {
    fn start(kind: Dataplane, b: u8) -> Chain {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mesh_config = dir.path().join("mesh.yaml");
        std::fs::write(&mesh_config, MESH_CONFIG).unwrap_or_else(|e| panic!("{e}"));
        let config = mesh_config.to_string_lossy().into_owned();
        let mut mesh = Mesh::start_with(
            b,
            &[("mesh.yaml", &mesh_yaml(b)), ("telemetry.yaml", &telemetry(100))],
            &["--mesh-config", &config],
        );
        let spans = mesh.config_dir.path().join("spans.jsonl");
        let receiver = Command::new(python())
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/otlp_receiver.py"))
            .args(["--address", &format!("127.{b}.9.1"), "--port", "4317", "--out", &spans.to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the OTLP receiver: {e}"));
        mesh.adopt("otlp-receiver", receiver);
        for (i, app) in APPS.iter().enumerate() {
            let n = i + 1;
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
            cmd.args(["demo-app", "--listen", &format!("127.0.0.1:{}", app_port(b, n)), "--name", app]);
            if let Some(next) = APPS.get(i + 1) {
                cmd.args(["--call", &format!("{next}=http://127.{b}.11.{n}:9080")]);
            }
            let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap_or_else(|e| panic!("{e}"));
            mesh.adopt(&format!("{app}-app"), child);
            let node = format!("sidecar~127.{b}.10.{n}~{app}-1.default~default.svc.cluster.local");
            // Named as its WorkloadEntry, which is how the control plane finds its services.
            mesh.proxy(kind, &format!("{app}-1"), &node, &[("app", app)], &format!("127.{b}.10.{n}"), true);
        }
        let chain = Chain { mesh, spans, b };
        chain.mesh.wait_until("the chain", || chain.call(&[], "/ready").status == 200);
        chain
    }

    /// Calls the frontend's sidecar.
    fn call(&self, headers: &[&str], path: &str) -> common::mesh::Reply {
        let mut args = vec!["-H", "Host: frontend"];
        for h in headers {
            args.extend(["-H", h]);
        }
        let url = format!("http://127.{}.10.1:9080{path}", self.b);
        args.push(&url);
        self.mesh.curl(&args)
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.spans)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }

    /// The spans of the trace of the request to `path` (the applications call the next
    /// service at `/`), once all five hops' spans have arrived.
    fn trace_of(&self, path: &str) -> Vec<Value> {
        let of = || -> Vec<Value> {
            let spans = self.spans();
            let Some(trace) = spans.iter().find(|s| url_ends(s, path)).map(|s| s["trace_id"].clone()) else {
                return Vec::new();
            };
            spans.into_iter().filter(|s| s["trace_id"] == trace).collect()
        };
        self.mesh.wait_until(&format!("the spans of {path}"), || of().len() >= 5);
        of()
    }
}

/// The headers the backend application received, from the frontend's answer.
fn backend_headers(reply: &common::mesh::Reply) -> Value {
    let body = reply.json();
    body["calls"][0]["answer"]["calls"][0]["answer"]["headers"].clone()
}

fn url_ends(span: &Value, path: &str) -> bool {
    span["attributes"]["http.url"].as_str().is_some_and(|u| u.ends_with(path))
}

fn attribute<'a>(span: &'a Value, key: &str) -> &'a str {
    span["attributes"][key].as_str().unwrap_or_else(|| panic!("no {key} in {span}"))
}

fn spans_form_one_trace(kind: Dataplane, b: u8) {
    let chain = Chain::start(kind, b);
    let client_span = "00f067aa0ba902b7";
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let reply = chain.call(&[&format!("traceparent: 00-{trace}-{client_span}-01")], "/chain");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let spans = chain.trace_of("/chain");
    assert_eq!(spans.len(), 5, "{spans:#?}");
    assert_eq!(spans[0]["trace_id"], trace, "{spans:#?}");

    // Inbound spans are the SERVER side of a hop, outbound spans the CLIENT side, each the
    // child of the one before: client → frontend in → frontend out → middle in → middle
    // out → backend in.
    let by_id: HashMap<&str, &Value> = spans.iter().map(|s| (s["span_id"].as_str().unwrap_or_default(), s)).collect();
    let root = spans.iter().find(|s| s["parent_span_id"] == client_span).unwrap_or_else(|| panic!("{spans:#?}"));
    let mut hops = vec![root];
    while let Some(next) = spans.iter().find(|s| s["parent_span_id"] == hops[hops.len() - 1]["span_id"]) {
        hops.push(next);
    }
    assert_eq!(hops.len(), 5, "the parent links do not chain: {spans:#?}");
    assert_eq!(by_id.len(), 5, "span ids are not unique: {spans:#?}");
    let expected = [
        ("frontend.default", 2, "frontend.default.svc.cluster.local:9080/*"),
        ("frontend.default", 3, "middle.default.svc.cluster.local:9080/*"),
        ("middle.default", 2, "middle.default.svc.cluster.local:9080/*"),
        ("middle.default", 3, "backend.default.svc.cluster.local:9080/*"),
        ("backend.default", 2, "backend.default.svc.cluster.local:9080/*"),
    ];
    for (span, (service, kind, name)) in hops.iter().zip(expected) {
        assert_eq!(span["service"], service, "{span}");
        assert_eq!(span["kind"], kind, "{span}");
        assert_eq!(span["name"], name, "{span}");
        assert_eq!(attribute(span, "http.status_code"), "200", "{span}");
        assert_eq!(attribute(span, "http.method"), "GET", "{span}");
        assert_eq!(attribute(span, "component"), "proxy", "{span}");
        assert_eq!(attribute(span, "istio.canonical_service"), service.trim_end_matches(".default"), "{span}");
        assert_eq!(attribute(span, "istio.namespace"), "default", "{span}");
        assert_eq!(attribute(span, "istio.mesh_id"), "cluster.local", "{span}");
        assert_eq!(span["status"], 0, "{span}");
        assert!(span["end"].as_u64() >= span["start"].as_u64(), "{span}");
    }
    assert_eq!(attribute(hops[1], "upstream_cluster"), "outbound|9080||middle.default.svc.cluster.local");
    assert_eq!(attribute(hops[0], "upstream_cluster"), "inbound|9080||");
    // The request id is the same at every hop.
    let id = attribute(hops[0], "guid:x-request-id");
    assert!(hops.iter().all(|s| attribute(s, "guid:x-request-id") == id), "{spans:#?}");

    // What the backend application received: the trace, with its sidecar's inbound span
    // as the parent.
    let headers = backend_headers(&reply);
    assert_eq!(headers["traceparent"], format!("00-{trace}-{}-01", hops[4]["span_id"].as_str().unwrap_or_default()));

    // A failing request: the frontend's application answers 503, an error span.
    let reply = chain.call(&[], "/fail?status=503");
    assert_eq!(reply.status, 503, "{}", reply.body);
    let failed = chain.trace_of("/fail?status=503");
    let inbound = failed.iter().find(|s| url_ends(s, "/fail?status=503")).unwrap_or_else(|| panic!("{failed:#?}"));
    assert_eq!(attribute(inbound, "http.status_code"), "503", "{inbound}");
    assert_eq!(attribute(inbound, "error"), "true", "{inbound}");
    assert_eq!(inbound["status"], 2, "{inbound}");

    // A context that cannot be read is neither traced nor touched.
    let reply = chain.call(&["traceparent: not-a-trace-context"], "/garbled");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(backend_headers(&reply)["traceparent"], "not-a-trace-context");

    // A caller that decided not to sample is followed: no spans, but the context goes on.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let reply = chain.call(&[&format!("traceparent: 00-{unsampled}-b7ad6b7169203331-00")], "/unsampled");
    let seen = backend_headers(&reply)["traceparent"].as_str().unwrap_or_default().to_owned();
    assert!(seen.starts_with(&format!("00-{unsampled}-")) && seen.ends_with("-00"), "{seen}");
    assert!(!seen.contains("b7ad6b7169203331"), "the context must name the last hop: {seen}");

    // B3, multi-header and single-header, continues the caller's trace too (weft reads
    // it when there is no traceparent; Envoy's OpenTelemetry tracer reads only W3C).
    if kind == Dataplane::Weft {
        let reply = chain
            .call(&["x-b3-traceid: 463ac35c9f6413ad", "x-b3-spanid: a2fb4a1d1a96d312", "x-b3-sampled: 1"], "/b3-multi");
        assert_eq!(reply.status, 200);
        let spans = chain.trace_of("/b3-multi");
        assert_eq!(spans.len(), 5, "{spans:#?}");
        assert_eq!(spans[0]["trace_id"], "0000000000000000463ac35c9f6413ad", "{spans:#?}");
        let root =
            spans.iter().find(|s| s["parent_span_id"] == "a2fb4a1d1a96d312").unwrap_or_else(|| panic!("{spans:#?}"));
        assert_eq!(root["kind"], 2);
        // The backend application gets B3 naming its sidecar's span, whose parent is the
        // middle's outbound span.
        let headers = backend_headers(&reply);
        assert_eq!(headers["x-b3-traceid"], "463ac35c9f6413ad", "{headers}");
        assert_eq!(headers["x-b3-sampled"], "1", "{headers}");
        let backend_in =
            spans.iter().find(|s| s["span_id"] == headers["x-b3-spanid"]).unwrap_or_else(|| panic!("{headers}"));
        assert_eq!(backend_in["service"], "backend.default");
        assert_eq!(backend_in["parent_span_id"], headers["x-b3-parentspanid"], "{headers}");

        let single = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";
        let reply = chain.call(&[&format!("b3: {single}")], "/b3-single");
        assert_eq!(reply.status, 200);
        let spans = chain.trace_of("/b3-single");
        assert_eq!(spans[0]["trace_id"], "80f198ee56343ba864fe8b2a57d3eff7", "{spans:#?}");
        let b3 = backend_headers(&reply)["b3"].as_str().unwrap_or_default().to_owned();
        assert!(b3.starts_with("80f198ee56343ba864fe8b2a57d3eff7-") && b3.contains("-1-"), "{b3}");
    }

    // Sampling at 0%: plain requests make no spans; x-client-trace-id forces a trace.
    chain.mesh.write_config("telemetry.yaml", &telemetry(0));
    chain.mesh.wait_until("0% sampling", || {
        let r = chain.call(&[], "/probe");
        backend_headers(&r)["traceparent"].as_str().is_some_and(|t| t.ends_with("-00"))
    });
    assert_eq!(chain.call(&[], "/not-sampled").status, 200);
    let forced = chain.call(&["x-client-trace-id: forced-1"], "/forced");
    assert_eq!(forced.status, 200);
    let spans = chain.trace_of("/forced");
    let root = spans.iter().find(|s| url_ends(s, "/forced")).unwrap_or_else(|| panic!("{spans:#?}"));
    assert_eq!(attribute(root, "guid:x-client-trace-id"), "forced-1", "{root}");
    // A caller's decision to sample does not outweigh this mesh's: as in Envoy 1.40, a
    // span is reported when both sample. The context goes on, marked not sampled.
    let parent = "5c3b8e0ac4a1e1f2a3b4c5d6e7f80912";
    let reply = chain.call(&[&format!("traceparent: 00-{parent}-b7ad6b7169203331-01")], "/parent-sampled");
    assert_eq!(reply.status, 200);
    let seen = backend_headers(&reply)["traceparent"].as_str().unwrap_or_default().to_owned();
    assert!(seen.starts_with(&format!("00-{parent}-")) && seen.ends_with("-00"), "{seen}");
    // Spans go in batches, each proxy's buffer whole: once a later forced request's
    // spans have all arrived, any span of the requests above would have too.
    assert_eq!(chain.call(&["x-client-trace-id: marker"], "/marker").status, 200);
    chain.trace_of("/marker");
    let all = chain.spans();
    for path in ["/garbled", "/unsampled", "/not-sampled", "/parent-sampled"] {
        assert!(!all.iter().any(|s| url_ends(s, path)), "{path} must make no span: {all:#?}");
    }
    chain.mesh.wait_synced(3);
}

#[test]
fn envoy_spans_form_one_trace() {
    spans_form_one_trace(Dataplane::Envoy, 37);
}

#[test]
fn weft_spans_form_one_trace() {
    spans_form_one_trace(Dataplane::Weft, 137);
}
