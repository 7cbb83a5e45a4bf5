//! Mutual TLS between sidecars, end to end with real weft proxies holding certificates
//! from the control plane's CA: auto mTLS, PeerAuthentication STRICT / PERMISSIVE /
//! DISABLE, peers with the wrong identity, another trust domain's certificate, an
//! expired one, and certificate rotation under steady load.

mod common;

use std::path::Path;
use std::process::Command;

use common::mesh::Mesh;

const B: u8 = 61;

fn mesh_yaml(b: u8, mode: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: server}}
spec:
  hosts: [server.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: server}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: server2}}
spec:
  hosts: [server2.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: server2}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server-v1}}
spec:
  address: 127.{b}.1.1
  serviceAccount: server
  labels: {{app: server, security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server2-v1}}
spec:
  address: 127.{b}.1.3
  serviceAccount: server2
  labels: {{app: server2, security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client-v1}}
spec:
  address: 127.{b}.2.1
  serviceAccount: client
  labels: {{app: client, security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: client2-v1}}
spec:
  address: 127.{b}.2.2
  serviceAccount: client2
  labels: {{app: client2, security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: client2}}
spec:
  workloadSelector: {{labels: {{app: client2}}}}
  egress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    bind: 127.{b}.2.2
    hosts: ["./*"]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: impostor}}
spec: {{address: 127.{b}.9.9, serviceAccount: impostor, labels: {{app: impostor}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: server}}
spec:
  workloadSelector: {{labels: {{app: server}}}}
  ingress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:18{b}1
  egress: [{{hosts: ["./*"]}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: server2}}
spec:
  workloadSelector: {{labels: {{app: server2}}}}
  ingress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:18{b}3
  egress: [{{hosts: ["./*"]}}]
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
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default}}
spec:
  mtls: {{mode: {mode}}}
"#
    )
}

fn fail<T>(e: rcgen::Error) -> T {
    panic!("{e}")
}

/// A certificate for `spiffe_id`, signed by the given CA, valid over the given span.
fn leaf(
    ca_cert: &str,
    ca_key: &str,
    spiffe_id: &str,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> (String, String) {
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca_cert, rcgen::KeyPair::from_pem(ca_key).unwrap_or_else(fail))
        .unwrap_or_else(fail);
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(fail);
    let uri = rcgen::string::Ia5String::try_from(spiffe_id).unwrap_or_else(|e| panic!("{e}"));
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    params.not_before = not_before;
    params.not_after = not_after;
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap_or_else(fail);
    let cert = params.signed_by(&key, &issuer).unwrap_or_else(fail);
    (cert.pem(), key.serialize_pem())
}

/// A CA of another mesh.
fn foreign_ca() -> (String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(fail);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "other.local");
    let key = rcgen::KeyPair::generate().unwrap_or_else(fail);
    let cert = params.self_signed(&key).unwrap_or_else(fail);
    (cert.pem(), key.serialize_pem())
}

/// One request over mutual TLS straight to a sidecar's inbound port, as a peer sidecar
/// would make it: `(status or "ERROR ...", body)`.
fn call_with_cert(dir: &Path, name: &str, cert: Option<(String, String)>) -> (String, String) {
    call_server(dir, name, cert, &format!("127.{B}.1.1:9080"), &[])
}

/// As [`call_with_cert`], to any server, with extra client arguments.
fn call_server(
    dir: &Path,
    name: &str,
    cert: Option<(String, String)>,
    server: &str,
    extra: &[&str],
) -> (String, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/mtls_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).args(["--connect", server]).args(extra);
    if let Some((cert, key)) = cert {
        let (c, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&k, key).unwrap_or_else(|e| panic!("{e}"));
        cmd.args(["--cert", &c.to_string_lossy(), "--key", &k.to_string_lossy()]);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("python3: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    (status.to_owned(), body.to_owned())
}

/// The serial number of a weft proxy's workload certificate.
fn serial(mesh: &Mesh, admin: &str) -> String {
    let certs = mesh.get(&format!("http://{admin}/certs")).json();
    certs["certificates"][0]["cert_chain"][0]["serial_number"].as_str().unwrap_or("").to_owned()
}

#[test]
fn sidecars_talk_mutual_tls_as_peer_authentication_says() {
    let state = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state_dir = state.path().to_string_lossy().into_owned();
    let secure = format!("127.{B}.0.1:15012");
    let mut mesh = Mesh::start_with(
        B,
        &[("mesh.yaml", &mesh_yaml(B, "STRICT"))],
        &["--secure-address", &secure, "--state-dir", &state_dir],
    );
    let root = format!("{state_dir}/ca/root-cert.pem");
    let token = |workload: &str| format!("{state_dir}/tokens/default/{workload}.token");
    mesh.wait_until("the CA", || Path::new(&token("impostor")).exists());
    mesh.backend("server-app", "127.0.0.1", 18611, 0);
    mesh.backend("server2-app", "127.0.0.1", 18613, 0);

    // Every sidecar holds a short-lived certificate (6 s), so that it rotates during the test.
    let mut sidecar = |name: &str, workload: &str, app: &str, ip: &str, token_of: &str| {
        mesh.weft_sidecar(name, "default", workload, app, ip, &state_dir, token_of, &["--cert-lifetime", "6s"])
    };
    let server_admin = sidecar("server-sidecar", "server-v1", "server", &format!("127.{B}.1.1"), "server-v1");
    let client_admin = sidecar("client-sidecar", "client-v1", "client", &format!("127.{B}.2.1"), "client-v1");
    // server2's sidecar holds the impostor's token: its certificate names another account.
    sidecar("server2-sidecar", "server2-v1", "server2", &format!("127.{B}.1.3"), "impostor");

    // Auto mTLS: the client's sidecar calls the server's over mutual TLS, and the
    // application sees the caller's identity in x-forwarded-client-cert.
    let through_client =
        |mesh: &Mesh, host: &str| mesh.curl(&[&format!("http://127.{B}.2.1:9080/"), "-H", &format!("host: {host}")]);
    let reply = through_client(&mesh, "server");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let xfcc = reply.json()["headers"]["x-forwarded-client-cert"].as_str().unwrap_or("").to_owned();
    assert!(xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/client"), "{xfcc}");
    assert!(xfcc.starts_with("By=spiffe://cluster.local/ns/default/sa/server;Hash="), "{xfcc}");

    // STRICT: plaintext straight to the server's sidecar is refused.
    let plain = mesh.get(&format!("http://127.{B}.1.1:9080/"));
    assert_eq!(plain.status, 0, "plaintext got through STRICT: {}", plain.body);

    // A peer with a certificate from the mesh's CA is served; one from another trust
    // domain's CA, an expired one, or none at all is refused in the handshake.
    let dir = state.path();
    let ca_cert = std::fs::read_to_string(&root).unwrap_or_else(|e| panic!("{e}"));
    let ca_key = std::fs::read_to_string(format!("{state_dir}/ca/root-key.pem")).unwrap_or_else(|e| panic!("{e}"));
    let now = time::OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let tester = leaf(&ca_cert, &ca_key, "spiffe://cluster.local/ns/default/sa/tester", now - hour, now + hour);
    let (status, body) = call_with_cert(dir, "tester", Some(tester));
    assert_eq!(status, "200", "{body}");
    assert!(body.contains("URI=spiffe://cluster.local/ns/default/sa/tester"), "{body}");
    let (other_cert, other_key) = foreign_ca();
    let foreign = leaf(&other_cert, &other_key, "spiffe://other.local/ns/default/sa/client", now - hour, now + hour);
    let (status, _) = call_with_cert(dir, "foreign", Some(foreign));
    assert!(status.starts_with("ERROR"), "another trust domain's certificate was accepted: {status}");
    let expired = leaf(&ca_cert, &ca_key, "spiffe://cluster.local/ns/default/sa/client", now - hour * 3, now - hour);
    let (status, _) = call_with_cert(dir, "expired", Some(expired));
    assert!(status.starts_with("ERROR"), "an expired certificate was accepted: {status}");
    let (status, _) = call_with_cert(dir, "none", None);
    assert!(status.starts_with("ERROR"), "a peer without a certificate was accepted: {status}");

    // The wrong SPIFFE id: server2 must present server2's identity; its sidecar holds
    // the impostor's, so the client's sidecar refuses it and the application is never called.
    let reply = through_client(&mesh, "server2");
    assert_eq!(reply.status, 503, "{}", reply.body);
    let last = mesh.get("http://127.0.0.1:18613/last").json();
    assert!(last.get("path").is_none(), "server2's application was reached: {last}");

    // Rotation under steady load: 8 s of requests across at least one renewal of both
    // certificates, without one failure.
    let (server_serial, client_serial) = (serial(&mesh, &server_admin), serial(&mesh, &client_admin));
    let load = Command::new("h2load")
        .args(["--h1", "-c", "4", "-D", "8", "-H", ":authority: server", &format!("http://127.{B}.2.1:9080/")])
        .output()
        .unwrap_or_else(|e| panic!("h2load: {e}"));
    let report = String::from_utf8_lossy(&load.stdout).into_owned();
    let line = report.lines().find(|l| l.starts_with("requests:")).unwrap_or("");
    let field = |name: &str| -> u64 {
        line.split(',')
            .find_map(|p| p.trim().strip_suffix(name))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(u64::MAX)
    };
    let codes = report.lines().find(|l| l.starts_with("status codes:")).unwrap_or("");
    assert!(field("succeeded") > 0 && field("failed") == 0 && field("errored") == 0, "{report}");
    assert!(codes.contains(" 0 3xx, 0 4xx, 0 5xx"), "{report}");
    assert_ne!(serial(&mesh, &server_admin), server_serial, "the server's certificate was not renewed");
    assert_ne!(serial(&mesh, &client_admin), client_serial, "the client's certificate was not renewed");
    // New connections after the renewal are served too.
    assert_eq!(through_client(&mesh, "server").status, 200);

    // PERMISSIVE: plaintext is accepted beside mutual TLS.
    mesh.write_config("mesh.yaml", &mesh_yaml(B, "PERMISSIVE"));
    mesh.wait_until("PERMISSIVE to admit plaintext", || mesh.get(&format!("http://127.{B}.1.1:9080/")).status == 200);
    let plain = mesh.get(&format!("http://127.{B}.1.1:9080/")).json();
    assert!(plain["headers"].get("x-forwarded-client-cert").is_none(), "{plain}");
    let reply = through_client(&mesh, "server").json();
    assert!(reply["headers"]["x-forwarded-client-cert"].as_str().is_some_and(|x| x.contains("sa/client")), "{reply}");

    // DISABLE: the client's sidecar sends plaintext, and the server's accepts it.
    mesh.write_config("mesh.yaml", &mesh_yaml(B, "DISABLE"));
    mesh.wait_until("DISABLE to turn mutual TLS off", || {
        let r = through_client(&mesh, "server");
        r.status == 200 && r.json()["headers"].get("x-forwarded-client-cert").is_none()
    });
    let (status, _) = call_with_cert(dir, "tester", None);
    assert!(status.starts_with("ERROR"), "DISABLE still terminated TLS: {status}");
}

/// Envoy sidecars get their certificates from `weft agent` over SDS and talk mutual TLS
/// with weft sidecars, both ways, under STRICT.
#[test]
fn envoy_and_weft_sidecars_talk_mutual_tls_to_each_other() {
    const E: u8 = 62;
    let state = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state_dir = state.path().to_string_lossy().into_owned();
    let secure = format!("127.{E}.0.1:15012");
    let mut mesh = Mesh::start_with(
        E,
        &[("mesh.yaml", &mesh_yaml(E, "STRICT"))],
        &["--secure-address", &secure, "--state-dir", &state_dir],
    );
    let root = format!("{state_dir}/ca/root-cert.pem");
    let token = |workload: &str| format!("{state_dir}/tokens/default/{workload}.token");
    mesh.wait_until("the CA", || Path::new(&token("impostor")).exists());
    mesh.backend("server-app", "127.0.0.1", 18621, 0);
    mesh.backend("server2-app", "127.0.0.1", 18623, 0);
    let labels = |app: &'static str| [("app", app), ("security.istio.io/tlsMode", "istio")];
    let node = |ip: &str, workload: &str| format!("sidecar~{ip}~{workload}.default~default.svc.cluster.local");

    // weft sidecars for server-v1 and client2-v1.
    for (name, workload, app, ip) in [
        ("server-sidecar", "server-v1", "server", format!("127.{E}.1.1")),
        ("client2-sidecar", "client2-v1", "client2", format!("127.{E}.2.2")),
    ] {
        mesh.weft_sidecar(name, "default", workload, app, &ip, &state_dir, workload, &[]);
    }
    // Envoy sidecars for server2-v1 and client-v1, each with its agent.
    for (name, workload, app, ip) in [
        ("server2-envoy", "server2-v1", "server2", format!("127.{E}.1.3")),
        ("client-envoy", "client-v1", "client", format!("127.{E}.2.1")),
    ] {
        let socket = state.path().join(format!("{workload}.sock"));
        mesh.agent(&format!("{name}-agent"), &socket, &secure, &root, &token(workload), "24h");
        mesh.envoy_sds(name, &node(&ip, workload), "default", &labels(app), &ip, "GRPC", Some(&socket));
    }
    let call = |mesh: &Mesh, via: &str, host: &str| {
        let r = mesh.curl(&[&format!("http://{via}:9080/"), "-H", &format!("host: {host}")]);
        let xfcc = r.json()["headers"]["x-forwarded-client-cert"].as_str().unwrap_or("").to_owned();
        (r.status, xfcc)
    };
    let (envoy_client, weft_client) = (format!("127.{E}.2.1"), format!("127.{E}.2.2"));

    // Envoy calls weft.
    let (status, xfcc) = call(&mesh, &envoy_client, "server");
    assert_eq!(status, 200);
    assert!(xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/client"), "{xfcc}");
    // weft calls Envoy.
    let (status, xfcc) = call(&mesh, &weft_client, "server2");
    assert_eq!(status, 200);
    assert!(xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/client2"), "{xfcc}");
    assert!(xfcc.starts_with("By=spiffe://cluster.local/ns/default/sa/server2"), "{xfcc}");
    // Envoy calls Envoy, both on weft's certificates.
    let (status, xfcc) = call(&mesh, &envoy_client, "server2");
    assert_eq!(status, 200);
    assert!(xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/client"), "{xfcc}");
    // STRICT on the Envoy server as on weft's: plaintext is refused.
    assert_eq!(mesh.get(&format!("http://127.{E}.1.3:9080/")).status, 0);
    assert_eq!(mesh.get(&format!("http://127.{E}.1.1:9080/")).status, 0);
}

/// meshConfig's meshMTLS: TLS 1.3 only and P-256 key exchange between sidecars; a peer
/// that offers only TLS 1.2 is refused, even with a good certificate.
#[test]
fn mesh_mtls_settings_apply_to_mesh_traffic() {
    const M: u8 = 67;
    let state = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state_dir = state.path().to_string_lossy().into_owned();
    let mesh_config = state.path().join("mesh-config.yaml");
    std::fs::write(&mesh_config, "meshMTLS:\n  minProtocolVersion: TLSV1_3\n  ecdhCurves: [P-256]\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let secure = format!("127.{M}.0.1:15012");
    let mut mesh = Mesh::start_with(
        M,
        &[("mesh.yaml", &mesh_yaml(M, "STRICT"))],
        &["--secure-address", &secure, "--state-dir", &state_dir, "--mesh-config", &mesh_config.to_string_lossy()],
    );
    let root = format!("{state_dir}/ca/root-cert.pem");
    let token = |workload: &str| format!("{state_dir}/tokens/default/{workload}.token");
    mesh.wait_until("the CA", || Path::new(&token("impostor")).exists());
    mesh.backend("server-app", "127.0.0.1", 18671, 0);
    for (name, workload, app, ip) in [
        ("server-sidecar", "server-v1", "server", format!("127.{M}.1.1")),
        ("client-sidecar", "client-v1", "client", format!("127.{M}.2.1")),
    ] {
        mesh.weft_sidecar(name, "default", workload, app, &ip, &state_dir, workload, &[]);
    }
    let reply = mesh.curl(&[&format!("http://127.{M}.2.1:9080/"), "-H", "host: server"]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let ca_cert = std::fs::read_to_string(&root).unwrap_or_else(|e| panic!("{e}"));
    let ca_key = std::fs::read_to_string(format!("{state_dir}/ca/root-key.pem")).unwrap_or_else(|e| panic!("{e}"));
    let now = time::OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let peer = || leaf(&ca_cert, &ca_key, "spiffe://cluster.local/ns/default/sa/tester", now - hour, now + hour);
    let server = format!("127.{M}.1.1:9080");
    let (status, body) = call_server(state.path(), "tls13", Some(peer()), &server, &[]);
    assert_eq!(status, "200", "{body}");
    let (status, _) = call_server(state.path(), "tls12", Some(peer()), &server, &["--max-tls", "1.2"]);
    assert!(status.starts_with("ERROR"), "a TLS 1.2 peer was accepted under minProtocolVersion TLSV1_3: {status}");
}
