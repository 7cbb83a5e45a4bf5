//! Real-world and broken configuration through the real binary: every Istio sample
//! validates, coherent sample sets analyze clean, and each broken input gets exactly the
//! diagnostics recorded beside it.

mod common;

use std::path::Path;

use common::{istio_samples, run, run_in, stderr, stdout};

/// Runs `weft analyze FILE` in the corpus directory and renders what a user sees:
/// stdout, then the exit status.
fn observed(dir: &Path, file: &str) -> String {
    let out = run_in(dir, &["analyze", file], None);
    format!("{}exit: {}\n", stdout(&out), out.status.code().unwrap_or(-1))
}

#[test]
fn each_invalid_input_gets_exactly_its_expected_diagnostics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/invalid");
    let bless = std::env::var_os("WEFT_BLESS").is_some();
    let mut inputs: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".json"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 25, "the corpus shrank: {inputs:?}");
    let mut failures = Vec::new();
    for input in &inputs {
        let expected_path = dir.join(format!("{input}.expected"));
        let got = observed(&dir, input);
        if bless {
            std::fs::write(&expected_path, &got).unwrap_or_else(|e| panic!("{e}"));
            continue;
        }
        let want = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| format!("<missing {}>", expected_path.display()));
        if got != want {
            failures.push(format!("--- {input}: expected\n{want}--- {input}: got\n{got}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} inputs differ (WEFT_BLESS=1 rewrites them):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_istio_sample_passes_validate() {
    let samples = istio_samples();
    let out = run(&["validate", "-o", "json", samples.to_str().unwrap_or_default()]);
    let findings: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)));
    let errors: Vec<&serde_json::Value> =
        findings.as_array().into_iter().flatten().filter(|f| f["level"] == "Error").collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(out.status.success(), "{}", stderr(&out));
    // The samples hold more than two hundred Istio, Gateway API and Kubernetes objects.
    let count: usize = stderr(&out).split_whitespace().find_map(|w| w.parse().ok()).unwrap_or(0);
    assert!(count > 200, "only {count} resources were read: {}", stderr(&out));
}

fn assert_analyzes_clean(paths: &[&Path]) {
    let mut args = vec!["analyze"];
    args.extend(paths.iter().map(|p| p.to_str().unwrap_or_default()));
    let out = run(&args);
    let text = stdout(&out);
    assert!(out.status.success() && !text.contains("Error ["), "{args:?}:\n{text}{}", stderr(&out));
}

#[test]
fn bookinfo_with_each_alternative_virtual_service_analyzes_clean() {
    let bookinfo = istio_samples().join("bookinfo");
    let platform = bookinfo.join("platform/kube/bookinfo.yaml");
    let gateway = bookinfo.join("networking/bookinfo-gateway.yaml");
    let mut alternatives: Vec<_> = std::fs::read_dir(bookinfo.join("networking"))
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("virtual-service-") || n.starts_with("fault-injection"))
        })
        .collect();
    alternatives.sort();
    assert!(alternatives.len() >= 10);
    for rules in ["destination-rule-all.yaml", "destination-rule-all-mtls.yaml"] {
        let rules = bookinfo.join("networking").join(rules);
        for vs in &alternatives {
            assert_analyzes_clean(&[&platform, &gateway, &rules, vs]);
        }
    }
}

#[test]
fn bookinfo_through_the_gateway_api_analyzes_clean() {
    let bookinfo = istio_samples().join("bookinfo");
    let platform = bookinfo.join("platform/kube/bookinfo.yaml");
    let versions = bookinfo.join("platform/kube/bookinfo-versions.yaml");
    let gateway = bookinfo.join("gateway-api/bookinfo-gateway.yaml");
    for route in [
        "route-all-v1.yaml",
        "route-reviews-v1.yaml",
        "route-reviews-90-10.yaml",
        "route-reviews-50-v3.yaml",
        "route-reviews-v3.yaml",
    ] {
        assert_analyzes_clean(&[&platform, &versions, &gateway, &bookinfo.join("gateway-api").join(route)]);
    }
}

#[test]
fn self_contained_sample_directories_analyze_clean() {
    let samples = istio_samples();
    for dir in [
        "curl",
        "external",
        "grpc-echo",
        "health-check",
        "httpbin",
        "jwt-server",
        "mtls-echo",
        "open-telemetry",
        "sleep",
        "websockets",
    ] {
        assert_analyzes_clean(&[&samples.join(dir)]);
    }
    let hello = samples.join("helloworld");
    assert_analyzes_clean(&[&hello.join("helloworld.yaml"), &hello.join("helloworld-gateway.yaml")]);
    assert_analyzes_clean(&[&hello.join("helloworld.yaml"), &hello.join("gateway-api/helloworld-gateway.yaml")]);
}

#[test]
fn the_bundled_example_analyzes_clean() {
    assert_analyzes_clean(&[&common::workspace_root().join("examples/bookinfo")]);
}
