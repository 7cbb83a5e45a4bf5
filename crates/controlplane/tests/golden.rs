//! Golden files: Istio YAML in `tests/golden/NAME.yaml`, the Envoy resources weft
//! translates it to, as Envoy's own JSON, in `NAME.json`. A change in translation shows
//! up as a reviewable diff; `WEFT_BLESS=1` rewrites the files.
//!
//! The JSON is produced from Envoy's protobuf descriptors (shipped with `envoy-types`),
//! so it is exactly what Envoy's `/config_dump` would print for the same resources.

use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use weft_controlplane::node::{ProxyIdentity, Role};
use weft_controlplane::snapshot::Snapshot;
use weft_controlplane::testing::proxy;
use weft_controlplane::translate;

/// Envoy's descriptors, from the `envoy-types` crate this build uses.
fn descriptors() -> DescriptorPool {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--manifest-path",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        ])
        .output()
        .unwrap_or_else(|e| panic!("cargo metadata: {e}"));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("cargo metadata: {e}"));
    let manifest = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .unwrap_or_else(|| panic!("envoy-types not in cargo metadata"));
    let bin = Path::new(manifest).parent().unwrap_or(Path::new(".")).join("src/generated/types.bin");
    let bytes = std::fs::read(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    DescriptorPool::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("{e}"))
}

fn to_json<M: Message + prost::Name>(pool: &DescriptorPool, message: &M) -> serde_json::Value {
    let descriptor =
        pool.get_message_by_name(&M::full_name()).unwrap_or_else(|| panic!("no descriptor for {}", M::full_name()));
    let dynamic =
        DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()).unwrap_or_else(|e| panic!("{e}"));
    let mut out = serde_json::Serializer::new(Vec::new());
    dynamic
        .serialize_with_options(&mut out, &SerializeOptions::new().skip_default_fields(true))
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_slice(&out.into_inner()).unwrap_or_default()
}

fn render(
    pool: &DescriptorPool,
    snapshot: &Snapshot,
    proxy: &ProxyIdentity,
    listeners: &[String],
) -> serde_json::Value {
    let r = translate::resources_for(snapshot, proxy, listeners);
    serde_json::json!({
        "listeners": r.listeners.iter().map(|x| to_json(pool, x)).collect::<Vec<_>>(),
        "routes": r.routes.iter().map(|x| to_json(pool, x)).collect::<Vec<_>>(),
        "clusters": r.clusters.iter().map(|x| to_json(pool, x)).collect::<Vec<_>>(),
        "endpoints": r.endpoints.iter().map(|x| to_json(pool, x)).collect::<Vec<_>>(),
    })
}

#[test]
fn translation_matches_the_golden_files() {
    let pool = descriptors();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in cases {
        let yaml = std::fs::read_to_string(&case).unwrap_or_else(|e| panic!("{e}"));
        let parsed = weft_api::parse_text(&case.to_string_lossy(), &yaml);
        assert!(!parsed.has_errors(), "{}: {:?}", case.display(), parsed.diagnostics);
        let snapshot = Snapshot::new(1, parsed.resources);
        let mut got = serde_json::json!({
            "sidecar app=client": render(&pool, &snapshot, &proxy(Role::Sidecar, &[("app", "client")]), &[]),
            "gateway istio=ingressgateway": render(&pool, &snapshot, &proxy(Role::Gateway, &[("istio", "ingressgateway")]), &[]),
            "proxyless asking for reviews:9080": render(&pool, &snapshot, &proxy(Role::Proxyless, &[]), &["reviews.default.svc.cluster.local:9080".to_owned()]),
        });
        // A sidecar with a workload identity (the SDS secrets) is also given mutual TLS.
        let mut with_identity = proxy(Role::Sidecar, &[("app", "client")]);
        with_identity.sds = true;
        got["sidecar app=client with an identity"] = render(&pool, &snapshot, &with_identity, &[]);
        let text = serde_json::to_string_pretty(&got).unwrap_or_default() + "\n";
        let golden = case.with_extension("json");
        if std::env::var_os("WEFT_BLESS").is_some() {
            std::fs::write(&golden, &text).unwrap_or_else(|e| panic!("{e}"));
        } else if std::fs::read_to_string(&golden).ok().as_deref() != Some(text.as_str()) {
            failures.push(format!(
                "{} differs from {} (WEFT_BLESS=1 rewrites it; review the diff)",
                case.display(),
                golden.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
