//! `weft migrate smcp`: OpenShift Service Mesh 2 control planes (in `tests/migrate/`) to
//! the OpenShift Service Mesh 3 `Istio` resource, with a precheck report that blocks on
//! what must be turned off first. `full.yaml` sets every field of a
//! ServiceMeshControlPlane: each one is carried over or reported, none dropped silently.

mod common;

use common::{run, stderr, stdout};
use serde_json::Value;

const DIR: &str = "crates/cli/tests/migrate";

/// The YAML documents of `text`, as JSON.
fn docs(text: &str) -> Vec<Value> {
    weft_api::yaml::parse_stream(text).filter_map(Result::ok).map(|d| d.value).filter(|v| !v.is_null()).collect()
}

fn migrate(file: &str) -> (i32, Vec<Value>, String) {
    let out = run(&["migrate", "smcp", &format!("{DIR}/{file}")]);
    (out.status.code().unwrap_or(-1), docs(&stdout(&out)), stderr(&out))
}

#[test]
fn a_ready_control_plane_becomes_an_istio_resource() {
    let (code, resources, report) = migrate("ready.yaml");
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("Precheck passed"), "{report}");
    let istio = &resources[0];
    assert_eq!((istio["apiVersion"].as_str(), istio["kind"].as_str()), (Some("sailoperator.io/v1"), Some("Istio")));
    // ClusterWide: the default Istio, beside the old control plane in its namespace.
    assert_eq!(istio["metadata"]["name"], "default");
    let spec = &istio["spec"];
    assert_eq!(spec["namespace"], "istio-system");
    assert_eq!(spec["version"], "v1.24-latest");
    assert_eq!(spec["updateStrategy"]["type"], "RevisionBased");
    let mesh = &spec["values"]["meshConfig"];
    assert_eq!(mesh["trustDomain"], "prod.example.com");
    assert_eq!(mesh["trustDomainAliases"][0], "cluster.local");
    assert_eq!(mesh["enableAutoMtls"], true);
    // In MeshConfig's spelling, which a control plane reads.
    assert_eq!(mesh["tlsDefaults"]["minProtocolVersion"], "TLSV1_3");
    assert_eq!(mesh["outboundTrafficPolicy"]["mode"], "REGISTRY_ONLY");
    assert_eq!(
        (mesh["accessLogFile"].as_str(), mesh["accessLogEncoding"].as_str()),
        (Some("/dev/stdout"), Some("JSON"))
    );
    assert_eq!(mesh["defaultConfig"]["concurrency"], 2);
    assert_eq!(mesh["extensionProviders"][0]["opentelemetry"]["port"], 4317);
    // The member roll: its members by a label they are told to get, its selectors as they are.
    assert_eq!(mesh["discoverySelectors"][0]["matchLabels"]["istio-discovery"], "default");
    assert_eq!(mesh["discoverySelectors"][1]["matchLabels"]["team"], "payments");
    for ns in ["istio-system", "bookinfo", "shop"] {
        assert!(report.contains(&format!("oc label namespace {ns} istio-discovery=default")), "{report}");
    }
    let global = &spec["values"]["global"];
    assert_eq!(global["multiCluster"]["clusterName"], "east");
    assert_eq!(global["network"], "network-east");
    assert_eq!(global["proxy"]["excludeIPRanges"], "10.0.0.0/8,172.16.0.0/12");
    // SMCP sampling is in hundredths of a percent.
    assert_eq!(spec["values"]["pilot"]["traceSampling"], 0.5);
    // dataPlane.mtls: a mesh-wide STRICT PeerAuthentication, and plaintext to the API server.
    assert_eq!(resources[1]["kind"], "PeerAuthentication");
    assert_eq!(resources[1]["metadata"]["namespace"], "istio-system");
    assert_eq!(resources[1]["spec"]["mtls"]["mode"], "STRICT");
    assert_eq!(resources[2]["spec"]["host"], "kubernetes.default.svc.cluster.local");
    assert_eq!(resources[2]["spec"]["trafficPolicy"]["tls"]["mode"], "DISABLE");

    // The Istio resources are valid by Istio's own schemas.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("ossm3.yaml");
    let written = run(&["migrate", "smcp", &format!("{DIR}/ready.yaml"), "-o", &out.to_string_lossy()]);
    assert_eq!(written.status.code(), Some(0));
    assert!(stdout(&written).is_empty());
    let valid = run(&["validate", &out.to_string_lossy()]);
    assert_eq!(valid.status.code(), Some(0), "{}{}", stdout(&valid), stderr(&valid));
}

#[test]
fn what_must_be_turned_off_first_blocks_with_its_fix() {
    let (code, resources, report) = migrate("default.yaml");
    assert_eq!(code, 1, "{report}");
    // The resource is still written, for review.
    assert_eq!(resources[0]["kind"], "Istio");
    // MultiTenant: the Istio resource keeps the control plane's name.
    assert_eq!(resources[0]["metadata"]["name"], "basic");
    let file = format!("{DIR}/default.yaml");
    for (field, line, fix) in [
        ("spec.version", Some(10), "spec.version: v2.6"),
        ("spec.gateways.openshiftRoute.enabled", Some(13), "spec.gateways.openshiftRoute.enabled: false"),
        ("spec.gateways.enabled", None, "gateway injection"),
        ("spec.addons.prometheus.enabled", None, "spec.addons.prometheus.enabled: false"),
        ("spec.addons.grafana.enabled", None, "spec.addons.grafana.enabled: false"),
        ("spec.addons.kiali.enabled", None, "spec.addons.kiali.enabled: false"),
        ("spec.tracing.type", None, "spec.tracing.type: None"),
        ("spec.security.manageNetworkPolicy", None, "spec.security.manageNetworkPolicy: false"),
        ("spec.mode", None, "spec.mode: ClusterWide"),
        ("spec.techPreview.sidecarInjectorWebhook", Some(15), "remove spec.techPreview.sidecarInjectorWebhook"),
        ("ServiceMeshPeer/green-mesh", Some(18), "remove the federation resources"),
    ] {
        let entry = report
            .lines()
            .position(|l| l.trim_start().starts_with(&format!("✘ {field} (")))
            .unwrap_or_else(|| panic!("{field} not reported:\n{report}"));
        let lines: Vec<&str> = report.lines().collect();
        if let Some(line) = line {
            assert!(lines[entry].contains(&format!("({file}:{line})")), "{}", lines[entry]);
        }
        assert!(lines[entry + 1].contains("fix:") && lines[entry + 1].contains(fix), "{field}: {}", lines[entry + 1]);
    }
    assert!(report.contains("Precheck: 11 setting(s) must change"), "{report}");
}

#[test]
fn every_field_is_carried_over_or_reported() {
    let (code, resources, report) = migrate("full.yaml");
    assert_eq!(code, 0, "{report}");
    assert!(!report.contains("not a field this migration knows"), "{report}");
    let values = &resources[0]["spec"]["values"];
    let mesh = &values["meshConfig"];
    for (path, expected) in [
        (&mesh["discoverySelectors"][0]["matchLabels"]["istio-discovery"], "enabled"),
        (&mesh["connectTimeout"], "5s"),
        (&mesh["protocolDetectionTimeout"], "100ms"),
        (&mesh["dnsRefreshRate"], "300s"),
        (&mesh["accessLogFormat"], "%START_TIME% %RESPONSE_CODE%"),
        (&mesh["defaultConfig"]["interceptionMode"], "REDIRECT"),
        (&values["global"]["proxy"]["excludeOutboundPorts"], "5432"),
        (&values["global"]["proxy"]["componentLogLevel"], "upstream:debug"),
        (&values["global"]["logging"]["level"], "default:info,ads:debug"),
        (&values["pilot"]["keepaliveMaxServerConnectionAge"], "30m"),
        (&values["sidecarInjectorWebhook"]["injectedAnnotations"]["example.com/owner"], "mesh"),
    ] {
        assert_eq!(path, expected, "{}", resources[0]);
    }
    assert_eq!(values["global"]["multiCluster"]["enabled"], true);
    assert_eq!(values["global"]["meshNetworks"]["network-east"]["gateways"][0]["port"], 15443);
    assert_eq!(values["pilot"]["traceSampling"], 1.0);
    // No dataPlane mTLS: no PeerAuthentication.
    assert_eq!(resources.len(), 1);
    // What has no equivalent is named, with its line.
    for field in [
        "spec.profiles (",
        "spec.cluster.meshExpansion.enabled (",
        "spec.proxy.networking.initialization.type (",
        "spec.proxy.networking.protocol.autoDetect.inbound (",
        "spec.security.identity.type (",
        "spec.security.controlPlane.tls.maxProtocolVersion (",
        "spec.security.certificateAuthority.istiod.workloadCertTTLMax (",
        "spec.runtime.components.pilot.deployment.replicas (",
        "spec.proxy.runtime.readiness.statusPort (",
    ] {
        assert!(report.lines().any(|l| l.trim_start().starts_with(&format!("- {field}"))), "{field}:\n{report}");
    }
}

#[test]
fn a_file_without_a_control_plane_is_an_error() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("roll.yaml");
    std::fs::write(
        &file,
        "apiVersion: maistra.io/v1\nkind: ServiceMeshMemberRoll\nmetadata: {name: default}\nspec: {members: [a]}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = run(&["migrate", "smcp", &file.to_string_lossy()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("no ServiceMeshControlPlane"), "{}", stderr(&out));
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: maistra.io/v2\nkind: ServiceMeshControlPlane\nspec: [unclosed\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let out = run(&["migrate", "smcp", &bad.to_string_lossy()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("bad.yaml:3"), "{}", stderr(&out));
}
