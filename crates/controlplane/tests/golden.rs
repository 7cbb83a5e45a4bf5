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

/// Every string-to-string map anywhere in a document: as a workload's labels, it matches
/// every selector the document has.
fn string_maps(value: &serde_json::Value, out: &mut Vec<Vec<(String, String)>>) {
    match value {
        serde_json::Value::Object(map) => {
            let pairs: Vec<(String, String)> =
                map.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect();
            if !pairs.is_empty() && pairs.len() == map.len() {
                out.push(pairs);
            }
            map.values().for_each(|v| string_maps(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| string_maps(v, out)),
        _ => {}
    }
}

/// The YAML inputs: the golden files, and Istio's samples when present.
fn inputs() -> Vec<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let samples = std::env::var_os("WEFT_ISTIO_SAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../../../shared/istio-samples"));
    let mut files = Vec::new();
    let mut dirs = vec![manifest.join("tests/golden"), samples];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Every kind that selects workloads by label, each by a key of its own.
const SELECTORS: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints: [{address: 10.0.0.1, labels: {app: reviews, version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{sourceLabels: {tier: canary}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress: [{port: {number: 9080, protocol: HTTP, name: http}, bind: 127.0.0.2, hosts: [./*]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: narrow}
spec:
  workloadSelector: {labels: {scope: narrow}}
  egress: [{port: {number: 9080, protocol: HTTP, name: http}, bind: 127.0.0.3, hosts: [./nothing.default.svc.cluster.local]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict}
spec:
  selector: {matchLabels: {mtls: strict}}
  mtls: {mode: STRICT}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: logged}
spec:
  selector: {matchLabels: {logs: all}}
  accessLogging: [{providers: [{name: envoy}]}]
";

/// Sidecars share an outbound half when they differ only in labels nothing selects on:
/// for every input, a sidecar labelled with each string map the input has (so that
/// whatever selects on labels matches it) gets the same outbound half from its labels as
/// the snapshot projects them as from all of them.
#[test]
fn a_sidecars_outbound_half_depends_only_on_the_labels_the_configuration_selects_on() {
    let mut checked = 0;
    let files = inputs().into_iter().map(|f| (std::fs::read_to_string(&f).unwrap_or_default(), f));
    for (yaml, file) in std::iter::once((SELECTORS.to_owned(), PathBuf::from("SELECTORS"))).chain(files) {
        let parsed = weft_api::parse_text(&file.to_string_lossy(), &yaml);
        assert!(file != Path::new("SELECTORS") || !parsed.has_errors(), "{:?}", parsed.diagnostics);
        if parsed.has_errors() || parsed.resources.is_empty() {
            continue;
        }
        let snapshot = Snapshot::new(1, parsed.resources);
        let mut label_sets = vec![vec![("app".to_owned(), "client".to_owned())]];
        for doc in weft_api::yaml::parse_stream(&yaml).flatten() {
            string_maps(&doc.value, &mut label_sets);
        }
        for labels in &label_sets {
            for sds in [false, true] {
                let pairs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let mut sidecar = proxy(Role::Sidecar, &pairs);
                sidecar.sds = sds;
                let all = translate::outbound_view(&sidecar);
                let projected = translate::outbound_identity(&snapshot, &sidecar);
                let from_all = translate::half_for(&snapshot, &all, &[], translate::Half::Outbound);
                let from_projected = translate::half_for(&snapshot, &projected, &[], translate::Half::Outbound);
                let encode = |r: &translate::Resources| {
                    (
                        r.listeners.iter().map(Message::encode_to_vec).collect::<Vec<_>>(),
                        r.routes.iter().map(Message::encode_to_vec).collect::<Vec<_>>(),
                        r.clusters.iter().map(Message::encode_to_vec).collect::<Vec<_>>(),
                        r.endpoints.iter().map(Message::encode_to_vec).collect::<Vec<_>>(),
                    )
                };
                assert!(
                    encode(&from_all) == encode(&from_projected),
                    "{}: a sidecar labelled {labels:?} (sds {sds}) gets another outbound half from the labels kept ({:?})",
                    file.display(),
                    projected.labels
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 10, "only {checked} cases");
}
