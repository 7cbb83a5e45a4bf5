//! `weft up` with no arguments runs the bundled Bookinfo example: a control plane with
//! its CA, six applications with their sidecars and an ingress gateway; routing follows
//! the Istio YAML; SIGTERM stops everything and leaves no process behind.

mod common;

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

    let _ = Command::new("kill").args(["-TERM", &up.id().to_string()]).status();
    let stopping = Instant::now();
    while up.try_wait().ok().flatten().is_none() {
        assert!(stopping.elapsed() < Duration::from_secs(60), "weft up did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(output().contains("✔ stopped"), "{}", output());
    assert_eq!(processes_mentioning(&state_dir), Vec::<String>::new(), "proxies or control plane left behind");
    assert_eq!(processes_mentioning("demo-app --listen 127.0.0.1:1908"), Vec::<String>::new(), "applications left behind");
}
