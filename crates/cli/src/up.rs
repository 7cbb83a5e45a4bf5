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

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use serde_json::json;
use tokio::process::{Child, Command};
use weft_api::resource::Spec;

use crate::upgrade::{Fleet as _, State};

/// The annotation naming a workload's application command (`weft ...` runs this binary).
pub const COMMAND_ANNOTATION: &str = "weft.io/command";
/// How long processes may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long stopping processes may take before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a moved proxy may take to be in sync with its new control plane.
const MOVE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an old revision stays after an upgrade, unless the `Istio` resource says
/// (the sail operator's default).
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

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
    /// Where `weft up` serves its API, which `weft upgrade` calls (default: port 15080
    /// of the control planes' address).
    #[arg(long)]
    api_address: Option<SocketAddr>,
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
    let result = runtime.block_on(up(
        ip,
        &config,
        &state,
        workloads,
        gateways,
        topology.as_ref(),
        &parsed.resources,
        args.api_address.unwrap_or(SocketAddr::new(ip, 15080)),
    ));
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
}

/// Stops a process: SIGTERM (proxies drain), then SIGKILL after [`STOP_GRACE`].
async fn stop_child(mut child: Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    }
    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// One plain-HTTP request without a body: the status and the body, or none when there
/// is no answer within 5 s.
pub(crate) async fn http(method: hyper::Method, url: &str) -> Option<(u16, hyper::body::Bytes)> {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<hyper::body::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let request = hyper::Request::builder().method(method).uri(url).body(http_body_util::Empty::new()).ok()?;
    let exchange = async {
        let response = client.request(request).await.ok()?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.ok().flatten()
}

async fn http_status(url: &str) -> u16 {
    http(hyper::Method::GET, url).await.map_or(0, |(status, _)| status)
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

/// A proxy `weft up` runs: a sidecar or a gateway.
struct Proxy {
    /// The workload's name (`reviews-v1`).
    name: String,
    /// Its node id.
    id: String,
    /// Its process in [`Supervisor::processes`].
    process: usize,
    /// Its `istio.io/rev` label (none: the default revision, or what the `default` tag
    /// points to).
    rev_label: Option<String>,
    /// The revision the configuration gives it (through the tags), as last read.
    assigned: String,
    /// The revision whose control plane it follows now.
    revision: String,
    /// Its admin endpoint, where it is told to move; none when captured (its admin port
    /// is inside its network namespace), and then a move restarts it.
    admin: Option<String>,
    /// Where its metrics are served (`/stats/prometheus`).
    stats: String,
}

/// Everything `weft up` runs.
struct Supervisor {
    ip: IpAddr,
    config: PathBuf,
    state: PathBuf,
    logs: PathBuf,
    /// The `Istio` resource's meshConfig, for every control plane.
    mesh_config: Option<PathBuf>,
    processes: Vec<Process>,
    planes: Vec<Plane>,
    proxies: Vec<Proxy>,
    /// The revision tags of the configuration as last read: which revision each
    /// `istio.io/rev` label leads to.
    tags: Vec<weft_api::Resource>,
}

/// The revision tags among `resources`.
fn tags_of(resources: &[weft_api::Resource]) -> Vec<weft_api::Resource> {
    weft_controlplane::snapshot::revision_tags(resources).map(|(r, _)| r.clone()).collect()
}

/// The supervised mesh, shared by the supervision loop and a running upgrade (both on
/// one task: no borrow is held across an await).
struct Mesh(RefCell<Supervisor>);

/// What `weft up` reads from an `Istio` resource (sailoperator.io/v1), such as the one
/// `weft migrate smcp` writes: its meshConfig, and how long an old revision stays after
/// an upgrade.
fn istio_resource(resources: &[weft_api::Resource], state: &Path) -> anyhow::Result<(Option<PathBuf>, Duration)> {
    let istio = resources.iter().find_map(|r| match &r.spec {
        Spec::Other(value) if r.kind == "Istio" && r.api_version.starts_with("sailoperator.io/") => Some(value),
        _ => None,
    });
    let Some(istio) = istio else { return Ok((None, DEFAULT_GRACE)) };
    let grace = istio["spec"]["updateStrategy"]["inactiveRevisionDeletionGracePeriodSeconds"]
        .as_u64()
        .map_or(DEFAULT_GRACE, Duration::from_secs);
    let mesh = &istio["spec"]["values"]["meshConfig"];
    if mesh.is_null() {
        return Ok((None, grace));
    }
    let path = state.join("mesh-config.json");
    std::fs::write(&path, serde_json::to_string_pretty(mesh)?)?;
    Ok((Some(path), grace))
}

#[allow(clippy::too_many_arguments)]
async fn up(
    ip: IpAddr,
    config: &Path,
    state: &Path,
    workloads: Vec<Workload>,
    gateways: BTreeMap<String, BTreeMap<String, String>>,
    topology: Option<&crate::netns::Topology>,
    resources: &[weft_api::Resource],
    api: SocketAddr,
) -> anyhow::Result<ExitCode> {
    let logs = state.join("logs");
    let (mesh_config, grace) = istio_resource(resources, state)?;
    if let Some(path) = &mesh_config {
        println!("✔ {:<20} meshConfig of the Istio resource ({})", "mesh config", path.display());
    }
    let mesh = Mesh(RefCell::new(Supervisor {
        ip,
        config: config.to_path_buf(),
        state: state.to_path_buf(),
        logs: logs.clone(),
        mesh_config,
        processes: Vec::new(),
        planes: Vec::new(),
        proxies: Vec::new(),
        tags: tags_of(resources),
    }));
    let mut scrape_targets: Vec<String> = Vec::new();
    // One control plane per revision the workloads belong to (through their
    // istio.io/rev label and the revision tags), the default one first; they share the
    // state directory, so the CA and its root of trust.
    let revisions: Vec<String> =
        workloads.iter().map(|w| resolve_revision(resources, w.rev_label.as_deref())).collect();
    mesh.ensure_revision("default").await?;
    for r in &revisions {
        mesh.ensure_revision(r).await?;
    }
    let plane_of = |revision: &str| {
        let sup = mesh.0.borrow();
        let plane = sup.planes.iter().find(|p| p.revision == revision).unwrap_or(&sup.planes[0]);
        (plane.xds.clone(), plane.secure.clone())
    };
    let first_proxy = mesh.0.borrow().processes.len();

    let root = state.join("ca/root-cert.pem");
    for (i, w) in workloads.iter().enumerate() {
        let (xds, secure) = plane_of(&revisions[i]);
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
            mesh.0.borrow_mut().processes.push(app);
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
        let stats = format!("{}:15020", w.address);
        scrape_targets.push(stats.clone());
        let id = format!("sidecar~{}~{}.{}~{}.svc.cluster.local", w.address, w.name, w.namespace, w.namespace);
        let mut args = proxy_args(ProxyArgs {
            xds: &xds,
            secure: &secure,
            id: &id,
            namespace: &w.namespace,
            name: &w.name,
            account: &w.service_account,
            admin: &admin,
            stats: &stats,
            root: &root,
            token: &token,
            labels: &w.labels,
        });
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
        let mut sup = mesh.0.borrow_mut();
        let process = sup.processes.len();
        sup.proxies.push(Proxy {
            name: w.name.clone(),
            id,
            process,
            rev_label: w.rev_label.clone(),
            assigned: revisions[i].clone(),
            revision: revisions[i].clone(),
            admin: topology.is_none().then_some(admin),
            stats,
        });
        sup.processes.push(sidecar);
    }
    let gateway_revision = resolve_revision(resources, None);
    let (xds, secure) = plane_of(&gateway_revision);
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
        let id = format!("router~127.0.0.1~{name}.{namespace}~{namespace}.svc.cluster.local");
        let args = proxy_args(ProxyArgs {
            xds: &xds,
            secure: &secure,
            id: &id,
            namespace: &namespace,
            name: &name,
            account: &account,
            admin: &admin,
            stats: &stats,
            root: &root,
            token: &token,
            labels: selector,
        });
        let mut gw = Process::new(format!("gateway {name}"), exe(), args, Some(format!("http://{admin}/ready")));
        gw.start(&logs)?;
        let mut sup = mesh.0.borrow_mut();
        let process = sup.processes.len();
        sup.proxies.push(Proxy {
            name,
            id,
            process,
            rev_label: None,
            assigned: gateway_revision.clone(),
            revision: gateway_revision.clone(),
            admin: Some(admin),
            stats,
        });
        sup.processes.push(gw);
    }
    let waits: Vec<(String, String)> = mesh.0.borrow().processes[first_proxy..]
        .iter()
        .filter_map(|p| p.ready_url.clone().map(|u| (p.label.clone(), u)))
        .collect();
    for (label, url) in waits {
        let ready = wait_ready(&url).await;
        println!("{} {:<20} {}", if ready { "✔" } else { "✘" }, label, url.trim_end_matches("/ready"));
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
    let mut calls = serve_api(api).await?;
    println!(
        "\nUpgrades: weft upgrade --to <revision> --api {api} (a canary upgrade: batches, health checks, rollback)."
    );
    println!("\nLogs: {}. Ctrl-C stops the mesh.", logs.display());

    let status = RefCell::new(crate::upgrade::Status::idle());
    let mut upgrade: Option<std::pin::Pin<Box<dyn Future<Output = ()> + '_>>> = None;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = 0u32;
    let config_paths = [config.to_path_buf()];
    let mut seen = weft_controlplane::server::fingerprint(&config_paths);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            () = async { if let Some(u) = upgrade.as_mut() { u.await } else { std::future::pending().await } } => {
                upgrade = None;
            }
            Some(call) = calls.recv() => {
                let (code, body) = match (call.method.as_str(), call.path.as_str()) {
                    ("GET", "/upgrade") if status.borrow().state == State::Idle => (404, json!({"error": "no upgrade has run"})),
                    ("GET", "/upgrade") => (200, status.borrow().to_json()),
                    ("POST", "/upgrade") if upgrade.is_some() && status.borrow().state == State::Running => {
                        (409, json!({"error": format!("an upgrade to {} is running; see GET /upgrade", status.borrow().to)}))
                    }
                    ("POST", "/upgrade") => match crate::upgrade::Plan::from_query(&call.query, grace) {
                        Ok(plan) => {
                            *status.borrow_mut() = crate::upgrade::Status::new(&plan.to);
                            let (mesh, status) = (&mesh, &status);
                            upgrade = Some(Box::pin(async move { crate::upgrade::canary(mesh, &plan, status).await }));
                            (202, status.borrow().to_json())
                        }
                        Err(e) => (400, json!({"error": e})),
                    },
                    ("POST", "/rollback") => {
                        let target = status.borrow().rollback_target();
                        match target {
                        None => (409, json!({"error": "no upgrade moved anything: there is nothing to roll back"})),
                        Some(from) => {
                            let plan = crate::upgrade::Plan {
                                to: from,
                                batch_size: usize::MAX,
                                pause: Duration::ZERO,
                                grace,
                                max_error_rate: 1.0,
                                gated: false,
                            };
                            let was = std::mem::replace(&mut *status.borrow_mut(), crate::upgrade::Status::new(&plan.to));
                            println!("↺ rolling back the upgrade to {} (state {}): every proxy returns to {}", was.to, was.state.as_str(), plan.to);
                            let (mesh, status) = (&mesh, &status);
                            upgrade = Some(Box::pin(async move { crate::upgrade::canary(mesh, &plan, status).await }));
                            (202, status.borrow().to_json())
                        }
                    }
                    }
                    ("GET", "/revisions") => (200, mesh.describe()),
                    _ => (404, json!({"error": "try GET /upgrade, POST /upgrade?to=<revision>, POST /rollback, GET /revisions"})),
                };
                let _ = call.reply.send((code, body));
            }
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                tick += 1;
                // Every 2 s: a re-pointed revision tag moves its workloads to the
                // revision's control plane (which starts if it is not running).
                let changed = tick.is_multiple_of(4) && {
                    let now = weft_controlplane::server::fingerprint(&config_paths);
                    std::mem::replace(&mut seen, now) != seen
                };
                if changed && let Ok(now) = weft_config::load(&config_paths) {
                    // A running upgrade moves the proxies itself (and points the tags last).
                    let upgrading = status.borrow().state == State::Running;
                    let moves: Vec<(String, String, String)> = {
                        let mut sup = mesh.0.borrow_mut();
                        let tags = tags_of(&now.resources);
                        let moves = sup.proxies
                            .iter_mut()
                            .filter_map(|p| {
                                let resolved = resolve_revision(&tags, p.rev_label.as_deref());
                                if resolved == p.assigned {
                                    return None;
                                }
                                p.assigned.clone_from(&resolved);
                                (resolved != p.revision && !upgrading)
                                    .then(|| (p.name.clone(), p.revision.clone(), resolved))
                            })
                            .collect();
                        sup.tags = tags;
                        moves
                    };
                    for (name, from, to) in moves {
                        println!("↻ {name} moves from revision {from} to {to}");
                        if let Err(e) = mesh.move_proxy(&name, &to).await {
                            println!("✘ {name} did not move to revision {to}: {e:#}");
                        }
                    }
                }
                mesh.supervise()?;
            }
        }
    }
    drop(upgrade);
    println!("Stopping: proxies drain their in-flight requests.");
    // Proxies and applications first, the control planes last.
    let children: Vec<Child> = mesh.0.borrow_mut().processes.iter_mut().rev().filter_map(|p| p.child.take()).collect();
    for child in children {
        stop_child(child).await;
    }
    println!("✔ stopped");
    Ok(ExitCode::SUCCESS)
}

/// What tells one proxy `weft up` runs from another.
struct ProxyArgs<'a> {
    xds: &'a str,
    secure: &'a str,
    id: &'a str,
    namespace: &'a str,
    name: &'a str,
    account: &'a str,
    admin: &'a str,
    stats: &'a str,
    root: &'a Path,
    token: &'a Path,
    labels: &'a BTreeMap<String, String>,
}

/// A sidecar's or gateway's `weft proxy` arguments: one worker, an identity from the CA.
fn proxy_args(p: ProxyArgs<'_>) -> Vec<String> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut args: Vec<String> = [
        "proxy",
        "--xds-address",
        p.xds,
        "--node-id",
        p.id,
        "--namespace",
        p.namespace,
        "--workload-name",
        p.name,
        "--service-account",
        p.account,
        "--admin-address",
        p.admin,
        "--stats-address",
        p.stats,
        "--concurrency",
        "1",
        "--ca-address",
        p.secure,
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(["--ca-root-cert".to_owned(), s(p.root), "--token-file".to_owned(), s(p.token)]);
    for (k, v) in p.labels {
        args.extend(["--label".to_owned(), format!("{k}={v}")]);
    }
    args
}

/// One request to `weft up`'s API, answered by the supervision loop.
struct ApiCall {
    method: String,
    path: String,
    query: String,
    reply: tokio::sync::oneshot::Sender<(u16, serde_json::Value)>,
}

/// Serves `weft up`'s API (what `weft upgrade` and an operator call) on `address`; the
/// calls come out of the returned channel.
async fn serve_api(address: SocketAddr) -> anyhow::Result<tokio::sync::mpsc::Receiver<ApiCall>> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve weft up's API on {address}: {e} (see --api-address)"))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<ApiCall>(16);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let tx = tx.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let tx = tx.clone();
                async move {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    let call = ApiCall {
                        method: req.method().to_string(),
                        path: req.uri().path().to_owned(),
                        query: req.uri().query().unwrap_or_default().to_owned(),
                        reply,
                    };
                    let (code, body) = match tx.send(call).await {
                        Ok(()) => answer.await.unwrap_or((503, json!({"error": "weft up is stopping"}))),
                        Err(_) => (503, json!({"error": "weft up is stopping"})),
                    };
                    let mut response = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
                    *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or_default();
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    Ok(rx)
}

/// Sets `flag`'s value in a process's arguments (adding it, or removing it when `value`
/// is empty). A captured process's arguments end with the proxy's own.
fn set_arg(args: &mut Vec<String>, flag: &str, value: &str) {
    match args.iter().position(|a| a == flag) {
        Some(i) if value.is_empty() => {
            args.drain(i..(i + 2).min(args.len()));
        }
        Some(i) if i + 1 < args.len() => value.clone_into(&mut args[i + 1]),
        _ if value.is_empty() => {}
        _ => args.extend([flag.to_owned(), value.to_owned()]),
    }
}

impl Mesh {
    /// Restarts crashed processes (backing off: 1 s, 2 s, 4 s ... up to 30 s).
    fn supervise(&self) -> anyhow::Result<()> {
        let mut sup = self.0.borrow_mut();
        let logs = sup.logs.clone();
        let now = tokio::time::Instant::now();
        for p in &mut sup.processes {
            let exited = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                p.child = None;
                p.restarts += 1;
                let delay = Duration::from_secs(1 << p.restarts.min(5)).min(Duration::from_secs(30));
                println!("✘ {} exited ({status}); restarting in {delay:?} (restart {})", p.label, p.restarts);
                p.restart_at = Some(now + delay);
            }
            if p.restart_at.is_some_and(|at| at <= now) {
                p.restart_at = None;
                p.start(&logs)?;
            }
        }
        Ok(())
    }

    /// The control planes and which revision each proxy follows (`GET /revisions`).
    fn describe(&self) -> serde_json::Value {
        let sup = self.0.borrow();
        json!({
            "planes": sup.planes.iter().map(|p| json!({"revision": p.revision, "xds": p.xds, "debug": p.debug})).collect::<Vec<_>>(),
            "proxies": sup.proxies.iter().map(|p| json!({"name": p.name, "id": p.id, "revision": p.revision})).collect::<Vec<_>>(),
        })
    }
}

impl crate::upgrade::Fleet for Mesh {
    fn proxies(&self) -> Vec<(String, String)> {
        self.0.borrow().proxies.iter().map(|p| (p.name.clone(), p.revision.clone())).collect()
    }

    async fn ensure_revision(&self, revision: &str) -> anyhow::Result<bool> {
        let (ready, label, log) = {
            let mut sup = self.0.borrow_mut();
            if sup.planes.iter().any(|p| p.revision == revision) {
                return Ok(false);
            }
            let index = (0..).find(|i| !sup.planes.iter().any(|p| p.index == *i)).unwrap_or(0);
            let mut plane = Plane::at(sup.ip, index, revision);
            let mut process = plane.process(&sup.config, &sup.state, sup.mesh_config.as_deref());
            process.start(&sup.logs)?;
            plane.process = sup.processes.len();
            let ready = process.ready_url.clone().unwrap_or_default();
            let log = sup.logs.join(format!("{}.log", process.label.replace(' ', "-")));
            let label = process.label.clone();
            sup.processes.push(process);
            sup.planes.push(plane);
            (ready, label, log)
        };
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        while http_status(&ready).await != 200 {
            let exited = {
                let mut sup = self.0.borrow_mut();
                let process = sup.planes.iter().find(|p| p.revision == revision).map(|p| p.process);
                process.and_then(|p| sup.processes[p].child.as_mut()).and_then(|c| c.try_wait().ok().flatten())
            };
            if exited.is_some() || tokio::time::Instant::now() > deadline {
                self.retire(revision).await;
                // Its last words say why (an invalid meshConfig, a port in use ...).
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                let last: Vec<&str> = said.lines().rev().take(3).collect();
                let why = last.into_iter().rev().collect::<Vec<_>>().join("\n  ");
                anyhow::bail!("{label} did not become ready (see {}):\n  {why}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let sup = self.0.borrow();
        if let Some(plane) = sup.planes.iter().find(|p| p.revision == revision) {
            println!(
                "✔ {:<20} revision {revision}: xDS {}, CA and secure xDS {}, debug http://{}",
                if revision == "default" { "control plane".to_owned() } else { format!("control plane {revision}") },
                plane.xds,
                plane.secure,
                plane.debug
            );
        }
        Ok(true)
    }

    async fn move_proxy(&self, name: &str, revision: &str) -> anyhow::Result<()> {
        self.ensure_revision(revision).await?;
        let (admin, query, id, debug, restart) = {
            let mut sup = self.0.borrow_mut();
            let sup = &mut *sup;
            let plane = sup
                .planes
                .iter()
                .find(|p| p.revision == revision)
                .ok_or_else(|| anyhow::anyhow!("revision {revision} is not running"))?;
            let proxy =
                sup.proxies.iter_mut().find(|p| p.name == name).ok_or_else(|| anyhow::anyhow!("no proxy {name}"))?;
            // It tells its label when the configuration gives it this revision (so that it
            // follows later tag moves), else the revision itself.
            let told = if resolve_revision(&sup.tags, proxy.rev_label.as_deref()) == revision {
                proxy.rev_label.clone().unwrap_or_default()
            } else {
                revision.to_owned()
            };
            let args = &mut sup.processes[proxy.process].args;
            set_arg(args, "--xds-address", &plane.xds);
            set_arg(args, "--ca-address", &plane.secure);
            set_arg(args, "--revision", &told);
            proxy.revision = revision.to_owned();
            let query = format!("xds_address={}&ca_address={}&revision={told}", plane.xds, plane.secure);
            let restart = proxy.admin.is_none().then(|| sup.processes[proxy.process].child.take()).flatten();
            (proxy.admin.clone(), query, proxy.id.clone(), plane.debug.clone(), restart)
        };
        match admin {
            Some(admin) => {
                let url = format!("http://{admin}/control_plane?{query}");
                match http(hyper::Method::POST, &url).await {
                    Some((200, _)) => {}
                    Some((code, body)) => {
                        anyhow::bail!("the proxy refused the move ({code}): {}", String::from_utf8_lossy(&body).trim())
                    }
                    None => anyhow::bail!("the proxy's admin endpoint {admin} does not answer"),
                }
            }
            // A captured proxy's admin port is in its namespace: it restarts instead.
            None => {
                if let Some(child) = restart {
                    stop_child(child).await;
                }
                let mut sup = self.0.borrow_mut();
                let logs = sup.logs.clone();
                if let Some(p) = sup.proxies.iter().find(|p| p.name == name).map(|p| p.process) {
                    sup.processes[p].start(&logs)?;
                }
            }
        }
        // In sync: connected to the new control plane, which has had every type ACKed.
        let deadline = tokio::time::Instant::now() + MOVE_TIMEOUT;
        loop {
            if let Some((200, body)) = http(hyper::Method::GET, &format!("http://{debug}/debug/syncz")).await {
                let syncz: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let entry = syncz.as_array().into_iter().flatten().find(|p| p["proxy"] == id.as_str());
                let synced = entry.and_then(|e| e["types"].as_object()).is_some_and(|types| {
                    !types.is_empty() && types.values().all(|t| t["nack"].is_null() && t["sent"] == t["acked"])
                });
                if synced {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("not in sync with revision {revision}'s control plane after {MOVE_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn counts(&self, proxies: &[String]) -> crate::upgrade::Counts {
        let targets: Vec<String> =
            self.0.borrow().proxies.iter().filter(|p| proxies.contains(&p.name)).map(|p| p.stats.clone()).collect();
        let mut total = crate::upgrade::Counts::default();
        for target in targets {
            if let Some((200, body)) = http(hyper::Method::GET, &format!("http://{target}/stats/prometheus")).await {
                let counts = crate::upgrade::Counts::from_prometheus(&String::from_utf8_lossy(&body));
                total.requests += counts.requests;
                total.errors += counts.errors;
            }
        }
        total
    }

    fn point_tags(&self, proxies: &[String], revision: &str) -> anyhow::Result<Vec<String>> {
        let config = self.0.borrow().config.clone();
        let mut labels: Vec<String> = self
            .0
            .borrow()
            .proxies
            .iter()
            .filter(|p| proxies.contains(&p.name))
            .map(|p| p.rev_label.clone().unwrap_or_else(|| "default".into()))
            .collect();
        labels.sort();
        labels.dedup();
        let tags = crate::tag::tags(&config)?;
        let mut changed = Vec::new();
        for label in labels {
            let tag = tags.iter().find(|(t, _, _)| *t == label);
            // A tag, or `default` without one (what unlabelled workloads follow).
            let repoint = match tag {
                Some((_, target, _)) => target != revision,
                None => label == "default" && revision != "default",
            };
            if repoint {
                crate::tag::set(&config, &label, revision)?;
                changed.push(format!("tag {label} → revision {revision}"));
            } else if tag.is_none() && label != revision && label != "default" {
                changed.push(format!(
                    "workloads labelled istio.io/rev: {label} name a revision, not a tag: they return to {label} when restarted; label them {revision}, or use a tag"
                ));
            }
        }
        // What the next move reads, without waiting for the configuration to be re-read.
        self.0.borrow_mut().tags = tags_of(&weft_config::load(&[config])?.resources);
        Ok(changed)
    }

    async fn retire(&self, revision: &str) {
        let child = {
            let mut sup = self.0.borrow_mut();
            let Some(at) = sup.planes.iter().position(|p| p.revision == revision) else { return };
            let plane = sup.planes.remove(at);
            let process = &mut sup.processes[plane.process];
            process.restart_at = None;
            process.child.take()
        };
        if let Some(child) = child {
            stop_child(child).await;
        }
        println!("✔ control plane {revision} stopped");
    }
}

/// One control plane `weft up` runs, for one revision: the default one on the usual
/// ports, the others 100 ports further each.
struct Plane {
    revision: String,
    /// Which hundred of ports it uses.
    index: usize,
    xds: String,
    secure: String,
    debug: String,
    /// Its process in [`Supervisor::processes`].
    process: usize,
}

impl Plane {
    fn at(ip: IpAddr, index: usize, revision: &str) -> Plane {
        let port = |p: usize| format!("{ip}:{}", p + 100 * index);
        Plane {
            revision: revision.to_owned(),
            index,
            xds: port(15010),
            secure: port(15012),
            debug: port(15014),
            process: 0,
        }
    }

    fn process(&self, config: &Path, state: &Path, mesh_config: Option<&Path>) -> Process {
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
        if let Some(mesh) = mesh_config {
            args.extend(["--mesh-config".to_owned(), s(mesh)]);
        }
        let label = if self.revision == "default" {
            "control-plane".to_owned()
        } else {
            args.extend(["--revision".to_owned(), self.revision.clone()]);
            format!("control-plane {}", self.revision)
        };
        Process::new(label, exe(), args, Some(format!("http://{}/ready", self.debug)))
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
