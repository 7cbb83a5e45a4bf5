//! The control plane proven by proxyless gRPC clients nobody here wrote: Python's
//! grpcio and Node's @grpc/grpc-js-xds resolve `xds:///` targets through weft and
//! route, split, retry, fail and stick as the Istio YAML says.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::mesh::Mesh;

fn config(b: u8, reviews_weights: (u32, u32)) -> String {
    let (v1, v2) = reviews_weights;
    let mut yaml = String::new();
    for (service, subsets) in [
        ("reviews", &["v1", "v2"][..]),
        ("ratings", &["a", "b", "c"][..]),
        ("flaky", &["v1"][..]),
        ("details", &["v1"][..]),
    ] {
        yaml += &format!(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {service}}}
spec:
  hosts: [{service}.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: grpc, protocol: GRPC}}]
  workloadSelector: {{labels: {{app: {service}}}}}
---
"#
        );
        for (i, subset) in subsets.iter().enumerate() {
            let host = address(b, service, i);
            yaml += &format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {service}-{subset}}}\nspec: {{address: {host}, labels: {{app: {service}, version: {subset}}}, ports: {{grpc: 7001}}}}\n---\n"
            );
        }
    }
    yaml += &format!(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings}}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer:
      consistentHash: {{httpHeaderName: x-user}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: reviews, subset: v2}}, weight: {v2}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: flaky}}
spec:
  hosts: [flaky]
  http:
  - retries: {{attempts: 3, retryOn: unavailable}}
    route: [{{destination: {{host: flaky}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: details}}
spec:
  hosts: [details]
  http:
  - fault: {{abort: {{grpcStatus: PERMISSION_DENIED, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: details}}}}]
"#
    );
    yaml
}

fn address(b: u8, service: &str, i: usize) -> String {
    let s = match service {
        "reviews" => 1,
        "ratings" => 2,
        "flaky" => 3,
        _ => 4,
    };
    format!("127.{b}.{s}.{}", i + 1)
}

fn start(b: u8) -> Mesh {
    let mut mesh = Mesh::start(b, &[("mesh.yaml", &config(b, (80, 20)))]);
    for (name, service, i, fail_every) in [
        ("v1", "reviews", 0, 0),
        ("v2", "reviews", 1, 0),
        ("a", "ratings", 0, 0),
        ("b", "ratings", 1, 0),
        ("c", "ratings", 2, 0),
        ("flaky", "flaky", 0, 4),
        ("details", "details", 0, 0),
    ] {
        mesh.grpc_server(name, &address(b, service, i), 7001, fail_every);
    }
    mesh
}

fn target(service: &str) -> String {
    format!("xds:///{service}.default.svc.cluster.local:9080")
}

fn names(calls: &[serde_json::Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for c in calls {
        let key = if c["ok"] == true {
            c["name"].as_str().unwrap_or("").to_owned()
        } else {
            format!("error:{}", c["code"].as_str().unwrap_or(""))
        };
        *out.entry(key).or_default() += 1;
    }
    out
}

/// Every behaviour, through one client implementation (`command` runs its client).
fn check_client(mesh: &mut Mesh, node: &str, command: &[String]) {
    let run = |mesh: &Mesh, service: &str, count: u32, metadata: &[&str]| -> Vec<serde_json::Value> {
        let mut args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
        args.extend(["client", "--target"]);
        let t = target(service);
        args.push(&t);
        let n = count.to_string();
        args.extend(["--count", &n]);
        for m in metadata {
            args.extend(["--metadata", m]);
        }
        let out = std::process::Command::new(&command[0])
            .args(&args)
            .env("GRPC_XDS_BOOTSTRAP", mesh.grpc_bootstrap(node))
            .output()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        let calls: Vec<serde_json::Value> =
            String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        assert_eq!(
            calls.len(),
            count as usize,
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        calls
    };

    // A weighted 80/20 split, within tolerance.
    let split = names(&run(mesh, "reviews", 300, &[]));
    let v1 = *split.get("v1").unwrap_or(&0) as f64 / 300.0;
    assert!((0.70..=0.90).contains(&v1) && split.len() == 2, "{split:?}");

    // Header-based routing to a subset.
    assert_eq!(names(&run(mesh, "reviews", 20, &["end-user=jason"])), BTreeMap::from([("v2".to_owned(), 20)]));

    // Retries make a backend that fails three calls in four succeed.
    assert_eq!(names(&run(mesh, "flaky", 8, &[])), BTreeMap::from([("flaky".to_owned(), 8)]));

    // Fault injection: an abort with the configured gRPC status.
    assert_eq!(names(&run(mesh, "details", 5, &[])), BTreeMap::from([("error:PERMISSION_DENIED".to_owned(), 5)]));

    // Ring hash: one user always reaches the same backend; users spread over backends.
    let mut chosen = std::collections::BTreeSet::new();
    for user in 0..12 {
        let got = names(&run(mesh, "ratings", 6, &[&format!("x-user=user-{user}")]));
        assert_eq!(got.len(), 1, "user-{user} was not sticky: {got:?}");
        chosen.extend(got.into_keys());
    }
    assert!(chosen.len() >= 2, "every user hashed to {chosen:?}");
}

fn assert_no_nacks(mesh: &Mesh) {
    for p in mesh.syncz().as_array().into_iter().flatten() {
        for (t, s) in p["types"].as_object().into_iter().flatten() {
            assert!(s["nack"].is_null(), "{} rejected {t}: {}", p["proxy"], s["nack"]);
        }
    }
}

/// A split change reaches a client that keeps running, with no NACK on the way.
fn live_edit(mesh: &mut Mesh, name: &str, node: &str, command: &[String]) {
    let b = mesh.block;
    mesh.write_config("mesh.yaml", &config(b, (80, 20)));
    let argv: Vec<&str> = command.iter().map(String::as_str).collect();
    mesh.grpc_caller(name, node, &target("reviews"), 0.02, &argv);
    mesh.wait_until("the caller to make calls", || mesh.calls_logged(name).len() >= 20);
    assert_no_nacks(mesh);
    mesh.write_config("mesh.yaml", &config(b, (0, 100)));
    mesh.wait_until("the split change to reach the running client", || {
        let calls = mesh.calls_logged(name);
        calls.len() > 40 && calls[calls.len() - 20..].iter().all(|c| c["name"] == "v2")
    });
    assert_no_nacks(mesh);
    // The client's own xDS trace shows it parsing weft's resources and rejecting none.
    let trace = mesh.log(&format!("{name}-stderr"));
    assert!(
        trace.contains("RouteConfiguration") && trace.contains("ClusterLoadAssignment"),
        "no xDS trace from the client:\n{trace}"
    );
    for sign in ["NACK", "Failed to parse", "rejected", "invalid resource"] {
        assert!(!trace.contains(sign), "the client logged {sign:?}:\n{trace}");
    }
}

#[test]
fn python_grpcio_follows_the_istio_yaml() {
    let mut mesh = start(51);
    let node = "sidecar~127.51.9.1~python-client.default~default.svc.cluster.local";
    let command = mesh.python_client();
    check_client(&mut mesh, node, &command);
    live_edit(&mut mesh, "python-caller", node, &command);
}

#[test]
fn node_grpc_js_xds_follows_the_istio_yaml() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/node");
    assert!(
        dir.join("node_modules/@grpc/grpc-js-xds").is_dir(),
        "run scripts/test: it installs @grpc/grpc-js-xds (npm ci in {})",
        dir.display()
    );
    let mut mesh = start(52);
    let node = "sidecar~127.52.9.1~node-client.default~default.svc.cluster.local";
    let command = vec!["node".to_owned(), dir.join("grpc_client.js").to_string_lossy().into_owned()];
    check_client(&mut mesh, node, &command);
    live_edit(&mut mesh, "node-caller", node, &command);
}
