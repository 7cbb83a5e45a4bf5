//! Transparent capture, as Istio sidecars run in pods: iptables rules (Istio's shape:
//! outbound to 15001, inbound to 15006, the proxy's own uid excluded) send an
//! unmodified application's traffic through its sidecar. Two network namespaces joined
//! by a veth pair stand in for two pods; the test creates them, never touches the
//! host's own rules, and removes everything at the end.
//!
//! Needs root, `ip` and `iptables`; `scripts/test` installs iptables. Under `CI=true` a
//! missing capability fails the test instead of skipping it.

mod common;

use common::mesh::Dataplane;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The uid the sidecars run as; iptables lets its traffic pass uncaptured.
const PROXY_UID: &str = "1337";

struct Pods {
    names: [String; 2],
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Pods {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if std::env::var_os("WEFT_KEEP_LOGS").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")));
            eprintln!("logs kept in {}", dir.keep().display());
        }
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Pods {
    /// Two namespaces, `a` at 10.66.0.1 and `b` at 10.66.0.2, joined by a veth pair.
    fn create(kind: Dataplane) -> Pods {
        let id = std::process::id();
        let k = if kind == Dataplane::Envoy { "e" } else { "w" };
        let names = [format!("weft-cap-{id}{k}-a"), format!("weft-cap-{id}{k}-b")];
        let pods = Pods { names, children: Vec::new(), dir: tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")) };
        let [a, b] = &pods.names;
        for ns in [a, b] {
            run(&["ip", "netns", "add", ns]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let (va, vb) = (format!("wa{id}{k}"), format!("wb{id}{k}"));
        run(&["ip", "link", "add", &va, "netns", a, "type", "veth", "peer", "name", &vb, "netns", b]);
        for (ns, dev, ip) in [(a, &va, "10.66.0.1/24"), (b, &vb, "10.66.0.2/24")] {
            run(&["ip", "-n", ns, "addr", "add", ip, "dev", dev]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        pods
    }

    /// Istio's capture rules in one namespace: everything outbound to 15001 except the
    /// proxy's own uid and localhost; everything inbound to 15006 except the control
    /// plane's ports.
    fn capture(&self, ns: &str) {
        let rules: &[&[&str]] = &[
            &["-N", "WEFT_REDIRECT"],
            &["-A", "WEFT_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001"],
            &["-N", "WEFT_IN_REDIRECT"],
            &["-A", "WEFT_IN_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15006"],
            &["-N", "WEFT_OUTPUT"],
            &["-A", "OUTPUT", "-p", "tcp", "-j", "WEFT_OUTPUT"],
            &["-A", "WEFT_OUTPUT", "-m", "owner", "--uid-owner", PROXY_UID, "-j", "RETURN"],
            &["-A", "WEFT_OUTPUT", "-d", "127.0.0.1/32", "-j", "RETURN"],
            &["-A", "WEFT_OUTPUT", "-j", "WEFT_REDIRECT"],
            &["-N", "WEFT_INBOUND"],
            &["-A", "PREROUTING", "-p", "tcp", "-j", "WEFT_INBOUND"],
            &["-A", "WEFT_INBOUND", "-p", "tcp", "--dport", "15010", "-j", "RETURN"],
            &["-A", "WEFT_INBOUND", "-p", "tcp", "--dport", "15014", "-j", "RETURN"],
            &["-A", "WEFT_INBOUND", "-p", "tcp", "-j", "WEFT_IN_REDIRECT"],
        ];
        for rule in rules {
            let mut args = vec!["ip", "netns", "exec", ns, "iptables", "-t", "nat"];
            args.extend_from_slice(rule);
            run(&args);
        }
    }

    fn log(&self, name: &str) -> Stdio {
        std::fs::File::create(self.dir.path().join(format!("{name}.log")))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null())
    }

    fn read_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Starts `args` in namespace `ns`, optionally as the proxy's uid.
    fn spawn(&mut self, ns: &str, name: &str, as_proxy: bool, args: &[&str]) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        if as_proxy {
            cmd.args(["setpriv", "--reuid", PROXY_UID, "--regid", PROXY_UID, "--clear-groups"]);
        }
        let child = cmd
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(self.log(name))
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        self.children.push(child);
    }

    /// curl inside a namespace: (status, body).
    fn curl(&self, ns: &str, args: &[&str]) -> (u16, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-s", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("curl: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    fn wait(&self, what: &str, mut ready: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < common::mesh::STARTUP {
            if ready() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "timed out waiting for {what}\n--- control plane:\n{}\n--- client sidecar:\n{}\n--- server sidecar:\n{}",
            self.read_log("control-plane"),
            self.read_log("client-sidecar"),
            self.read_log("server-sidecar")
        );
    }
}

const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: server}
spec:
  hosts: [server.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: server}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: server-1}
spec: {address: 10.66.0.2, labels: {app: server}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: client-1}
spec: {address: 10.66.0.1, labels: {app: client}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: server}
spec:
  hosts: [server]
  http:
  - headers: {request: {set: {x-captured: "yes"}}}
    route: [{destination: {host: server}}]
"#;

fn weft() -> &'static str {
    env!("CARGO_BIN_EXE_weft")
}

fn echo_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/echo_server.py")
}

/// An Envoy bootstrap for a captured sidecar: only the node and the control plane.
fn envoy_bootstrap(dir: &Path, node: &str, app: &str) -> String {
    let path = dir.join(format!("{app}-envoy.yaml"));
    let yaml = format!(
        r#"node:
  id: {node}
  cluster: {app}.default
  metadata: {{NAMESPACE: default, LABELS: {{app: {app}}}, INTERCEPTION_MODE: REDIRECT}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 15000}}}}
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds-grpc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 10.66.0.1, port_value: 15010}}}}}}}}]}}]
"#
    );
    std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("{e}"));
    path.to_string_lossy().into_owned()
}

#[test]
fn envoy_iptables_capture_sends_an_unchanged_application_through_both_sidecars() {
    capture_scenario(Dataplane::Envoy);
}

#[test]
fn weft_iptables_capture_sends_an_unchanged_application_through_both_sidecars() {
    capture_scenario(Dataplane::Weft);
}

fn capture_scenario(kind: Dataplane) {
    if !common::capture_capable() {
        return;
    }
    let mut pods = Pods::create(kind);
    let [a, b] = pods.names.clone();
    pods.capture(&a);
    pods.capture(&b);
    let config = pods.dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(config.join("mesh.yaml"), CONFIG).unwrap_or_else(|e| panic!("{e}"));
    let config = config.to_string_lossy().into_owned();

    pods.spawn(
        &a,
        "control-plane",
        false,
        &[
            weft(),
            "control-plane",
            "-f",
            &config,
            "--xds-address",
            "10.66.0.1:15010",
            "--debug-address",
            "10.66.0.1:15014",
        ],
    );
    let script = echo_script().to_string_lossy().into_owned();
    pods.spawn(
        &b,
        "server-app",
        false,
        &["python3", &script, "--address", "0.0.0.0", "--port", "9080", "--name", "server-1"],
    );
    pods.spawn(
        &b,
        "outside-app",
        false,
        &["python3", &script, "--address", "0.0.0.0", "--port", "9999", "--name", "outside"],
    );
    for (ns, name, ip, app) in
        [(&a, "client-sidecar", "10.66.0.1", "client"), (&b, "server-sidecar", "10.66.0.2", "server")]
    {
        let node = format!("sidecar~{ip}~{app}-1.default~default.svc.cluster.local");
        let label = format!("app={app}");
        if kind == Dataplane::Envoy {
            let bootstrap = envoy_bootstrap(pods.dir.path(), &node, app);
            let envoy = common::mesh::envoy_binary().to_string_lossy().into_owned();
            pods.spawn(ns, name, true, &[&envoy, "-c", &bootstrap, "--use-dynamic-base-id", "--concurrency", "1"]);
            continue;
        }
        pods.spawn(
            ns,
            name,
            true,
            &[
                weft(),
                "proxy",
                "--xds-address",
                "10.66.0.1:15010",
                "--node-id",
                &node,
                "--label",
                &label,
                "--interception-mode",
                "REDIRECT",
                "--admin-address",
                "127.0.0.1:15000",
                "--concurrency",
                "1",
            ],
        );
    }
    for ns in [&a, &b] {
        pods.wait("the sidecars to be ready", || pods.curl(ns, &["http://127.0.0.1:15000/ready"]).0 == 200);
    }

    // The application calls the server's address as it would without a mesh; the
    // client sidecar routes it (the VirtualService's header shows), the server sidecar
    // receives it on 15006 and hands it to the application.
    let url = "http://10.66.0.2:9080/hello";
    pods.wait("captured traffic to flow", || pods.curl(&a, &["-H", "Host: server", url]).0 == 200);
    let (status, body) = pods.curl(&a, &["-H", "Host: server", url]);
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert_eq!((status, echoed["name"].as_str()), (200, Some("server-1")), "{body}");
    assert_eq!(echoed["headers"]["x-captured"], "yes", "the client sidecar's route did not apply: {body}");
    assert!(echoed["headers"]["x-request-id"].is_string(), "{body}");
    let inbound = pods.curl(&b, &["http://127.0.0.1:15000/stats?filter=inbound_9080.downstream_rq_total"]).1;
    let served: u64 = inbound.split(':').nth(1).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    assert!(served >= 1, "the server sidecar saw no inbound request: {inbound}");

    // A destination the mesh does not know passes through both sidecars unchanged.
    let (status, body) = pods.curl(&a, &["http://10.66.0.2:9999/elsewhere"]);
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert_eq!((status, echoed["name"].as_str()), (200, Some("outside")), "{body}");
    assert!(echoed["headers"]["x-captured"].is_null());
    let clusters = pods.curl(&a, &["http://127.0.0.1:15000/clusters"]).1;
    assert!(clusters.lines().any(|l| l == "PassthroughCluster::10.66.0.2:9999::cx_total::1"), "{clusters}");

    // REGISTRY_ONLY: unknown destinations are closed, services still reached.
    let registry_only = "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: client}\nspec:\n  workloadSelector: {labels: {app: client}}\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n";
    std::fs::write(Path::new(&config).join("mesh.yaml"), format!("{CONFIG}{registry_only}"))
        .unwrap_or_else(|e| panic!("{e}"));
    pods.wait("REGISTRY_ONLY to close unknown destinations", || {
        pods.curl(&a, &["http://10.66.0.2:9999/elsewhere"]).0 == 0
    });
    assert_eq!(pods.curl(&a, &["-H", "Host: server", url]).0, 200);
}
