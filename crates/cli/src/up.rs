//! `weft up`: a whole mesh on one machine from a directory of Istio YAML (by default the
//! bundled Bookinfo example): the control plane with its CA, each WorkloadEntry's
//! application (from its `weft.io/command` annotation) and sidecar, and one gateway
//! proxy per Gateway selector. It shows what started and where, supervises the
//! processes (a crashed one is reported and restarted), and on Ctrl-C or SIGTERM stops
//! everything, letting the proxies drain.
//!
//! By default each sidecar is configured as Istio configures a VM's without iptables
//! (Sidecar `captureMode: NONE`, explicit listeners). With `--capture iptables` (root,
//! Linux) each workload runs in a network namespace of its own behind iptables rules
//! that capture its traffic, as in a pod (see [`crate::netns`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};
use weft_api::resource::Spec;

/// The annotation naming a workload's application command (`weft ...` runs this binary).
pub const COMMAND_ANNOTATION: &str = "weft.io/command";
/// How long processes may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long stopping processes may take before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

const EXAMPLE: &[(&str, &str)] = &[
    ("services.yaml", include_str!("../../../examples/bookinfo/services.yaml")),
    ("workloads.yaml", include_str!("../../../examples/bookinfo/workloads.yaml")),
    ("sidecars.yaml", include_str!("../../../examples/bookinfo/sidecars.yaml")),
    ("networking.yaml", include_str!("../../../examples/bookinfo/networking.yaml")),
    ("reviews.yaml", include_str!("../../../examples/bookinfo/reviews.yaml")),
];

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Istio YAML to run: a file or directory (default: the bundled Bookinfo example).
    #[arg(short = 'f', long = "config")]
    config: Option<PathBuf>,
    /// Where the CA, tokens and logs are kept (default: $XDG_DATA_HOME/weft or ~/.local/share/weft).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The control plane's address (ports 15010, 15012, 15014); with `--capture
    /// iptables`, where the workloads' namespaces reach the host (169.254.78.1).
    #[arg(long, default_value = "127.0.0.1")]
    control_plane_ip: IpAddr,
    /// How traffic reaches the sidecars: `none`, explicit listeners (Istio's Sidecar
    /// `captureMode: NONE`); `iptables`, each workload in its own network namespace with
    /// Istio's capture rules, its application unchanged (needs root).
    #[arg(long, value_enum, default_value = "none")]
    capture: Capture,
}

/// `--capture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Capture {
    /// Explicit listeners.
    None,
    /// iptables rules in a network namespace per workload.
    Iptables,
}

/// One process `weft up` runs.
struct Process {
    /// `control-plane`, `sidecar reviews-v1`, `app reviews-v1`, `gateway ...`.
    label: String,
    program: PathBuf,
    args: Vec<String>,
    /// Where its admin `/ready` is, for proxies.
    ready_url: Option<String>,
    child: Option<Child>,
    restarts: u32,
    /// When a crashed process is due to be started again (back-off).
    restart_at: Option<tokio::time::Instant>,
}

struct Workload {
    namespace: String,
    name: String,
    address: String,
    /// The first port of a service that selects it (for the summary).
    port: Option<u32>,
    /// Its `istio.io/rev` label: the revision (or tag) whose control plane serves it.
    rev_label: Option<String>,
    labels: BTreeMap<String, String>,
    service_account: String,
    command: Option<String>,
}

fn default_state_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir)
        .join("weft")
}

pub fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let state = args.state_dir.clone().unwrap_or_else(default_state_dir);
    std::fs::create_dir_all(state.join("logs"))?;
    let config = match &args.config {
        Some(path) => path.clone(),
        None => {
            let dir = state.join("example/bookinfo");
            std::fs::create_dir_all(&dir)?;
            for (name, yaml) in EXAMPLE {
                std::fs::write(dir.join(name), yaml)?;
            }
            println!("Running the bundled Bookinfo example ({}).", dir.display());
            dir
        }
    };
    let parsed = weft_config::load(std::slice::from_ref(&config))?;
    let mut findings = parsed.diagnostics.clone();
    findings.extend(weft_analyze::analyze(&parsed.resources));
    if findings.iter().any(|d| d.is_error()) {
        for d in findings.iter().filter(|d| d.is_error()) {
            eprintln!("{} [{}] {d}", d.level, d.code);
        }
        eprintln!("error: the configuration is invalid; nothing was started");
        return Ok(ExitCode::FAILURE);
    }
    let mut workloads = Vec::new();
    let mut gateways: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for r in &parsed.resources {
        match &r.spec {
            Spec::WorkloadEntry(we) => workloads.push(Workload {
                namespace: r.namespace().to_owned(),
                name: r.name().to_owned(),
                address: we.address.clone().unwrap_or_default(),
                port: parsed.resources.iter().find_map(|s| match &s.spec {
                    Spec::ServiceEntry(se) if s.namespace() == r.namespace() => {
                        let selector = se.workload_selector.as_ref()?;
                        let selects = !selector.labels.is_empty()
                            && selector.labels.iter().all(|(k, v)| we.labels.get(k) == Some(v));
                        selects.then(|| se.ports.first().and_then(|p| p.number)).flatten()
                    }
                    _ => None,
                }),
                labels: we.labels.clone(),
                // The workload's own label, else its namespace's (as Istio's injection).
                rev_label: we.labels.get("istio.io/rev").cloned().or_else(|| {
                    parsed.resources.iter().find_map(|n| match n.spec {
                        Spec::Namespace if n.name() == r.namespace() => {
                            n.meta.labels.as_ref().and_then(|l| l.get("istio.io/rev")).cloned()
                        }
                        _ => None,
                    })
                }),
                service_account: we
                    .service_account
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "default".into()),
                command: r.meta.annotations.as_ref().and_then(|a| a.get(COMMAND_ANNOTATION)).cloned(),
            }),
            Spec::Gateway(gw) => {
                let selector = gw.selector.clone();
                let key = selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
                gateways.entry(format!("{}/{key}", r.namespace())).or_insert(selector);
            }
            _ => {}
        }
    }
    let (ip, topology) = match args.capture {
        Capture::None => (args.control_plane_ip, None),
        Capture::Iptables => {
            crate::netns::check_capable()?;
            let pairs: Vec<(String, String)> = workloads.iter().map(|w| (w.name.clone(), w.address.clone())).collect();
            let addresses = crate::netns::addresses(&pairs)?;
            let mut services: Vec<String> = parsed
                .resources
                .iter()
                .filter_map(|r| match &r.spec {
                    Spec::ServiceEntry(se) => Some(
                        se.hosts
                            .iter()
                            .map(|h| weft_controlplane::registry::resolve_host(h, r.namespace()))
                            .collect::<Vec<_>>(),
                    ),
                    _ => None,
                })
                .flatten()
                .collect();
            services.sort();
            services.dedup();
            let topology = crate::netns::Topology::create(&addresses, &services)?;
            println!(
                "✔ network namespaces   {} (one per workload, Istio's iptables capture rules), reached from this host",
                topology.namespaces.join(", ")
            );
            (IpAddr::V4(crate::netns::HOST_IP), Some(topology))
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let result = runtime.block_on(up(ip, &config, &state, workloads, gateways, topology.as_ref(), &parsed.resources));
    // Stopped processes first, then their namespaces.
    drop(runtime);
    drop(topology);
    result
}

fn exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("weft"))
}

impl Process {
    fn new(label: String, program: PathBuf, args: Vec<String>, ready_url: Option<String>) -> Process {
        Process { label, program, args, ready_url, child: None, restarts: 0, restart_at: None }
    }

    fn start(&mut self, logs: &Path) -> anyhow::Result<()> {
        let log = std::fs::File::create(logs.join(format!("{}.log", self.label.replace(['/', ' '], "-"))))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", self.label))?;
        self.child = Some(child);
        Ok(())
    }

    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}

async fn http_status(url: &str) -> u16 {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<hyper::body::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let Ok(uri) = url.parse() else { return 0 };
    match tokio::time::timeout(Duration::from_secs(2), client.get(uri)).await {
        Ok(Ok(r)) => r.status().as_u16(),
        _ => 0,
    }
}

async fn wait_ready(url: &str) -> bool {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if http_status(url).await == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn wait_file(path: &Path) -> bool {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn up(
    ip: IpAddr,
    config: &Path,
    state: &Path,
    workloads: Vec<Workload>,
    gateways: BTreeMap<String, BTreeMap<String, String>>,
    topology: Option<&crate::netns::Topology>,
    resources: &[weft_api::Resource],
) -> anyhow::Result<ExitCode> {
    let logs = state.join("logs");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut processes = Vec::new();
    let mut scrape_targets: Vec<String> = Vec::new();
    // One control plane per revision the workloads belong to (through their
    // istio.io/rev label and the revision tags), the default one first; they share the
    // state directory, so the CA and its root of trust.
    let mut planes: Vec<Plane> = vec![Plane::at(ip, 0, "default")];
    let mut revisions: Vec<String> =
        workloads.iter().map(|w| resolve_revision(resources, w.rev_label.as_deref())).collect();
    for r in &revisions {
        if !planes.iter().any(|p| p.revision == *r) {
            planes.push(Plane::at(ip, planes.len(), r));
        }
    }
    for plane in &planes {
        processes.push(plane.start(config, state, &logs).await?);
    }
    let (xds, secure) = (planes[0].xds.clone(), planes[0].secure.clone());

    let root = state.join("ca/root-cert.pem");
    let mut sidecars: Vec<usize> = Vec::new();
    for (i, w) in workloads.iter().enumerate() {
        let plane = planes.iter().find(|p| p.revision == revisions[i]).unwrap_or(&planes[0]);
        let (xds, secure) = (plane.xds.clone(), plane.secure.clone());
        if let Some(command) = &w.command {
            let mut words = command.split_whitespace().map(str::to_owned);
            let first = words.next().unwrap_or_default();
            let program = if first == "weft" { exe() } else { PathBuf::from(first) };
            let args: Vec<String> = words.collect();
            let (program, args) = match topology {
                Some(t) => t.command(i, false, &program.to_string_lossy(), &args),
                None => (program, args),
            };
            let mut app = Process::new(format!("app {}", w.name), program, args, None);
            app.start(&logs)?;
            processes.push(app);
        }
        let mut token = state.join("tokens").join(&w.namespace).join(format!("{}.token", w.name));
        if !wait_file(&token).await {
            anyhow::bail!("no bootstrap token for {} at {}", w.name, token.display());
        }
        let mut root = root.clone();
        if topology.is_some() {
            // A captured sidecar runs as its own uid: it gets copies it can read.
            (token, root) = proxy_readable(state, &w.name, &token, &root)?;
        }
        // Captured, the admin port stays inside the namespace; readiness is on 15020.
        let admin = if topology.is_some() { "127.0.0.1:15000".to_owned() } else { format!("{}:15000", w.address) };
        let ready = if topology.is_some() {
            format!("http://{}:15020/healthz/ready", w.address)
        } else {
            format!("http://{admin}/ready")
        };
        scrape_targets.push(format!("{}:15020", w.address));
        let mut args: Vec<String> = vec![
            "proxy".into(),
            "--xds-address".into(),
            xds.clone(),
            "--node-id".into(),
            format!("sidecar~{}~{}.{}~{}.svc.cluster.local", w.address, w.name, w.namespace, w.namespace),
            "--namespace".into(),
            w.namespace.clone(),
            "--workload-name".into(),
            w.name.clone(),
            "--service-account".into(),
            w.service_account.clone(),
            "--admin-address".into(),
            admin.clone(),
            "--stats-address".into(),
            format!("{}:15020", w.address),
            "--concurrency".into(),
            "1".into(),
            "--ca-address".into(),
            secure.clone(),
            "--ca-root-cert".into(),
            s(&root),
            "--token-file".into(),
            s(&token),
        ];
        for (k, v) in &w.labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        if let Some(rev) = &w.rev_label {
            args.extend(["--revision".to_owned(), rev.clone()]);
        }
        let (program, args) = match topology {
            Some(t) => {
                args.extend(["--interception-mode".to_owned(), "REDIRECT".to_owned()]);
                t.command(i, true, &exe().to_string_lossy(), &args)
            }
            None => (exe(), args),
        };
        let mut sidecar = Process::new(format!("sidecar {}", w.name), program, args, Some(ready));
        sidecar.start(&logs)?;
        sidecars.push(processes.len());
        processes.push(sidecar);
    }
    for (i, (key, selector)) in gateways.iter().enumerate() {
        let namespace = key.split('/').next().unwrap_or("default").to_owned();
        let (name, account) =
            weft_controlplane::ca::gateway_workload(selector).unwrap_or_else(|| ("gateway".into(), "default".into()));
        let admin = format!("127.0.9.{}:15000", i + 1);
        let stats = format!("127.0.9.{}:15020", i + 1);
        scrape_targets.push(stats.clone());
        // Gateways hold an identity too, so that they can call STRICT workloads.
        let token = state.join("tokens").join(&namespace).join(format!("{name}.token"));
        if !wait_file(&token).await {
            anyhow::bail!("no bootstrap token for gateway {name} at {}", token.display());
        }
        let mut args: Vec<String> = vec![
            "proxy".into(),
            "--xds-address".into(),
            xds.clone(),
            "--node-id".into(),
            format!("router~127.0.0.1~{name}.{namespace}~{namespace}.svc.cluster.local"),
            "--namespace".into(),
            namespace.clone(),
            "--workload-name".into(),
            name.clone(),
            "--admin-address".into(),
            admin.clone(),
            "--stats-address".into(),
            stats,
            "--concurrency".into(),
            "1".into(),
            "--service-account".into(),
            account,
            "--ca-address".into(),
            secure.clone(),
            "--ca-root-cert".into(),
            s(&root),
            "--token-file".into(),
            s(&token),
        ];
        for (k, v) in selector {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        let mut gw = Process::new(format!("gateway {name}"), exe(), args, Some(format!("http://{admin}/ready")));
        gw.start(&logs)?;
        processes.push(gw);
    }
    for p in &processes[planes.len()..] {
        let Some(url) = &p.ready_url else { continue };
        let ready = wait_ready(url).await;
        println!("{} {:<20} {}", if ready { "✔" } else { "✘" }, p.label, url.trim_end_matches("/ready"));
    }
    summary(&workloads, !gateways.is_empty(), topology.is_some());
    let prometheus = state.join("prometheus.yml");
    match std::fs::write(&prometheus, prometheus_config(&scrape_targets)) {
        Ok(()) => println!(
            "\nMetrics: every proxy serves Istio's metrics on :15020/stats/prometheus; a Prometheus configuration that scrapes them all is {}.",
            prometheus.display()
        ),
        Err(e) => eprintln!("cannot write {}: {e}", prometheus.display()),
    }
    println!("\nLogs: {}. Ctrl-C stops the mesh.", logs.display());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = 0u32;
    let config_paths = [config.to_path_buf()];
    let mut seen = weft_controlplane::server::fingerprint(&config_paths);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                tick += 1;
                // Every 2 s: a re-pointed revision tag moves its workloads, as re-injection
                // does in Kubernetes: the sidecar restarts against its new control plane.
                let changed = tick.is_multiple_of(4) && {
                    let now = weft_controlplane::server::fingerprint(&config_paths);
                    std::mem::replace(&mut seen, now) != seen
                };
                if changed && let Ok(now) = weft_config::load(&config_paths) {
                    for (i, w) in workloads.iter().enumerate() {
                        let revision = resolve_revision(&now.resources, w.rev_label.as_deref());
                        if revision == revisions[i] {
                            continue;
                        }
                        if !planes.iter().any(|p| p.revision == revision) {
                            let plane = Plane::at(ip, planes.len(), &revision);
                            processes.push(plane.start(config, state, &logs).await?);
                            planes.push(plane);
                        }
                        let Some(plane) = planes.iter().find(|p| p.revision == revision) else { continue };
                        let sidecar = &mut processes[sidecars[i]];
                        println!("↻ sidecar {} moves from revision {} to {revision} (its control plane {})", w.name, revisions[i], plane.xds);
                        sidecar.stop().await;
                        let from = revisions[i].clone();
                        let old = planes.iter().find(|p| p.revision == from).map(|p| (p.xds.clone(), p.secure.clone()));
                        if let Some((old_xds, old_secure)) = old {
                            for a in &mut sidecar.args {
                                if *a == old_xds {
                                    a.clone_from(&plane.xds);
                                } else if *a == old_secure {
                                    a.clone_from(&plane.secure);
                                }
                            }
                        }
                        sidecar.start(&logs)?;
                        revisions[i] = revision;
                    }
                }
                let now = tokio::time::Instant::now();
                for p in &mut processes {
                    let exited = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                    if let Some(status) = exited {
                        p.child = None;
                        p.restarts += 1;
                        // Back off: 1 s, 2 s, 4 s ... up to 30 s between restarts.
                        let delay = Duration::from_secs(1 << p.restarts.min(5)).min(Duration::from_secs(30));
                        println!("✘ {} exited ({status}); restarting in {delay:?} (restart {})", p.label, p.restarts);
                        p.restart_at = Some(now + delay);
                    }
                    if p.restart_at.is_some_and(|at| at <= now) {
                        p.restart_at = None;
                        p.start(&logs)?;
                    }
                }
            }
        }
    }
    println!("Stopping: proxies drain their in-flight requests.");
    // Proxies and applications first, the control plane last.
    for p in processes.iter_mut().rev() {
        p.stop().await;
    }
    println!("✔ stopped");
    Ok(ExitCode::SUCCESS)
}

/// One control plane `weft up` runs, for one revision: the default one on the usual
/// ports, the others 100 ports further each.
struct Plane {
    revision: String,
    xds: String,
    secure: String,
    debug: String,
}

impl Plane {
    fn at(ip: IpAddr, index: usize, revision: &str) -> Plane {
        let port = |p: usize| format!("{ip}:{}", p + 100 * index);
        Plane { revision: revision.to_owned(), xds: port(15010), secure: port(15012), debug: port(15014) }
    }

    async fn start(&self, config: &Path, state: &Path, logs: &Path) -> anyhow::Result<Process> {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let mut args: Vec<String> = [
            "control-plane",
            "-f",
            &s(config),
            "--xds-address",
            &self.xds,
            "--debug-address",
            &self.debug,
            "--secure-address",
            &self.secure,
            "--state-dir",
            &s(state),
        ]
        .map(str::to_owned)
        .to_vec();
        let label = if self.revision == "default" {
            "control-plane".to_owned()
        } else {
            args.extend(["--revision".to_owned(), self.revision.clone()]);
            format!("control-plane {}", self.revision)
        };
        let ready = format!("http://{}/ready", self.debug);
        let mut cp = Process::new(label.clone(), exe(), args, Some(ready.clone()));
        cp.start(logs)?;
        if !wait_ready(&ready).await {
            cp.stop().await;
            anyhow::bail!(
                "{label} did not become ready; see {}",
                logs.join(format!("{}.log", label.replace(' ', "-"))).display()
            );
        }
        println!(
            "✔ {:<20} revision {}: xDS {}, CA and secure xDS {}, debug http://{}",
            if self.revision == "default" {
                "control plane".to_owned()
            } else {
                format!("control plane {}", self.revision)
            },
            self.revision,
            self.xds,
            self.secure,
            self.debug
        );
        Ok(cp)
    }
}

/// The revision a workload's `istio.io/rev` label stands for: through the revision tag
/// of that name (an `IstioRevisionTag`), else the label itself; no label is `default`
/// (or what a `default` tag points to).
fn resolve_revision(resources: &[weft_api::Resource], label: Option<&str>) -> String {
    let asked = label.filter(|l| !l.is_empty()).unwrap_or("default");
    weft_controlplane::snapshot::resolve_revision(resources, asked).to_owned()
}

/// A Prometheus configuration that scrapes every proxy of the mesh, as Istio's
/// `kubernetes-pods` job scrapes sidecars: `/stats/prometheus` on 15020, every 5 s.
fn prometheus_config(targets: &[String]) -> String {
    let list = targets.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
    format!(
        "# Written by weft up: every proxy of the local mesh.\nglobal: {{scrape_interval: 5s}}\nscrape_configs:\n- job_name: weft-proxies\n  metrics_path: /stats/prometheus\n  static_configs:\n  - targets: [{list}]\n"
    )
}

/// Copies of a workload's token and the mesh root that the sidecar's uid can read.
fn proxy_readable(state: &Path, name: &str, token: &Path, root: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let dir = state.join("capture").join(name);
    std::fs::create_dir_all(&dir)?;
    let uid = Some(crate::netns::PROXY_UID);
    std::os::unix::fs::chown(&dir, uid, uid)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let mut out = Vec::new();
    for (from, file) in [(token, "token"), (root, "root-cert.pem")] {
        let to = dir.join(file);
        std::fs::copy(from, &to)?;
        std::os::unix::fs::chown(&to, uid, uid)?;
        out.push(to);
    }
    let root = out.pop().unwrap_or_default();
    let token = out.pop().unwrap_or_default();
    Ok((token, root))
}

fn summary(workloads: &[Workload], gateway: bool, captured: bool) {
    println!("\n{:<16} {:<14} {:<10} APP", "WORKLOAD", "ADDRESS", "VERSION");
    for w in workloads {
        println!(
            "{:<16} {:<14} {:<10} {}",
            w.name,
            w.address,
            w.labels.get("version").map_or("-", String::as_str),
            w.labels.get("app").map_or("-", String::as_str)
        );
    }
    if gateway {
        println!("\nTry:  curl http://127.0.0.1:8080/productpage");
    }
    if captured && let Some((w, port)) = workloads.iter().find_map(|w| w.port.map(|p| (w, p))) {
        println!(
            "\nTry:  curl http://{}:{port}/   ({}: its application is unchanged; iptables sends the request through its sidecar)",
            w.address, w.name
        );
    }
}
