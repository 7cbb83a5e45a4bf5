//! `weft up` with no arguments runs the bundled Bookinfo example: a control plane with
//! its CA, six applications with their sidecars and an ingress gateway; routing follows
//! the Istio YAML; every step of `examples/bookinfo/README.md` shows what it says;
//! SIGTERM stops everything and leaves no process behind.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn curl(args: &[&str]) -> serde_json::Value {
    let out = Command::new("curl").args(["-s", "--max-time", "10"]).args(args).output();
    out.ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or_default()
}

fn processes_mentioning(text: &str) -> Vec<String> {
    let out = Command::new("pgrep").args(["-af", text]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect()).unwrap_or_default()
}

#[test]
fn weft_up_runs_bookinfo_and_stops_cleanly() {
    let state = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state_dir = state.path().to_string_lossy().into_owned();
    let out_path = state.path().join("up.out");
    let out = std::fs::File::create(&out_path).unwrap_or_else(|e| panic!("{e}"));
    let mut up = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["up", "--state-dir", &state_dir])
        .stdout(Stdio::from(out))
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    // A failing assertion still stops the mesh (SIGTERM: weft up stops what it started).
    let _stop = common::StopOnDrop(up.id());
    let started = Instant::now();
    let output = || std::fs::read_to_string(&out_path).unwrap_or_default();
    while !output().contains("Ctrl-C stops the mesh") {
        assert!(started.elapsed() < common::mesh::STARTUP, "weft up did not finish starting:\n{}", output());
        assert!(up.try_wait().ok().flatten().is_none(), "weft up exited:\n{}", output());
        std::thread::sleep(Duration::from_millis(200));
    }
    let shown = output();
    assert!(!shown.contains('✘'), "something did not start:\n{shown}");
    for line in ["control plane", "sidecar reviews-v3", "gateway ingressgateway", "ratings-v1       127.0.10.6"] {
        assert!(shown.contains(line), "{line:?} missing from:\n{shown}");
    }

    // The productpage's sidecar routes reviews by user, as networking.yaml says.
    let jason = curl(&["-H", "Host: reviews", "-H", "end-user: jason", "http://127.0.11.1:9080/"]);
    assert_eq!((jason["name"].as_str(), jason["version"].as_str()), (Some("reviews"), Some("v2")), "{jason}");
    assert_eq!(jason["calls"][0]["answer"]["name"], "ratings", "reviews v2 calls ratings: {jason}");
    let anyone = curl(&["-H", "Host: reviews", "http://127.0.11.1:9080/"]);
    assert_eq!(anyone["version"], "v1", "{anyone}");
    // The ingress gateway serves the product page, which calls details and reviews.
    let page = curl(&["http://127.0.0.1:8080/productpage"]);
    assert_eq!(page["name"], "productpage", "{page}");
    let called: Vec<&str> = page["calls"].as_array().into_iter().flatten().filter_map(|c| c["host"].as_str()).collect();
    assert_eq!(called, ["details", "reviews"]);
    assert!(page["calls"].as_array().into_iter().flatten().all(|c| c["status"] == 200), "{page}");

    // A chain of four over mutual TLS: gateway → productpage → reviews v2 → ratings. Each
    // application sees, from its sidecar, the SPIFFE identity of the one that called it.
    let chain = curl(&["-H", "end-user: jason", "http://127.0.0.1:8080/productpage"]);
    let reviews = &chain["calls"][1]["answer"];
    let ratings = &reviews["calls"][0]["answer"];
    for (who, answer, caller) in [
        ("productpage", &chain, "ns/default/sa/ingressgateway-service-account"),
        ("reviews", reviews, "ns/default/sa/bookinfo-productpage"),
        ("ratings", ratings, "ns/default/sa/bookinfo-reviews"),
    ] {
        assert_eq!(answer["name"], who, "{chain}");
        let seen = answer["caller"].as_str().unwrap_or("");
        assert!(
            seen.contains(&format!("URI=spiffe://cluster.local/{caller}")),
            "{who} was called by {seen:?}: {chain}"
        );
    }

    walk_through(&state_dir);

    let _ = Command::new("kill").args(["-TERM", &up.id().to_string()]).status();
    let stopping = Instant::now();
    while up.try_wait().ok().flatten().is_none() {
        assert!(stopping.elapsed() < Duration::from_secs(60), "weft up did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(output().contains("✔ stopped"), "{}", output());
    assert_eq!(processes_mentioning(&state_dir), Vec::<String>::new(), "proxies or control plane left behind");
    assert_eq!(
        processes_mentioning("demo-app --listen 127.0.0.1:1908"),
        Vec::<String>::new(),
        "applications left behind"
    );
}

fn version(answer: &serde_json::Value) -> String {
    answer["version"].as_str().unwrap_or("").to_owned()
}

/// Copies a walk-through step into the directory `weft up` watches, as the README does.
fn apply(state_dir: &str, step: &str, as_file: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let from = root.join(step);
    let to = Path::new(state_dir).join("example/bookinfo").join(as_file);
    std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < common::mesh::STARTUP, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `curl -w` output: (body, status, seconds).
fn timed(args: &[&str]) -> (String, u16, f64) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code} %{time_total}"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", ""));
    let mut tail = tail.split_whitespace();
    let status = tail.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let seconds = tail.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    (body.to_owned(), status, seconds)
}

fn inbound_requests(admin: &str) -> u64 {
    let stats = Command::new("curl")
        .args(["-s", &format!("http://{admin}/stats?filter=inbound_9080.downstream_rq_total")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    stats.split(": ").nth(1).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// The steps of `examples/bookinfo/README.md`, in order, with the outputs it shows.
fn walk_through(state_dir: &str) {
    let reviews = ["-H", "Host: reviews", "http://127.0.11.1:9080/"];
    let jason = ["-H", "Host: reviews", "-H", "end-user: jason", "http://127.0.11.1:9080/"];

    // 2. Traffic shifting: half of everyone's traffic to v3.
    apply(state_dir, "examples/bookinfo-steps/1-reviews-v3-50.yaml", "reviews.yaml");
    eventually("v3 to get traffic", || version(&curl(&reviews)) == "v3");
    let versions: Vec<String> = (0..100).map(|_| version(&curl(&reviews))).collect();
    let v3 = versions.iter().filter(|v| *v == "v3").count();
    assert!((30..=70).contains(&v3), "v3 got {v3} of 100");
    assert!(versions.iter().all(|v| v == "v1" || v == "v3"), "{versions:?}");
    assert_eq!(version(&curl(&jason)), "v2");

    // 3. A 2 s delay on jason's calls to ratings shows in his request.
    apply(state_dir, "examples/bookinfo-steps/2-ratings-delay.yaml", "ratings.yaml");
    eventually("the delay", || timed(&jason).2 >= 1.9);

    // 4. A 0.5 s timeout on reviews cuts it short.
    apply(state_dir, "examples/bookinfo-steps/3-reviews-timeout.yaml", "reviews.yaml");
    eventually("the timeout", || {
        let (body, status, _) = timed(&jason);
        (body.as_str(), status) == ("upstream request timeout", 504)
    });

    // 5. An abort: ratings answers jason with 500.
    apply(state_dir, "examples/bookinfo/reviews.yaml", "reviews.yaml");
    apply(state_dir, "examples/bookinfo-steps/4-ratings-abort.yaml", "ratings.yaml");
    eventually("the abort", || curl(&jason)["calls"][0]["status"] == 500);
    assert_eq!(curl(&jason)["calls"][0]["host"], "ratings");

    // 6. Circuit breaking on details: beyond one connection and one waiting request, 503.
    apply(state_dir, "examples/bookinfo-steps/5-details-circuit-breaker.yaml", "details.yaml");
    let details = ["-H", "Host: details", "http://127.0.11.1:9080/delay/1000"];
    eventually("the circuit breaker", || {
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6).map(|_| s.spawn(|| timed(&details).1)).collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        statuses.contains(&200) && statuses.iter().filter(|s| **s == 503).count() >= 2
    });

    // 7. Mirroring: v1 answers, v3's sidecar receives a copy of each request.
    apply(state_dir, "examples/bookinfo-steps/6-reviews-mirror.yaml", "reviews.yaml");
    eventually("v1 only", || (0..5).all(|_| version(&curl(&reviews)) == "v1"));
    std::thread::sleep(Duration::from_millis(500));
    let before = inbound_requests("127.0.10.5:15000");
    for _ in 0..10 {
        assert_eq!(version(&curl(&reviews)), "v1");
    }
    eventually("ten mirrored copies", || inbound_requests("127.0.10.5:15000") == before + 10);

    // 8. Mutual TLS: the application sees its caller's identity; plaintext straight to a
    // sidecar works until STRICT, then only the mesh's own callers get through.
    let caller = curl(&reviews)["caller"].as_str().unwrap_or("").to_owned();
    assert!(caller.contains("URI=spiffe://cluster.local/ns/default/sa/bookinfo-productpage"), "{caller}");
    let direct = ["http://127.0.10.3:9080/"];
    assert_eq!(timed(&direct).1, 200);
    apply(state_dir, "examples/bookinfo-steps/7-mtls-strict.yaml", "security.yaml");
    eventually("STRICT to refuse plaintext", || timed(&direct).1 == 0);
    assert_eq!(timed(&["http://127.0.0.1:8080/productpage"]).1, 200);
    assert_eq!(version(&curl(&reviews)), "v1");

    // 9. Authorization: details refuses /internal and below, and nothing else.
    apply(state_dir, "examples/bookinfo-steps/8-details-deny-path.yaml", "details-authz.yaml");
    let internal = ["-H", "Host: details", "http://127.0.11.1:9080/internal/config"];
    eventually("the DENY policy", || timed(&internal).1 == 403);
    assert_eq!(timed(&internal).0, "RBAC: access denied");
    assert_eq!(timed(&["-H", "Host: details", "http://127.0.11.1:9080/"]).1, 200);

    // 10. Metrics: a real Prometheus scrapes every proxy with the configuration `weft up`
    // wrote, and answers with what this traffic did.
    metrics(state_dir);
}

/// Runs Prometheus (Debian's package) on `weft up`'s scrape configuration.
struct Prometheus {
    child: std::process::Child,
    _data: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PROMETHEUS: &str = "127.0.12.1:9090";

/// One PromQL query's single value, if it has one.
fn promql(query: &str) -> Option<f64> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", &format!("http://{PROMETHEUS}/api/v1/query"), "--data-urlencode"])
        .arg(format!("query={query}"))
        .output()
        .ok()?;
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    answer["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn metrics(state_dir: &str) {
    // Requests with answers nothing else in the walk-through gives: 7 × 418 and 5 × 299
    // after 300 ms, from productpage to details.
    for _ in 0..7 {
        assert_eq!(timed(&["-H", "Host: details", "http://127.0.11.1:9080/status/418"]).1, 418);
    }
    for _ in 0..5 {
        assert_eq!(timed(&["-H", "Host: details", "http://127.0.11.1:9080/slow?status=299&delay=300"]).1, 299);
    }
    // The server's sidecar knows its caller's workload (peer metadata) and identity
    // (mutual TLS), on its own endpoint.
    let own = Command::new("curl").args(["-s", "http://127.0.10.2:15020/stats/prometheus"]).output();
    let own = own.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let line = own
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"418\""))
        .unwrap_or_else(|| panic!("no 418 series:\n{own}"));
    for label in [
        "reporter=\"destination\"",
        "source_workload=\"productpage-v1\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/bookinfo-productpage\"",
        "destination_workload=\"details-v1\"",
        "destination_service=\"details.default.svc.cluster.local\"",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        assert!(line.contains(label), "{label} in {line}");
    }
    assert!(line.ends_with("} 7"), "{line}");

    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = Path::new(state_dir).join("prometheus.yml");
    let _prometheus = Prometheus {
        child: Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.path().display()))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("prometheus (apt-get install prometheus): {e}")),
        _data: data,
    };
    let details = |code: &str, reporter: &str| {
        format!(
            "sum(istio_requests_total{{reporter=\"{reporter}\",destination_service_name=\"details\",response_code=~\"{code}\"}})"
        )
    };
    // Both sides counted every request: the client's sidecar as source, the server's as
    // destination.
    // (Each proxy is scraped on its own schedule: wait until both have been.)
    eventually("Prometheus to see the 418s and the 299s from both sides", || {
        promql(&details("418", "destination")) == Some(7.0)
            && promql(&details("418", "source")) == Some(7.0)
            && promql(&details("299", "destination")) == Some(5.0)
    });
    // A success rate, as dashboards compute it, over these requests: the 299s succeed,
    // the 418s do not.
    let share = promql(&format!("{} / {}", details("299", "destination"), details("418|299", "destination")));
    assert!(share.is_some_and(|s| (s - 5.0 / 12.0).abs() < 1e-9), "{share:?}");
    // The latency of the slow ones falls between Istio's 250 and 500 ms buckets.
    let p50 = promql(
        "histogram_quantile(0.5, sum by (le) (istio_request_duration_milliseconds_bucket{reporter=\"destination\",destination_service_name=\"details\",response_code=\"299\"}))",
    );
    assert!(p50.is_some_and(|q| (250.0..=500.0).contains(&q)), "p50 {p50:?}");
    // Which workload called details, as Kiali's graph asks it.
    let callers = promql(
        "count(count by (source_workload) (istio_requests_total{reporter=\"destination\",destination_workload=\"details-v1\"}))",
    );
    assert_eq!(callers, Some(1.0), "only productpage calls details");
}
