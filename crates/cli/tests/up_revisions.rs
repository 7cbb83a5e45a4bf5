//! `weft up` with revisions: a workload labelled `istio.io/rev: prod-stable` belongs to
//! the revision the tag points to; `weft up` runs one control plane per revision (sharing
//! the CA), and re-pointing the tag with `weft tag set` moves the workload: its sidecar
//! follows the new revision's control plane without restarting, and traffic goes on. A namespace's
//! `istio.io/rev` label gives its workloads that revision, as Istio's injection does.

mod common;

use common::up::{Up, wait};

use std::process::Command;

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: echo-v1
  annotations: {weft.io/command: "weft demo-app --listen 127.0.0.1:19201 --name echo"}
spec:
  address: 127.0.20.1
  serviceAccount: echo
  labels: {app: echo, istio.io/rev: prod-stable, security.istio.io/tlsMode: istio}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client-v1}
spec:
  address: 127.0.20.2
  serviceAccount: client
  labels: {app: client, security.istio.io/tlsMode: istio}
---
apiVersion: v1
kind: Namespace
metadata:
  name: batch
  labels: {istio.io/rev: 2-0-0}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: worker-v1, namespace: batch}
spec:
  address: 127.0.20.3
  labels: {app: worker}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: echo}
spec:
  workloadSelector: {labels: {app: echo}}
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:19201
  egress: [{hosts: ["./*"]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: client}
spec:
  workloadSelector: {labels: {app: client}}
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    bind: 127.0.21.2
    hosts: ["./*"]
"#;

fn served_by(debug: &str) -> Vec<String> {
    let out = Command::new("curl").args(["-s", "--max-time", "5", &format!("http://{debug}/debug/syncz")]).output();
    let syncz: serde_json::Value = out.ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or_default();
    syncz.as_array().into_iter().flatten().filter_map(|p| p["proxy"].as_str().map(str::to_owned)).collect()
}

#[test]
fn a_tag_moves_a_workload_between_revisions_of_weft_up() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(config.join("mesh.yaml"), MESH).unwrap_or_else(|e| panic!("{e}"));
    let tag = |revision: &str| common::up::tag(&config, "prod-stable", revision);
    tag("1-23-0");

    // Nothing fails to start (Up::start checks).
    let up = Up::start(dir.path(), &config, "127.0.3.1");
    let output = || up.output();
    let shown = output();
    // The default revision on the usual ports, 1-23-0 100 ports further.
    assert!(shown.contains("revision default: xDS 127.0.3.1:15010"), "{shown}");
    assert!(shown.contains("revision 1-23-0: xDS 127.0.3.1:15110"), "{shown}");
    assert!(shown.contains("revision 2-0-0: xDS 127.0.3.1:15210"), "{shown}");
    let echo = "sidecar~127.0.20.1~echo-v1.default~default.svc.cluster.local";
    assert_eq!(served_by("127.0.3.1:15114"), [echo]);
    // The namespace's label: worker-v1 is 2-0-0's.
    assert_eq!(served_by("127.0.3.1:15214"), ["sidecar~127.0.20.3~worker-v1.batch~batch.svc.cluster.local"]);
    let call = || {
        let out = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "Host: echo",
                "http://127.0.21.2:9080/",
            ])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    };
    wait("the client to reach echo", &output, || call() == "200");

    // Re-point the tag: echo's sidecar moves to 1-24-0, which weft up starts.
    tag("1-24-0");
    wait("the move", &output, || output().contains("echo-v1 moves from revision 1-23-0 to 1-24-0"));
    wait("revision 1-24-0", &output, || output().contains("revision 1-24-0: xDS 127.0.3.1:15310"));
    wait("the new revision to serve echo", &output, || served_by("127.0.3.1:15314") == [echo]);
    assert!(served_by("127.0.3.1:15114").is_empty());
    // The same sidecar process, told to follow 1-24-0's control plane; it still names
    // the tag, so that the next move of the tag moves it again.
    let out = Command::new("curl").args(["-s", "--max-time", "5", "http://127.0.20.1:15000/control_plane"]).output();
    let plane: serde_json::Value = out.ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or_default();
    assert_eq!(plane["xds_address"], "127.0.3.1:15310", "{plane}");
    assert_eq!(plane["revision"], "prod-stable", "{plane}");
    assert!(!output().contains("exited"), "{}", output());
    // Mutual TLS still works across revisions: the CA is shared.
    wait("traffic through the moved sidecar", &output, || call() == "200");

    up.stop();
}
