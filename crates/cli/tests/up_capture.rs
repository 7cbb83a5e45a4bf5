//! `weft up --capture iptables` runs `examples/capture` as pods would run: each workload
//! in a network namespace of its own at its WorkloadEntry's address, its application
//! unchanged (it listens on 0.0.0.0:9080 and calls the next service by name), Istio's
//! iptables rules sending its traffic through its sidecar. A request from the host goes
//! productpage → reviews → ratings over mutual TLS; each application sees its caller's
//! SPIFFE identity. SIGTERM removes the namespaces, the host's link and routes.
//!
//! Needs root, `ip`, `iptables` and `setpriv` (`scripts/test` installs iptables). Under
//! `CI=true` a missing capability fails the test instead of skipping it.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn netns() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

#[test]
fn weft_up_captures_unchanged_applications_with_iptables() {
    if !common::capture_capable() {
        return;
    }
    let state = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let state_dir = state.path().to_string_lossy().into_owned();
    let example = common::workspace_root().join("examples/capture");
    let out_path = state.path().join("up.out");
    let out = std::fs::File::create(&out_path).unwrap_or_else(|e| panic!("{e}"));
    let mut up = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["up", "--capture", "iptables", "-f", &example.to_string_lossy(), "--state-dir", &state_dir])
        .stdout(Stdio::from(out.try_clone().unwrap_or_else(|e| panic!("{e}"))))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stop = common::StopOnDrop(up.id());
    let started = Instant::now();
    let output = || std::fs::read_to_string(&out_path).unwrap_or_default();
    while !output().contains("Ctrl-C stops the mesh") {
        assert!(started.elapsed() < common::mesh::STARTUP, "weft up did not finish starting:\n{}", output());
        assert!(up.try_wait().ok().flatten().is_none(), "weft up exited:\n{}", output());
        std::thread::sleep(Duration::from_millis(200));
    }
    let shown = output();
    assert!(!shown.contains('✘'), "something did not start:\n{shown}");
    assert!(shown.contains("Try:  curl http://10.77.0.1:9080/"), "{shown}");
    assert!(netns().contains("weft-hub"), "{}", netns());

    // From the host, as a client outside the mesh: the product page's sidecar takes the
    // request (captured inbound), the application calls reviews by name (captured
    // outbound), and so on to ratings, over mutual TLS.
    let mut page = serde_json::Value::Null;
    let deadline = Instant::now() + common::mesh::STARTUP;
    while Instant::now() < deadline {
        let out = Command::new("curl").args(["-s", "--max-time", "10", "http://10.77.0.1:9080/"]).output();
        page = out.ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or_default();
        let ratings = &page["calls"][0]["answer"]["calls"][0]["answer"];
        if ratings["name"] == "ratings" {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let reviews = &page["calls"][0]["answer"];
    let ratings = &reviews["calls"][0]["answer"];
    assert_eq!(
        (page["name"].as_str(), reviews["name"].as_str(), ratings["name"].as_str()),
        (Some("productpage"), Some("reviews"), Some("ratings")),
        "{page}"
    );
    assert_eq!(page["calls"][0]["host"], "reviews", "the application called the service by name: {page}");
    // The sidecar added the request id on the way in; the applications carried it on.
    let id = page["headers"]["x-request-id"].as_str().unwrap_or_else(|| panic!("no request id: {page}"));
    assert_eq!(ratings["headers"]["x-request-id"], id, "{page}");
    for (answer, caller) in
        [(reviews, "ns/default/sa/bookinfo-productpage"), (ratings, "ns/default/sa/bookinfo-reviews")]
    {
        let seen = answer["caller"].as_str().unwrap_or_default();
        assert!(
            seen.contains(&format!("URI=spiffe://cluster.local/{caller}")),
            "{} saw {seen:?}: {page}",
            answer["name"]
        );
    }

    // SIGTERM: everything stops and the host is as it was.
    drop(stop);
    let deadline = Instant::now() + Duration::from_secs(60);
    while up.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "weft up did not stop:\n{}", output());
        std::thread::sleep(Duration::from_millis(200));
    }
    let left = netns();
    assert!(!left.lines().any(|l| l.starts_with("weft-w") || l.starts_with("weft-hub")), "{left}");
    let link = Command::new("ip").args(["link", "show", "weft0"]).output().map(|o| o.status.success());
    assert_eq!(link.ok(), Some(false), "the host's link to the hub is still there");
    let routes = Command::new("ip").args(["route"]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    assert!(!routes.unwrap_or_default().contains("10.77.0."), "routes to the workloads are still there");
    assert!(!std::path::Path::new("/etc/netns/weft-w0").exists());
}
