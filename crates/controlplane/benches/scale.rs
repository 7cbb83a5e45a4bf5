//! Control-plane scale: N services × M endpoints, P simulated proxies on real gRPC
//! streams (delta and state-of-the-world), one endpoint change.
//!
//! Reports snapshot build and translation time, the time until every proxy has received
//! (and acknowledged) the change, p50/p99, bytes sent, and peak RSS; and the delta run as
//! a ratio to the state-of-the-world run measured in the same invocation.
//!
//! The simulated proxies run in a second process (this bench started again with
//! `--simulate`), so that the peak RSS is the control plane's alone; the two processes
//! share the machine's cores, as a control plane shares a node with its neighbours. The
//! proxies start their clocks just before the control plane gets the change.
//!
//!   cargo bench -p weft-controlplane --bench scale -- [SERVICES ENDPOINTS PROXIES]...
//!
//! With no arguments it runs (1000, 10000, 100) and (10000, 100000, 1000).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use weft_controlplane::ads::{Ads, SyncStatus};
use weft_controlplane::metrics::Metrics;
use weft_controlplane::node::ProxyIdentity;
use weft_controlplane::snapshot::Snapshot;
use weft_controlplane::translate::{self, type_url};

const NAMESPACE: &str = "bench";

/// The mesh as YAML: services with one port, endpoints spread over them, and one Sidecar
/// whose egress listener reaches every service (so each proxy gets every route).
fn mesh_yaml(services: usize, endpoints: usize, moved: bool) -> String {
    let mut out = String::with_capacity(services * 400 + endpoints * 250);
    out.push_str(&format!(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: {NAMESPACE}}}\nspec:\n  egress:\n  - port: {{number: 80, protocol: HTTP, name: http}}\n    bind: 127.0.0.2\n    hosts: [\"./*\"]\n---\n"
    ));
    for s in 0..services {
        out.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc-{s}, namespace: {NAMESPACE}}}\nspec:\n  hosts: [svc-{s}.{NAMESPACE}.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  workloadSelector: {{labels: {{app: svc-{s}}}}}\n---\n"
        ));
    }
    for e in 0..endpoints {
        let s = e % services;
        // The change: endpoint 0 moves to another address.
        let third = if moved && e == 0 { 255 } else { (e / 250) % 250 };
        out.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: ep-{e}, namespace: {NAMESPACE}}}\nspec: {{address: 10.{}.{third}.{}, labels: {{app: svc-{s}}}}}\n---\n",
            e / 62500 % 250,
            e % 250
        ));
    }
    out
}

/// The mesh read as the control plane reads it on a file change: written to a file in
/// `dir`, then loaded and analyzed (`server::load`).
fn load(dir: &std::path::Path, yaml: String) -> Vec<weft_api::Resource> {
    std::fs::write(dir.join("mesh.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"));
    match weft_controlplane::server::load(&[dir.to_owned()]) {
        Ok(parsed) => parsed.resources,
        Err(weft_controlplane::server::ServerError::Invalid(d)) => panic!("{:?}", d.iter().find(|d| d.is_error())),
        Err(e) => panic!("{e}"),
    }
}

/// How many replicas each simulated workload has (`WEFT_BENCH_REPLICAS`, default 10):
/// replicas share their labels, as a Deployment's pods do.
fn replicas() -> usize {
    std::env::var("WEFT_BENCH_REPLICAS").ok().and_then(|r| r.parse().ok()).filter(|r| *r > 0).unwrap_or(10)
}

/// Proxy `i`: pod `proxy-<i>` of workload `app-<i / replicas>`, with its own address.
fn node(i: usize) -> Node {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let s = |v: &str| Value { kind: Some(Kind::StringValue(v.into())) };
    let labels = Struct {
        fields: [("app".to_owned(), s(&format!("app-{}", i / replicas()))), ("version".to_owned(), s("v1"))]
            .into_iter()
            .collect(),
    };
    Node {
        id: format!(
            "sidecar~127.{}.{}.{}~proxy-{i}.{NAMESPACE}~{NAMESPACE}.svc.cluster.local",
            100 + i / 65536,
            i / 256 % 256,
            i % 256
        ),
        metadata: Some(Struct {
            fields: [
                ("NAMESPACE".to_owned(), s(NAMESPACE)),
                ("INTERCEPTION_MODE".to_owned(), s("NONE")),
                ("LABELS".to_owned(), Value { kind: Some(Kind::StructValue(labels)) }),
            ]
            .into_iter()
            .collect(),
        }),
        ..Default::default()
    }
}

fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// This process's resident memory now.
fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// CPU time this process has used, all threads, in milliseconds.
fn cpu_ms() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let ns: u64 = tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e6
}

fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

type Client = AggregatedDiscoveryServiceClient<tonic::transport::Channel>;

/// One connection per simulated proxy, as proxies have; opened one at a time so the
/// listen backlog is not the thing measured.
async fn connect(addr: &str) -> Client {
    for _ in 0..50 {
        if let Ok(c) = AggregatedDiscoveryServiceClient::connect(addr.to_owned()).await {
            return c.max_decoding_message_size(1 << 30);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot connect to {addr}");
}

/// What one simulated proxy saw of one change.
#[derive(Debug, Clone)]
struct Report {
    /// Bytes received before the first change (reported with the first only).
    initial_bytes: usize,
    /// Bytes received since the change was made.
    update_bytes: usize,
    /// From the change to its endpoints arriving.
    latency: Duration,
}

/// The current change, once there is one: its round and when it was made.
type Change = watch::Receiver<Option<(u32, Instant)>>;

/// Counts what a proxy receives, and reports each change (once) when its endpoints arrive.
struct Tally {
    initial_bytes: usize,
    update_bytes: usize,
    reported: u32,
}

impl Tally {
    fn new() -> Self {
        Tally { initial_bytes: 0, update_bytes: 0, reported: 0 }
    }

    /// Counts a response; the report, if it brings the current change's endpoints.
    fn received(&mut self, change: &Change, bytes: usize, new_endpoints: bool) -> Option<Report> {
        let Some((round, at)) = *change.borrow() else {
            self.initial_bytes += bytes;
            return None;
        };
        self.update_bytes += bytes;
        if !new_endpoints || round <= self.reported {
            return None;
        }
        self.reported = round;
        let report = Report {
            initial_bytes: std::mem::take(&mut self.initial_bytes),
            update_bytes: std::mem::take(&mut self.update_bytes),
            latency: at.elapsed(),
        };
        Some(report)
    }
}

/// A delta client as Envoy behaves: wildcard CDS and LDS, then EDS for every cluster
/// and RDS for every route the listeners name; everything ACKed.
async fn delta_proxy(
    mut client: Client,
    i: usize,
    ready: mpsc::Sender<()>,
    change: Change,
    done: mpsc::Sender<Report>,
) {
    let (tx, rx) = mpsc::channel(64);
    // The node goes in the first request only, as Istio's bootstrap has Envoy do.
    let identified = std::sync::atomic::AtomicBool::new(false);
    let subscribe = |t: &str, names: Vec<String>, nonce: String| DeltaDiscoveryRequest {
        node: (!identified.swap(true, std::sync::atomic::Ordering::Relaxed)).then(|| node(i)),
        type_url: t.to_owned(),
        resource_names_subscribe: names,
        response_nonce: nonce,
        ..Default::default()
    };
    let _ = tx.send(subscribe(type_url::CLUSTER, vec![], String::new())).await;
    let _ = tx.send(subscribe(type_url::LISTENER, vec![], String::new())).await;
    let mut responses =
        client.delta_aggregated_resources(ReceiverStream::new(rx)).await.unwrap_or_else(|e| panic!("{e}")).into_inner();
    let mut tally = Tally::new();
    let mut have = BTreeSet::new();
    let mut ready = Some(ready);
    while let Some(Ok(r)) = responses.next().await {
        let endpoints = r.type_url == type_url::ENDPOINT && !r.resources.is_empty();
        let report = tally.received(&change, r.encoded_len(), endpoints);
        let mut names = Vec::new();
        if r.type_url == type_url::CLUSTER {
            names = r.resources.iter().map(|x| x.name.clone()).filter(|n| have.insert(n.clone())).collect();
            if !names.is_empty() {
                let _ = tx.send(subscribe(type_url::ENDPOINT, names.clone(), String::new())).await;
            }
        }
        if r.type_url == type_url::LISTENER && have.insert("rds".into()) {
            let _ = tx.send(subscribe(type_url::ROUTE, vec!["80".into()], String::new())).await;
        }
        let _ = tx.send(subscribe(&r.type_url, Vec::new(), r.nonce.clone())).await;
        if r.type_url == type_url::ROUTE
            && let Some(ready) = ready.take()
        {
            let _ = ready.send(()).await;
        }
        // Reported as soon as seen; the stream stays up (and keeps acknowledging), so no
        // teardown competes with the measurement.
        if let Some(report) = report {
            let _ = done.send(report).await;
        }
        names.clear();
    }
}

/// A state-of-the-world client: the same subscriptions, full sets each time.
async fn sotw_proxy(mut client: Client, i: usize, ready: mpsc::Sender<()>, change: Change, done: mpsc::Sender<Report>) {
    let (tx, rx) = mpsc::channel(64);
    let identified = std::sync::atomic::AtomicBool::new(false);
    let request = |t: &str, names: Vec<String>, version: String, nonce: String| DiscoveryRequest {
        node: (!identified.swap(true, std::sync::atomic::Ordering::Relaxed)).then(|| node(i)),
        type_url: t.to_owned(),
        resource_names: names,
        version_info: version,
        response_nonce: nonce,
        ..Default::default()
    };
    let _ = tx.send(request(type_url::CLUSTER, vec![], String::new(), String::new())).await;
    let _ = tx.send(request(type_url::LISTENER, vec![], String::new(), String::new())).await;
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let mut tally = Tally::new();
    let mut eds_names: Vec<String> = Vec::new();
    let mut ready = Some(ready);
    let mut asked_rds = false;
    while let Some(Ok(r)) = responses.next().await {
        let report = tally.received(&change, r.encoded_len(), r.type_url == type_url::ENDPOINT);
        let _ = tx
            .send(request(
                &r.type_url,
                if r.type_url == type_url::ENDPOINT {
                    eds_names.clone()
                } else if r.type_url == type_url::ROUTE {
                    vec!["80".into()]
                } else {
                    vec![]
                },
                r.version_info.clone(),
                r.nonce.clone(),
            ))
            .await;
        if r.type_url == type_url::CLUSTER && eds_names.is_empty() {
            eds_names = r
                .resources
                .iter()
                .filter_map(|a| envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(a.value.as_slice()).ok())
                .map(|c| c.name)
                .collect();
            let _ = tx.send(request(type_url::ENDPOINT, eds_names.clone(), String::new(), String::new())).await;
        }
        if r.type_url == type_url::LISTENER && !asked_rds {
            asked_rds = true;
            let _ = tx.send(request(type_url::ROUTE, vec!["80".into()], String::new(), String::new())).await;
        }
        if r.type_url == type_url::ROUTE
            && let Some(ready) = ready.take()
        {
            let _ = ready.send(()).await;
        }
        if let Some(report) = report {
            let _ = done.send(report).await;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Outcome {
    p50: Duration,
    p99: Duration,
    /// The highest p99 of any round.
    worst_p99: Duration,
    max: Duration,
    initial_mb: f64,
    update_kb_per_proxy: f64,
    /// The simulated proxies' process.
    simulator_rss_mb: f64,
    /// The control plane's resident memory once every proxy is in sync, before the change.
    synced_rss_mb: f64,
    /// The control plane's peak RSS before the first change (the initial pushes).
    synced_peak_mb: f64,
    /// CPU time per change, from the change until every proxy has it: the control plane's,
    /// and the simulated proxies'.
    cpu_ms: f64,
    simulator_cpu_ms: f64,
}

/// How many endpoint changes each run makes (`WEFT_BENCH_ROUNDS`, default 5).
fn rounds() -> u32 {
    std::env::var("WEFT_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).filter(|r| *r > 0).unwrap_or(5)
}

/// One run: the proxies connect and sync with `first`, then one endpoint moves back and
/// forth, one change per round, each the next snapshot built from `mesh(moved)`.
async fn run_protocol(
    delta: bool,
    first: Arc<Snapshot>,
    mesh: impl Fn(bool) -> Vec<weft_api::Resource>,
    proxies: usize,
) -> Outcome {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let (snapshots_tx, snapshots_rx) = watch::channel(first.clone());
    let ads = Ads::new(snapshots_rx, Arc::new(SyncStatus::default()), Arc::new(Metrics::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server =
        tokio::spawn(tonic::transport::Server::builder().add_service(ads.into_service()).serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = stop_rx.await;
            },
        ));
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let mut child = tokio::process::Command::new(exe)
        // A heap profiler loaded into the control plane (heaptrack) stays out of the proxies.
        .env_remove("LD_PRELOAD")
        .args(["--simulate", &addr, &proxies.to_string(), if delta { "delta" } else { "sotw" }])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut to_child = child.stdin.take().unwrap_or_else(|| panic!("no stdin"));
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap_or_else(|| panic!("no stdout"))).lines();
    let said = lines.next_line().await.ok().flatten().unwrap_or_default();
    assert_eq!(said, "ready", "the simulated proxies did not get ready");
    // Steady state: a few seconds after the last push, as a control plane runs between
    // changes (it returns what the initial pushes freed once they are over).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let synced_rss_mb = rss_mb();
    let synced_peak_mb = peak_rss_mb();
    // WEFT_BENCH_STOP_SYNCED=1: exit here, so that what a heap profiler finds still
    // allocated at exit is the control plane's heap with every proxy in sync.
    if std::env::var_os("WEFT_BENCH_STOP_SYNCED").is_some() {
        println!("every proxy in sync; control plane RSS {synced_rss_mb:.1} MB; stopping (WEFT_BENCH_STOP_SYNCED)");
        std::process::exit(0);
    }
    let mut current = first;
    let mut seen: Vec<Vec<f64>> = Vec::new();
    let mut initial_bytes = 0.0;
    for round in 1..=rounds() {
        let next = Arc::new(Snapshot::next(&current, current.version + 1, mesh(round % 2 == 1)));
        assert!(next.endpoint_change.is_some(), "not an endpoint-only change");
        // WEFT_BENCH_PAUSE=SECONDS: time to attach a profiler (`perf record -p PID`) first.
        if let Some(pause) = std::env::var("WEFT_BENCH_PAUSE").ok().and_then(|p| p.parse::<u64>().ok()) {
            eprintln!("pid {}: change {round} comes in {pause} s", std::process::id());
            tokio::time::sleep(Duration::from_secs(pause)).await;
        }
        // WEFT_BENCH_PERF=PREFIX: the control plane is profiled during each change alone,
        // into PREFIX-<round>.data (`perf report -i`).
        let perf = std::env::var("WEFT_BENCH_PERF").ok().map(|prefix| {
            let child = std::process::Command::new("perf")
                .args(["record", "-F", "2000", "--call-graph", "dwarf,16384", "-o"])
                .arg(format!("{prefix}-{round}.data"))
                .args(["-p", &std::process::id().to_string()])
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("perf: {e}"));
            std::thread::sleep(Duration::from_millis(500));
            child
        });
        // The proxies start their clocks, then the change is made: none can see it first.
        to_child.write_all(b"go\n").await.unwrap_or_else(|e| panic!("{e}"));
        to_child.flush().await.unwrap_or_else(|e| panic!("{e}"));
        let said = lines.next_line().await.ok().flatten().unwrap_or_default();
        assert_eq!(said, "timing", "the simulated proxies did not start timing");
        let cpu_before = cpu_ms();
        // The replaced snapshot is freed after the push, as the control plane's server does.
        let retired = snapshots_tx.send_replace(next.clone());
        current = next;
        let result = lines.next_line().await.ok().flatten().unwrap_or_default();
        let mut numbers: Vec<f64> = result.split_whitespace().filter_map(|n| n.parse().ok()).collect();
        assert_eq!(numbers.len(), 8, "the simulated proxies said {result:?}");
        numbers.push(cpu_ms() - cpu_before);
        drop(retired);
        if let Some(mut perf) = perf {
            let _ = std::process::Command::new("kill").args(["-INT", &perf.id().to_string()]).status();
            let _ = perf.wait();
        }
        assert_eq!(numbers[5] as usize, proxies, "not every proxy saw change {round}");
        initial_bytes += numbers[3];
        seen.push(numbers);
    }
    drop(to_child);
    let _ = child.wait().await;
    let _ = stop_tx.send(());
    let _ = server.await;
    let us = |n: f64| Duration::from_micros(n as u64);
    let median = |i: usize| {
        let mut v: Vec<f64> = seen.iter().map(|n| n[i]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let worst = |i: usize| seen.iter().map(|n| n[i]).fold(0.0, f64::max);
    Outcome {
        p50: us(median(0)),
        p99: us(median(1)),
        worst_p99: us(worst(1)),
        max: us(worst(2)),
        initial_mb: initial_bytes / 1e6,
        update_kb_per_proxy: median(4) / 1e3 / proxies as f64,
        simulator_rss_mb: worst(6),
        synced_rss_mb,
        synced_peak_mb,
        simulator_cpu_ms: median(7),
        cpu_ms: median(8),
    }
}

/// The simulated proxies' process: connects them and says `ready`. Then, for each `go`
/// line, starts the clock of a new change, says `timing`, and once every proxy has its
/// endpoints prints what they saw: p50, p99 and max latency in microseconds, initial
/// and update bytes, how many saw the change, and its peak RSS. Exits at end of input.
fn simulate(addr: &str, proxies: usize, delta: bool) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let (change_tx, change_rx) = watch::channel(None);
        let (ready_tx, mut ready_rx) = mpsc::channel(proxies);
        let (done_tx, mut done_rx) = mpsc::channel(proxies);
        for i in 0..proxies {
            let client = connect(addr).await;
            let (ready, change, done) = (ready_tx.clone(), change_rx.clone(), done_tx.clone());
            tokio::spawn(async move {
                if delta {
                    delta_proxy(client, i, ready, change, done).await
                } else {
                    sotw_proxy(client, i, ready, change, done).await
                }
            });
        }
        for _ in 0..proxies {
            let _ = ready_rx.recv().await;
        }
        println!("ready");
        let (lines_tx, mut lines) = mpsc::channel(1);
        std::thread::spawn(move || {
            for line in std::io::stdin().lines().map_while(Result::ok) {
                if lines_tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        let mut round = 0;
        while let Some(line) = lines.recv().await {
            assert_eq!(line.trim(), "go");
            round += 1;
            let cpu_before = cpu_ms();
            let _ = change_tx.send(Some((round, Instant::now())));
            println!("timing");
            let mut latencies = Vec::new();
            let (mut initial, mut update) = (0usize, 0usize);
            for _ in 0..proxies {
                let Some(report) = done_rx.recv().await else { break };
                latencies.push(report.latency);
                initial += report.initial_bytes;
                update += report.update_bytes;
            }
            latencies.sort();
            let us = |d: Duration| d.as_micros();
            println!(
                "{} {} {} {initial} {update} {} {:.1} {:.1}",
                us(percentile(&latencies, 0.5)),
                us(percentile(&latencies, 0.99)),
                us(latencies.last().copied().unwrap_or_default()),
                latencies.len(),
                peak_rss_mb(),
                cpu_ms() - cpu_before
            );
        }
        // Gone at once: the control plane sees every stream end only after the measurement.
        let _ = std::io::Write::flush(&mut std::io::stdout());
        std::process::exit(0);
    });
}

/// What one proxy's translation holds, and the control plane's RSS before any proxy.
struct Shape {
    clusters: usize,
    endpoint_sets: usize,
    virtual_hosts: usize,
    loaded_rss_mb: f64,
}

fn report_one(
    services: usize,
    endpoints: usize,
    proxies: usize,
    build: Duration,
    translation: Duration,
    shape: &Shape,
    o: &Outcome,
) {
    println!("{services} services × {endpoints} endpoints × {proxies} proxies (delta only)");
    println!("  load, analysis, snapshot build   {:>10.1} ms", build.as_secs_f64() * 1e3);
    println!(
        "  translation, one proxy           {:>10.1} ms  ({} clusters)",
        translation.as_secs_f64() * 1e3,
        shape.clusters
    );
    println!("  RSS with the configuration loaded {:>9.1} MB (no proxy connected yet)", shape.loaded_rss_mb);
    println!(
        "  delta endpoint change ({} rounds, medians): p50 {:>7.1} ms  p99 {:>7.1} ms (worst round {:.1} ms)  max {:>7.1} ms  | initial push {:>8.1} MB total, change {:>8.1} kB/proxy",
        rounds(),
        o.p50.as_secs_f64() * 1e3,
        o.p99.as_secs_f64() * 1e3,
        o.worst_p99.as_secs_f64() * 1e3,
        o.max.as_secs_f64() * 1e3,
        o.initial_mb,
        o.update_kb_per_proxy
    );
    println!(
        "  CPU per change                   {:>10.1} ms control plane; simulated proxies {:.1} ms",
        o.cpu_ms, o.simulator_cpu_ms
    );
    println!(
        "  peak RSS so far                  {:>10.1} MB control plane ({:.1} MB once synced, {:.1} MB peak before the first change); simulated proxies {:.1} MB\n",
        peak_rss_mb(),
        o.synced_rss_mb,
        o.synced_peak_mb,
        o.simulator_rss_mb
    );
}

fn main() {
    let all: Vec<String> = std::env::args().collect();
    if let [_, flag, addr, proxies, protocol] = all.as_slice()
        && flag == "--simulate"
    {
        return simulate(addr, proxies.parse().unwrap_or_else(|e| panic!("{e}")), protocol == "delta");
    }
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes: Vec<(usize, usize, usize)> = if args.len() >= 3 {
        args.chunks(3).filter(|c| c.len() == 3).map(|c| (c[0], c[1], c[2])).collect()
    } else {
        vec![(1000, 10_000, 100), (10_000, 100_000, 1000)]
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
    println!("weft control plane scale (delta as a ratio to state-of-the-world, same run)\n");
    for (services, endpoints, proxies) in sizes {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let t = Instant::now();
        let first = Arc::new(Snapshot::new(1, load(dir.path(), mesh_yaml(services, endpoints, false))));
        let build = t.elapsed();
        // As the control plane does on a file change: the file is read again, and the
        // next snapshot notes that only endpoints moved.
        let path = dir.path().to_owned();
        let mesh = move |moved: bool| load(&path, mesh_yaml(services, endpoints, moved));
        let proxy = ProxyIdentity::from_node(Some(&node(0))).unwrap_or_else(|e| panic!("{e}"));
        let t = Instant::now();
        let r = translate::resources_for(&first, &proxy, &[]);
        let translation = t.elapsed();
        // Only its shape is reported: the translation itself is not held during the run,
        // so that the control plane's RSS is the server's alone.
        let shape = Shape {
            clusters: r.clusters.len(),
            endpoint_sets: r.endpoints.len(),
            virtual_hosts: r.routes.iter().map(|x| x.virtual_hosts.len()).sum(),
            loaded_rss_mb: 0.0,
        };
        drop(r);
        let shape = Shape { loaded_rss_mb: rss_mb(), ..shape };
        let delta = runtime.block_on(run_protocol(true, first.clone(), &mesh, proxies));
        // WEFT_BENCH_DELTA_ONLY=1 skips state of the world, whose full pushes to a thousand
        // proxies need far more memory than delta's.
        if std::env::var_os("WEFT_BENCH_DELTA_ONLY").is_some() {
            report_one(services, endpoints, proxies, build, translation, &shape, &delta);
            continue;
        }
        let sotw = runtime.block_on(run_protocol(false, first, &mesh, proxies));
        println!("{services} services × {endpoints} endpoints × {proxies} proxies");
        println!("  load, analysis, snapshot build   {:>10.1} ms", build.as_secs_f64() * 1e3);
        println!(
            "  translation, one proxy           {:>10.1} ms  ({} clusters, {} endpoint sets, {} virtual hosts)",
            translation.as_secs_f64() * 1e3,
            shape.clusters,
            shape.endpoint_sets,
            shape.virtual_hosts
        );
        println!("  RSS with the configuration loaded {:>9.1} MB (no proxy connected yet)", shape.loaded_rss_mb);
        for (name, o) in [("sotw ", &sotw), ("delta", &delta)] {
            println!(
                "  {name} endpoint change ({} rounds, medians): p50 {:>7.1} ms  p99 {:>7.1} ms (worst round {:.1} ms)  max {:>7.1} ms  | initial push {:>8.1} MB total, change {:>8.1} kB/proxy",
                rounds(),
                o.p50.as_secs_f64() * 1e3,
                o.p99.as_secs_f64() * 1e3,
                o.worst_p99.as_secs_f64() * 1e3,
                o.max.as_secs_f64() * 1e3,
                o.initial_mb,
                o.update_kb_per_proxy
            );
        }
        println!(
            "  delta / sotw: p99 ×{:.2}, bytes per change ×{:.3}",
            delta.p99.as_secs_f64() / sotw.p99.as_secs_f64().max(1e-9),
            delta.update_kb_per_proxy / sotw.update_kb_per_proxy.max(1e-9)
        );
        println!(
            "  peak RSS so far                  {:>10.1} MB control plane ({:.1} MB once synced, delta; {:.1} MB sotw); simulated proxies {:.1} MB (delta), {:.1} MB (sotw)\n",
            peak_rss_mb(),
            delta.synced_rss_mb,
            sotw.synced_rss_mb,
            delta.simulator_rss_mb,
            sotw.simulator_rss_mb
        );
    }
}
