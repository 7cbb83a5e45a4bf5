//! Canary upgrades of `weft up`'s mesh, under steady traffic (hey, hundreds of requests
//! per second through three services, mutual TLS required, an authorization policy on
//! each hop):
//!
//! - `weft upgrade` moves every proxy from revision 1-0-0 to 2-0-0 in batches, then a
//!   tag flip moves them back: not one request fails, a request in flight and a
//!   kept-alive connection survive the move, and at each step every proxy's metrics show
//!   its traffic on the expected revision.
//! - From a control plane configured by `weft migrate smcp` (an OpenShift Service Mesh 2
//!   ServiceMeshControlPlane): an upgrade and `weft upgrade --rollback`, without a failed
//!   request; then an upgrade whose first batch sees errors begin is rolled back.

mod common;

use common::up::{Up, wait};

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Three services: loadgen (no application: hey calls its sidecar's egress) calls
/// frontend, which calls backend; every proxy labelled with the `prod-stable` tag.
fn mesh(namespace: &str, trust_domain: &str, base: &str, rev_label: bool) -> String {
    // Their sidecars accept mutual TLS (what injection labels a pod with).
    let rev = if rev_label {
        ", security.istio.io/tlsMode: istio, istio.io/rev: prod-stable"
    } else {
        ", security.istio.io/tlsMode: istio"
    };
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: frontend, namespace: {namespace}}}
spec:
  hosts: [frontend.{namespace}.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: frontend}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend, namespace: {namespace}}}
spec:
  hosts: [backend.{namespace}.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: backend}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: frontend-v1
  namespace: {namespace}
  annotations: {{weft.io/command: "weft demo-app --listen 127.0.0.1:{base}1 --name frontend --call backend=http://{ip}.12:9080"}}
spec:
  address: {ip}.1
  serviceAccount: frontend
  labels: {{app: frontend{rev}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: backend-v1
  namespace: {namespace}
  annotations: {{weft.io/command: "weft demo-app --listen 127.0.0.1:{base}2 --name backend"}}
spec:
  address: {ip}.2
  serviceAccount: backend
  labels: {{app: backend{rev}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: loadgen-v1, namespace: {namespace}}}
spec:
  address: {ip}.3
  serviceAccount: loadgen
  labels: {{app: loadgen{rev}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: frontend, namespace: {namespace}}}
spec:
  workloadSelector: {{labels: {{app: frontend}}}}
  ingress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:{base}1
  egress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    bind: {ip}.12
    hosts: ["./*"]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: backend, namespace: {namespace}}}
spec:
  workloadSelector: {{labels: {{app: backend}}}}
  ingress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    defaultEndpoint: 127.0.0.1:{base}2
  egress: [{{hosts: ["./*"]}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: loadgen, namespace: {namespace}}}
spec:
  workloadSelector: {{labels: {{app: loadgen}}}}
  egress:
  - port: {{number: 9080, protocol: HTTP, name: http}}
    bind: {ip}.13
    hosts: ["./*"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: frontend, namespace: {namespace}}}
spec:
  selector: {{matchLabels: {{app: frontend}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["{trust_domain}/ns/{namespace}/sa/loadgen"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: backend, namespace: {namespace}}}
spec:
  selector: {{matchLabels: {{app: backend}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["{trust_domain}/ns/{namespace}/sa/frontend"]}}}}]
"#,
        ip = base_ip(base),
    )
}

/// `127.0.24` for ports `193..`, `127.0.25` for `194..`: each test its own addresses.
fn base_ip(base: &str) -> &'static str {
    if base == "1930" { "127.0.24" } else { "127.0.25" }
}

const STRICT: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
"#;

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl").args(["-s", "--max-time", "30"]).args(args).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// What a proxy's metrics say: the revision of the control plane serving it, and the
/// requests it has counted (`istio_requests_total`, every series).
fn scrape(stats: &str) -> (String, f64) {
    let text = curl(&[&format!("http://{stats}/stats/prometheus")]);
    let mut revision = String::new();
    let mut requests = 0.0;
    for line in text.lines() {
        if let Some(labels) = line.strip_prefix("weft_control_plane_info{") {
            let start = labels.find("revision=\"").map(|i| i + "revision=\"".len()).unwrap_or(0);
            revision = labels[start..].split('"').next().unwrap_or_default().to_owned();
        }
        if line.starts_with("istio_requests_total{") {
            requests += line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        }
    }
    (revision, requests)
}

/// Every proxy is served by `revision`'s control plane and counts new requests there.
fn traffic_on(revision: &str, proxies: &[String], output: &dyn Fn() -> String) {
    wait(&format!("every proxy on revision {revision}"), output, || proxies.iter().all(|p| scrape(p).0 == revision));
    let before: Vec<f64> = proxies.iter().map(|p| scrape(p).1).collect();
    wait(&format!("traffic through every proxy on revision {revision}"), output, || {
        proxies.iter().zip(&before).all(|(p, b)| {
            let (r, n) = scrape(p);
            assert_eq!(r, revision, "{p} left revision {revision}:\n{}", output());
            n > *b
        })
    });
}

/// hey at `rate` requests per second in all, through the loadgen sidecar to frontend.
fn hey(url: &str, seconds: u32, rate: u32) -> Child {
    let workers = 6;
    Command::new("hey")
        .args(["-z", &format!("{seconds}s"), "-c", &workers.to_string(), "-q", &(rate / workers).to_string()])
        .args(["-host", "frontend", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("hey: {e} (scripts/test installs it)"))
}

/// hey's summary: every request answered 200, none failed.
fn no_failed_request(hey: Child) -> u64 {
    let out = hey.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let codes = text.split("Status code distribution:").nth(1).unwrap_or_default();
    let counts: Vec<(&str, u64)> = codes
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let code = l.strip_prefix('[')?.split(']').next()?;
            let n = l.split(']').nth(1)?.split_whitespace().next()?.parse().ok()?;
            Some((code, n))
        })
        .collect();
    assert!(!text.contains("Error distribution"), "requests failed:\n{text}");
    assert!(counts.len() == 1 && counts[0].0 == "200" && counts[0].1 > 0, "not every answer was 200:\n{text}");
    counts[0].1
}

#[test]
fn a_canary_upgrade_and_a_tag_flip_under_traffic_fail_no_request() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(config.join("mesh.yaml"), mesh("default", "cluster.local", "1930", true))
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(config.join("strict.yaml"), STRICT).unwrap_or_else(|e| panic!("{e}"));
    let tag = |revision: &str| common::up::tag(&config, "prod-stable", revision);
    tag("1-0-0");
    let up = Up::start(dir.path(), &config, "127.0.4.1");
    let output = || up.output();
    assert!(output().contains("revision 1-0-0: xDS 127.0.4.1:15110"), "{}", output());
    let url = "http://127.0.24.13:9080/";
    wait("loadgen → frontend → backend", &output, || {
        curl(&["-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: frontend", url]) == "200"
    });
    let proxies: Vec<String> = (1..=3).map(|i| format!("127.0.24.{i}:15020")).collect();

    let load = hey(url, 45, 300);
    traffic_on("1-0-0", &proxies, &output);

    // The canary upgrade: two batches, each checked before the next.
    let out = up.upgrade(&["--to", "2-0-0", "--batch-size", "2", "--pause", "3s", "--grace", "2s"]);
    assert!(out.status.success(), "{}", output());
    let said = common::stdout(&out);
    for step in [
        "the control plane of revision 2-0-0 started, and is ready",
        "error rate before the upgrade: 0.00%",
        "batch 1/2: moving",
        "batch 1/2 healthy (error rate 0.00%)",
        "batch 2/2 healthy (error rate 0.00%)",
        "tag prod-stable → revision 2-0-0",
        "every proxy follows revision 2-0-0; revision 1-0-0 stops in 2s once nothing follows it",
    ] {
        assert!(said.contains(step), "{step:?} missing:\n{said}");
    }
    traffic_on("2-0-0", &proxies, &output);
    assert!(std::fs::read_to_string(config.join("tag-prod-stable.yaml")).is_ok_and(|t| t.contains("name: 2-0-0")));
    wait("1-0-0 to retire", &output, || output().contains("control plane 1-0-0 stopped"));
    assert_eq!(curl(&["-o", "/dev/null", "-w", "%{http_code}", "http://127.0.4.1:15114/ready"]), "000");

    // A tag flip moves everyone back (1-0-0 starts again), while a request is in flight
    // and its connection is kept alive for the next one.
    let in_flight = Command::new("curl")
        .args(["-s", "--max-time", "60", "-o", "/dev/null", "-o", "/dev/null"])
        .args(["-w", "%{http_code}:%{num_connects} ", "-H", "Host: frontend"])
        .args([&format!("{url}delay/10000"), url])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(500));
    tag("1-0-0");
    for p in ["frontend-v1", "backend-v1", "loadgen-v1"] {
        wait("the tag flip", &output, || output().contains(&format!("{p} moves from revision 2-0-0 to 1-0-0")));
    }
    let moved = output();
    let answers = in_flight.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    // Both answered, over one connection: the sidecars moved while the request waited.
    assert_eq!(String::from_utf8_lossy(&answers.stdout), "200:1 200:0 ", "{moved}");
    assert!(!moved.contains("exited"), "{moved}");
    traffic_on("1-0-0", &proxies, &output);

    let answered = no_failed_request(load);
    println!("{answered} requests, all answered 200");
    up.stop();
}

#[test]
fn an_upgrade_of_a_mesh_migrated_from_openshift_service_mesh_2_rolls_back_on_errors() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap_or_else(|e| panic!("{e}"));
    // The Istio resource (trust domain prod.example.com, discovery selectors from the
    // member roll, ...) and the STRICT PeerAuthentication, from a 2.6 control plane.
    let smcp = common::workspace_root().join("crates/cli/tests/migrate/ready.yaml");
    let migrated = config.join("istio.yaml");
    let out = common::run(&["migrate", "smcp", &smcp.to_string_lossy(), "-o", &migrated.to_string_lossy()]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    // The member namespace and the control plane's, labelled as the migration says.
    let namespaces = "apiVersion: v1\nkind: Namespace\nmetadata: {name: bookinfo, labels: {istio-discovery: default}}\n---\n\
        apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system, labels: {istio-discovery: default}}\n";
    std::fs::write(config.join("namespaces.yaml"), namespaces).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(config.join("mesh.yaml"), mesh("bookinfo", "prod.example.com", "1940", false))
        .unwrap_or_else(|e| panic!("{e}"));
    let up = Up::start(dir.path(), &config, "127.0.5.1");
    let output = || up.output();
    assert!(output().contains("meshConfig of the Istio resource"), "{}", output());
    let url = "http://127.0.25.13:9080/";
    wait("loadgen → frontend → backend", &output, || {
        curl(&["-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: frontend", url]) == "200"
    });
    // The identities are in the migrated trust domain.
    let answer = curl(&["-H", "Host: frontend", url]);
    assert!(answer.contains("spiffe://prod.example.com/ns/bookinfo/sa/loadgen"), "{answer}");
    let proxies: Vec<String> = (1..=3).map(|i| format!("127.0.25.{i}:15020")).collect();

    // Upgrade, then roll back with one command, under traffic: no request fails.
    let load = hey(url, 30, 200);
    traffic_on("default", &proxies, &output);
    let out = up.upgrade(&["--to", "default-v1-24-3", "--batch-size", "2", "--pause", "2s", "--grace", "60s"]);
    assert!(out.status.success(), "{}", output());
    assert!(common::stdout(&out).contains("tag default → revision default-v1-24-3"), "{}", common::stdout(&out));
    traffic_on("default-v1-24-3", &proxies, &output);
    let out = up.upgrade(&["--rollback"]);
    assert!(out.status.success(), "{}", output());
    assert!(output().contains("rolling back the upgrade to default-v1-24-3"), "{}", output());
    traffic_on("default", &proxies, &output);
    let answered = no_failed_request(load);
    println!("{answered} requests, all answered 200");

    // An upgrade whose first batch sees errors begin (a fault on backend) is moved back,
    // and nothing else moves.
    let load = hey(url, 25, 100);
    let out_path = dir.path().join("upgrade.out");
    let file = std::fs::File::create(&out_path).unwrap_or_else(|e| panic!("{e}"));
    let upgrade = common::weft()
        .args(["upgrade", "--api", &up.api, "--to", "default-v1-25-0", "--batch-size", "1", "--pause", "5s"])
        .stdout(Stdio::from(file))
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let said = || std::fs::read_to_string(&out_path).unwrap_or_default();
    wait("the first batch", &said, || said().contains("batch 1/3: moving frontend-v1"));
    let fault = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: backend, namespace: bookinfo}\n\
        spec:\n  hosts: [backend]\n  http:\n  - fault: {abort: {httpStatus: 503, percentage: {value: 50}}}\n    route: [{destination: {host: backend}}]\n";
    std::fs::write(config.join("fault.yaml"), fault).unwrap_or_else(|e| panic!("{e}"));
    let out = upgrade.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success(), "{}", said());
    assert!(said().contains("batch 1/3 degraded: error rate"), "{}", said());
    assert!(!said().contains("batch 2/3"), "{}", said());
    let _ = load.wait_with_output();
    for p in &proxies {
        assert_eq!(scrape(p).0, "default", "{p}:\n{}", said());
    }
    wait("default-v1-25-0 to stop", &output, || output().contains("control plane default-v1-25-0 stopped"));
    up.stop();
}
