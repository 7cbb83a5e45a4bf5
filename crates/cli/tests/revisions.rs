//! Control-plane revisions, as Istio's: a control plane started with `--revision 1-24-0`
//! serves only proxies whose `istio.io/rev` label names that revision, the default one
//! only proxies that name none; a proxy that reaches the wrong one is refused with the
//! reason, and `weft proxy-status` shows each proxy's revision.

mod common;

use common::mesh::Mesh;

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints: [{address: 127.34.1.1}]
"#;

/// The proxies a control plane serves, with the revision each asked for.
fn listed(mesh: &Mesh, debug: &str) -> Vec<(String, String)> {
    let syncz: serde_json::Value =
        serde_json::from_str(&mesh.get(&format!("{debug}/debug/syncz")).body).unwrap_or_default();
    syncz
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| (p["proxy"].as_str().unwrap_or("").to_owned(), p["revision"].as_str().unwrap_or("").to_owned()))
        .collect()
}

#[test]
fn each_revision_serves_its_own_proxies() {
    let b = 34;
    let mut mesh = Mesh::start(b, &[("mesh.yaml", CONFIG)]);
    // The canary revision beside the default control plane, on the same configuration.
    let canary_debug = mesh.second_control_plane("canary-control-plane", &["--revision", "1-24-0"]);

    // A proxy of the canary revision is served by the canary control plane...
    let node = |ip: &str, name: &str| format!("sidecar~{ip}~{name}.default~default.svc.cluster.local");
    let canary_xds = format!("127.{b}.0.2:15010");
    mesh.weft_proxy_with(
        "on-canary",
        &node(&format!("127.{b}.2.1"), "on-canary"),
        "default",
        &[("app", "a"), ("istio.io/rev", "1-24-0")],
        &format!("127.{b}.2.1"),
        "delta",
        &["--xds-address", &canary_xds],
    );
    // ...and a proxy without a revision by the default one.
    mesh.weft_proxy(
        "on-default",
        &node(&format!("127.{b}.2.2"), "on-default"),
        "default",
        &[("app", "b")],
        &format!("127.{b}.2.2"),
        "delta",
    );

    let default_debug = format!("http://127.{b}.0.1:15014");
    mesh.wait_until("each proxy on its control plane", || {
        listed(&mesh, &canary_debug).len() == 1 && listed(&mesh, &default_debug).len() == 1
    });
    assert_eq!(listed(&mesh, &canary_debug), [(node(&format!("127.{b}.2.1"), "on-canary"), "1-24-0".to_owned())]);
    assert_eq!(listed(&mesh, &default_debug), [(node(&format!("127.{b}.2.2"), "on-default"), String::new())]);

    // weft proxy-status names the revision.
    let status = common::run(&["proxy-status", "--control-plane", &format!("127.{b}.0.2:15014")]);
    let text = common::stdout(&status);
    let row = text.lines().find(|l| l.contains("on-canary")).unwrap_or_else(|| panic!("{text}"));
    assert!(text.lines().next().is_some_and(|h| h.contains("REVISION")), "{text}");
    assert!(row.trim_end().ends_with("1-24-0"), "{row}");

    // A canary proxy that reaches the default control plane is refused, with the reason.
    let wrong = node(&format!("127.{b}.2.3"), "wrong");
    mesh.refused_proxy("wrong", &wrong, "default", &[("istio.io/rev", "1-24-0")], &format!("127.{b}.2.3"), &[]);
    mesh.wait_until("the refusal", || {
        let log = mesh.log("wrong");
        log.contains("belongs to revision \\\"1-24-0\\\"") || log.contains("belongs to revision \"1-24-0\"")
    });
    assert_ne!(mesh.get(&format!("http://127.{b}.2.3:15000/ready")).status, 200);
    assert_eq!(listed(&mesh, &default_debug).len(), 1, "the refused proxy is not served");
}

fn weft(args: &[&str]) -> String {
    let out = common::run(args);
    assert!(out.status.success(), "{args:?}: {}", common::stderr(&out));
    common::stdout(&out)
}

/// `weft tag`: a stable name for a revision. Workloads labelled with the tag belong to
/// the revision it points to; re-pointing it moves them (the old revision's control plane
/// lets them go, saying where they belong now); removing it leaves them to no one.
#[test]
fn a_tag_moves_the_workloads_that_use_it() {
    let b = 33;
    let mut mesh =
        Mesh::start_with(b, &[("mesh.yaml", &CONFIG.replace("127.34.", "127.33."))], &["--revision", "1-23-0"]);
    let dir = mesh.config_path().to_string_lossy().into_owned();
    let new_debug = mesh.second_control_plane("canary-control-plane", &["--revision", "1-24-0"]);
    let old_debug = format!("http://127.{b}.0.1:15014");

    assert!(
        weft(&["tag", "set", "prod-stable", "--revision", "1-23-0", "-f", &dir])
            .contains("prod-stable → revision 1-23-0")
    );
    let node = format!("sidecar~127.{b}.2.1~stable.default~default.svc.cluster.local");
    let labels = [("app", "stable"), ("istio.io/rev", "prod-stable")];
    mesh.weft_proxy("stable", &node, "default", &labels, &format!("127.{b}.2.1"), "delta");
    assert_eq!(listed(&mesh, &old_debug), [(node.clone(), "prod-stable".to_owned())]);
    let list = weft(&["tag", "list", "-f", &dir]);
    assert!(list.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["prod-stable", "1-23-0"]), "{list}");

    // Re-pointed: the old revision lets the proxy go, and says where it belongs.
    weft(&["tag", "set", "prod-stable", "--revision", "1-24-0", "-f", &dir]);
    mesh.wait_until("the old revision to let the proxy go", || listed(&mesh, &old_debug).is_empty());
    mesh.wait_until("the proxy to hear why", || {
        let log = mesh.log("stable");
        log.contains("1-24-0") && log.contains("prod-stable")
    });
    // The new revision takes it.
    let moved = format!("sidecar~127.{b}.2.2~stable.default~default.svc.cluster.local");
    mesh.weft_proxy_with(
        "stable-moved",
        &moved,
        "default",
        &labels,
        &format!("127.{b}.2.2"),
        "delta",
        &["--xds-address", &format!("127.{b}.0.2:15010")],
    );
    assert_eq!(listed(&mesh, &new_debug), [(moved, "prod-stable".to_owned())]);

    // Removed: nobody serves the tag any more.
    weft(&["tag", "remove", "prod-stable", "-f", &dir]);
    mesh.wait_until("the tag's proxies to be let go", || listed(&mesh, &new_debug).is_empty());
    assert!(!weft(&["tag", "list", "-f", &dir]).contains("prod-stable"));
    let missing = common::run(&["tag", "remove", "prod-stable", "-f", &dir]);
    assert!(!missing.status.success());
    let bad = common::run(&["tag", "set", "prod.stable", "--revision", "1-24-0", "-f", &dir]);
    assert!(!bad.status.success() && common::stderr(&bad).contains("not a revision name"), "{}", common::stderr(&bad));
}

/// Two revisions share the root of trust (one `--state-dir`, one CA): a workload on the
/// default revision calls one on the canary over mutual TLS, STRICT, each with the
/// certificate its own control plane issued.
#[test]
fn workloads_on_two_revisions_talk_mutual_tls() {
    let b = 32;
    let yaml = format!(
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
kind: WorkloadEntry
metadata: {{name: server-v1}}
spec:
  address: 127.{b}.1.1
  serviceAccount: server
  labels: {{app: server, security.istio.io/tlsMode: istio, istio.io/rev: 1-24-0}}
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
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
"#
    );
    let state = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state_dir = state.path().to_string_lossy().into_owned();
    let mut mesh = Mesh::start_with(
        b,
        &[("mesh.yaml", &yaml)],
        &["--secure-address", &format!("127.{b}.0.1:15012"), "--state-dir", &state_dir],
    );
    let token = |workload: &str| format!("{state_dir}/tokens/default/{workload}.token");
    mesh.wait_until("the CA", || std::path::Path::new(&token("server-v1")).exists());
    // The canary revision, on the same state: the same CA.
    let secure = format!("127.{b}.0.2:15012");
    let canary_debug = mesh.second_control_plane(
        "canary-control-plane",
        &["--revision", "1-24-0", "--state-dir", &state_dir, "--secure-address", &secure],
    );

    mesh.backend("server-app", "127.0.0.1", 18000 + u16::from(b) * 10 + 1, 0);
    let root = format!("{state_dir}/ca/root-cert.pem");
    let server_token = token("server-v1");
    mesh.weft_proxy_with(
        "server-sidecar",
        &format!("sidecar~127.{b}.1.1~server-v1.default~default.svc.cluster.local"),
        "default",
        &[("app", "server"), ("security.istio.io/tlsMode", "istio"), ("istio.io/rev", "1-24-0")],
        &format!("127.{b}.1.1"),
        "delta",
        &[
            "--xds-address",
            &format!("127.{b}.0.2:15010"),
            "--ca-address",
            &format!("127.{b}.0.2:15012"),
            "--ca-root-cert",
            &root,
            "--token-file",
            &server_token,
            "--service-account",
            "server",
        ],
    );
    mesh.weft_sidecar(
        "client-sidecar",
        "default",
        "client-v1",
        "client",
        &format!("127.{b}.2.1"),
        &state_dir,
        "client-v1",
        &[],
    );
    assert_eq!(listed(&mesh, &canary_debug).len(), 1, "the server's sidecar is the canary's");

    let reply = mesh.curl(&[&format!("http://127.{b}.2.1:9080/"), "-H", "host: server"]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let xfcc = reply.json()["headers"]["x-forwarded-client-cert"].as_str().unwrap_or("").to_owned();
    assert!(xfcc.starts_with("By=spiffe://cluster.local/ns/default/sa/server"), "{xfcc}");
    assert!(xfcc.contains("URI=spiffe://cluster.local/ns/default/sa/client"), "{xfcc}");
    // STRICT: plaintext to the canary workload is refused.
    assert_eq!(mesh.get(&format!("http://127.{b}.1.1:9080/")).status, 0);
}

/// Several control planes in one mesh, one per tenant: each sees only the namespaces its
/// meshConfig `discoverySelectors` pick (their configuration and their proxies), refuses
/// the other tenant's proxies, and lets a proxy go when its namespace stops being picked.
#[test]
fn tenants_control_planes_see_only_their_namespaces() {
    let b = 31;
    let config = format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: a, labels: {{tenant: a}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: b, labels: {{tenant: b}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc-a, namespace: a}}
spec:
  hosts: [svc-a.a.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.{b}.1.1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc-b, namespace: b}}
spec:
  hosts: [svc-b.b.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.{b}.1.2}}]
"#
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mesh_config = |tenant: &str| {
        let path = dir.path().join(format!("tenant-{tenant}.yaml"));
        std::fs::write(&path, format!("discoverySelectors:\n- matchLabels: {{tenant: {tenant}}}\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        path.to_string_lossy().into_owned()
    };
    let (config_a, config_b) = (mesh_config("a"), mesh_config("b"));
    let mut mesh = Mesh::start_with(b, &[("mesh.yaml", &config)], &["--mesh-config", &config_a]);
    let debug_b = mesh.second_control_plane("tenant-b-control-plane", &["--mesh-config", &config_b]);
    let debug_a = format!("http://127.{b}.0.1:15014");

    let node = |ns: &str, n: u8| format!("sidecar~127.{b}.2.{n}~w{n}.{ns}~{ns}.svc.cluster.local");
    mesh.weft_proxy("in-a", &node("a", 1), "a", &[("app", "w")], &format!("127.{b}.2.1"), "delta");
    mesh.weft_proxy_with(
        "in-b",
        &node("b", 2),
        "b",
        &[("app", "w")],
        &format!("127.{b}.2.2"),
        "delta",
        &["--xds-address", &format!("127.{b}.0.2:15010")],
    );
    // Each sees its own services only.
    let clusters = |debug: &str, proxy: &str| -> Vec<String> {
        let dump: serde_json::Value =
            serde_json::from_str(&mesh.get(&format!("{debug}/debug/config_dump?proxyID={proxy}")).body)
                .unwrap_or_default();
        dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["dynamic_active_clusters"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["cluster"]["name"].as_str().map(str::to_owned))
            .collect()
    };
    let seen_a = clusters(&debug_a, &node("a", 1));
    assert!(seen_a.contains(&"outbound|9080||svc-a.a.svc.cluster.local".to_owned()), "{seen_a:?}");
    assert!(!seen_a.iter().any(|c| c.contains("svc-b")), "{seen_a:?}");
    let seen_b = clusters(&debug_b, &node("b", 2));
    assert!(seen_b.contains(&"outbound|9080||svc-b.b.svc.cluster.local".to_owned()), "{seen_b:?}");
    assert!(!seen_b.iter().any(|c| c.contains("svc-a")), "{seen_b:?}");

    // Tenant b's proxy at tenant a's control plane is refused.
    mesh.refused_proxy("stray", &node("b", 3), "b", &[("app", "w")], &format!("127.{b}.2.3"), &[]);
    mesh.wait_until("the refusal", || mesh.log("stray").contains("not among this control plane's discoverySelectors"));
    assert_eq!(listed(&mesh, &debug_a).len(), 1);

    // Namespace a moves to tenant b: tenant a's control plane lets its proxy go.
    mesh.write_config("mesh.yaml", &config.replace("name: a, labels: {tenant: a}", "name: a, labels: {tenant: b}"));
    mesh.wait_until("tenant a to let the proxy go", || listed(&mesh, &debug_a).is_empty());
}
