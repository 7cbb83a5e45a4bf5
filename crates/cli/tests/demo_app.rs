//! `weft demo-app` speaks gRPC beside HTTP on one port: `weft.demo.v1.Echo/Echo` and the
//! standard health service, called by Python's grpcio (no generated code: raw bytes),
//! directly and through a weft sidecar.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use common::mesh::{Dataplane, Mesh, python};
use prost::Message;

/// `weft.demo.v1.EchoResponse`, as the wire has it.
#[derive(Clone, PartialEq, prost::Message)]
struct EchoResponse {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(string, tag = "3")]
    version: String,
    #[prost(btree_map = "string, string", tag = "4")]
    metadata: BTreeMap<String, String>,
    #[prost(string, tag = "5")]
    caller: String,
    #[prost(string, tag = "6")]
    peer: String,
}

/// `weft.demo.v1.EchoRequest { message }`, hex.
fn echo_request(message: &str) -> String {
    let mut bytes = vec![0x0a, message.len() as u8];
    bytes.extend(message.as_bytes());
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One call: (status code name, details, response bytes).
fn call(
    target: &str,
    authority: Option<&str>,
    method: &str,
    request_hex: &str,
    metadata: &[&str],
) -> (String, String, Vec<u8>) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/grpc_call.py");
    let mut cmd = Command::new(python());
    cmd.arg(script).args(["--target", target, "--method", method, "--request-hex", request_hex]);
    if let Some(a) = authority {
        cmd.args(["--authority", a]);
    }
    for m in metadata {
        cmd.args(["--metadata", m]);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    let hex = v["response_hex"].as_str().unwrap_or_default();
    let bytes = (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()).collect();
    (v["code"].as_str().unwrap_or_default().to_owned(), v["details"].as_str().unwrap_or_default().to_owned(), bytes)
}

fn echo(target: &str, authority: Option<&str>, metadata: &[&str]) -> EchoResponse {
    let (code, details, bytes) = call(target, authority, "/weft.demo.v1.Echo/Echo", &echo_request("hello"), metadata);
    assert_eq!(code, "OK", "{details}");
    EchoResponse::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn demo_app_answers_grpc_directly_and_through_a_sidecar() {
    let b = 35;
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: demo}}
spec:
  hosts: [demo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9090, name: grpc, protocol: GRPC}}]
  endpoints: [{{address: 127.{b}.1.1}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client}}
spec:
  workloadSelector: {{labels: {{app: client}}}}
  egress:
  - port: {{number: 9090, protocol: GRPC, name: grpc}}
    bind: 127.{b}.2.1
    hosts: ["./*"]
"#
    );
    let mut mesh = Mesh::start(b, &[("mesh.yaml", &yaml)]);
    let app = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["demo-app", "--listen", &format!("127.{b}.1.1:9090"), "--name", "demo", "--app-version", "v7"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    mesh.adopt("demo-app", app);
    let direct = format!("127.{b}.1.1:9090");
    mesh.wait_until("the demo app", || std::net::TcpStream::connect(&direct).is_ok());

    // Directly: the message, the app, the metadata.
    let answer = echo(&direct, None, &["x-tenant=blue"]);
    assert_eq!((answer.message.as_str(), answer.name.as_str(), answer.version.as_str()), ("hello", "demo", "v7"));
    assert_eq!(answer.metadata.get("x-tenant").map(String::as_str), Some("blue"), "{answer:?}");
    assert!(answer.peer.starts_with("127.0.0.1:"), "{answer:?}");
    // A status on request.
    let (code, details, _) = call(&direct, None, "/weft.demo.v1.Echo/Echo", &echo_request("x"), &["x-echo-status=14"]);
    assert_eq!(code, "UNAVAILABLE", "{details}");
    let (code, _, _) = call(&direct, None, "/weft.demo.v1.Echo/Nope", "", &[]);
    assert_eq!(code, "UNIMPLEMENTED");
    // The standard health service: SERVING (field 1 = 1).
    let (code, details, health) = call(&direct, None, "/grpc.health.v1.Health/Check", "", &[]);
    assert_eq!((code.as_str(), health.as_slice()), ("OK", &[0x08, 0x01][..]), "{details}");
    // HTTP still answers on the same port.
    let http = mesh.get(&format!("http://{direct}/headers"));
    assert_eq!(http.status, 200, "{}", http.body);

    // Through a weft sidecar: the route adds a request id on the way.
    let node = format!("sidecar~127.{b}.2.1~client.default~default.svc.cluster.local");
    mesh.proxy(Dataplane::Weft, "client", &node, &[("app", "client")], &format!("127.{b}.2.1"), true);
    let sidecar = format!("127.{b}.2.1:9090");
    mesh.wait_until("the sidecar's gRPC listener", || {
        call(&sidecar, Some("demo:9090"), "/grpc.health.v1.Health/Check", "", &[]).0 == "OK"
    });
    let answer = echo(&sidecar, Some("demo:9090"), &["x-tenant=green"]);
    assert_eq!(answer.name, "demo");
    assert_eq!(answer.metadata.get("x-tenant").map(String::as_str), Some("green"), "{answer:?}");
    assert!(answer.metadata.contains_key("x-request-id"), "{answer:?}");
    let (code, _, _) =
        call(&sidecar, Some("demo:9090"), "/weft.demo.v1.Echo/Echo", &echo_request("x"), &["x-echo-status=5"]);
    assert_eq!(code, "NOT_FOUND");
}
