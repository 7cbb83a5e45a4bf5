//! Workload identity in local mode: the control plane's CA issues each sidecar a
//! SPIFFE certificate for its own workload, on the strength of the bootstrap token it
//! issued that workload; sidecars renew at half-life.

mod common;

use common::mesh::Mesh;

fn mesh_yaml(b: u8) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v1}}
spec: {{address: 127.{b}.1.1, labels: {{app: reviews}}, serviceAccount: bookinfo-reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ratings-v1}}
spec: {{address: 127.{b}.1.2, labels: {{app: ratings}}}}
"#
    )
}

/// The `/certs` leaf of a weft proxy: (SPIFFE ids, serial).
fn leaf(mesh: &Mesh, admin: &str) -> (Vec<String>, String) {
    let certs = mesh.get(&format!("http://{admin}/certs")).json();
    let leaf = &certs["certificates"][0]["cert_chain"][0];
    let ids = leaf["subject_alt_names"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["uri"].as_str().map(str::to_owned))
        .collect();
    (ids, leaf["serial_number"].as_str().unwrap_or("").to_owned())
}

#[test]
fn sidecars_get_their_own_workloads_identity_and_renew_it() {
    let b = 60;
    let state = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state_dir = state.path().to_string_lossy().into_owned();
    let secure = format!("127.{b}.0.1:15012");
    let mut mesh =
        Mesh::start_with(b, &[("mesh.yaml", &mesh_yaml(b))], &["--secure-address", &secure, "--state-dir", &state_dir]);
    let root = format!("{state_dir}/ca/root-cert.pem");
    let token = |workload: &str| format!("{state_dir}/tokens/default/{workload}.token");
    mesh.wait_until("the CA", || std::path::Path::new(&token("reviews-v1")).exists());

    // reviews-v1's sidecar, asking for a 4 s certificate so that renewal is seen.
    let node = format!("sidecar~127.{b}.1.1~reviews-v1.default~default.svc.cluster.local");
    let reviews_token = token("reviews-v1");
    let admin = mesh.weft_proxy_with(
        "reviews-sidecar",
        &node,
        "default",
        &[("app", "reviews")],
        &format!("127.{b}.1.1"),
        "delta",
        &[
            "--ca-address",
            &secure,
            "--ca-root-cert",
            &root,
            "--token-file",
            &reviews_token,
            "--service-account",
            "bookinfo-reviews",
            "--cert-lifetime",
            "4s",
        ],
    );
    let (ids, first_serial) = leaf(&mesh, &admin);
    assert_eq!(ids, ["spiffe://cluster.local/ns/default/sa/bookinfo-reviews"]);
    mesh.wait_until("the certificate to be renewed at half-life", || {
        let (ids, serial) = leaf(&mesh, &admin);
        !serial.is_empty() && serial != first_serial && ids == ["spiffe://cluster.local/ns/default/sa/bookinfo-reviews"]
    });

    // A sidecar holding ratings-v1's token cannot claim reviews' account: the
    // certificate names the workload the token was issued to.
    let node = format!("sidecar~127.{b}.1.2~ratings-v1.default~default.svc.cluster.local");
    let ratings_token = token("ratings-v1");
    let admin = mesh.weft_proxy_with(
        "impostor",
        &node,
        "default",
        &[("app", "ratings")],
        &format!("127.{b}.1.2"),
        "delta",
        &[
            "--ca-address",
            &secure,
            "--ca-root-cert",
            &root,
            "--token-file",
            &ratings_token,
            "--service-account",
            "bookinfo-reviews",
        ],
    );
    assert_eq!(leaf(&mesh, &admin).0, ["spiffe://cluster.local/ns/default/sa/default"]);

    // xDS over mutual TLS with the workload certificate: the control plane knows who it
    // talks to. A proxy whose node claims another namespace than its certificate is refused.
    let node = format!("sidecar~127.{b}.1.3~reviews-v1.default~default.svc.cluster.local");
    mesh.weft_proxy_with(
        "reviews-mtls",
        &node,
        "default",
        &[("app", "reviews")],
        &format!("127.{b}.1.3"),
        "delta",
        &[
            "--xds-address",
            &secure,
            "--xds-mtls",
            "--ca-address",
            &secure,
            "--ca-root-cert",
            &root,
            "--token-file",
            &reviews_token,
            "--service-account",
            "bookinfo-reviews",
        ],
    );
    let liar = format!("sidecar~127.{b}.1.4~ratings-v1.other~other.svc.cluster.local");
    let impostor = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "proxy",
            "--xds-address",
            &secure,
            "--xds-mtls",
            "--ca-address",
            &secure,
            "--ca-root-cert",
            &root,
            "--token-file",
            &ratings_token,
            "--node-id",
            &liar,
            "--namespace",
            "other",
            "--admin-address",
            &format!("127.{b}.1.4:15000"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    mesh.adopt("impostor-mtls", impostor);
    mesh.wait_until("the impostor to be refused", || {
        mesh.log("control-plane").lines().any(|l| {
            l.contains("claimed another workload's identity")
                && l.contains("ratings-v1.other")
                && l.contains("spiffe://cluster.local/ns/default/sa/default")
        })
    });
    assert_ne!(mesh.get(&format!("http://127.{b}.1.4:15000/ready")).status, 200);
}
