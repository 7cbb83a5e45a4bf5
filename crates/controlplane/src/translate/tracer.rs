//! Tracing as Istio configures it: the Telemetry API's `tracing` (root namespace, then
//! the workload's namespace, then Telemetries selecting the workload, each level
//! overriding what it sets; `match.mode` CLIENT is outbound, SERVER inbound) over
//! meshConfig's `defaultProviders.tracing`. The provider must be one of meshConfig's
//! `extensionProviders` with `opentelemetry`: the HTTP connection managers then get
//! Envoy's OpenTelemetry tracer exporting to the collector's cluster
//! (`outbound|4317||otel-collector.observability.svc.cluster.local`), with the
//! sampling percentage from the Telemetry, else meshConfig's
//! `defaultConfig.tracing.sampling`, else 1%, and Istio's span tags.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{GrpcService, grpc_service};
use envoy_types::pb::envoy::config::trace::v3::{OpenTelemetryConfig, tracing as trace};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use envoy_types::pb::envoy::r#type::tracing::v3::{CustomTag, custom_tag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::util::pack_any;
use weft_api::istio::LogSelectorMode;

use crate::mesh::OpenTelemetryProvider;
use crate::node::ProxyIdentity;
use crate::snapshot::Snapshot;

/// Istio's sampling percentage when nothing sets one (`PILOT_TRACE_SAMPLING`).
const DEFAULT_SAMPLING: f64 = 1.0;

/// What the Telemetry API and meshConfig say about one side's tracing.
#[derive(Debug, Clone, Default, PartialEq)]
struct Spec {
    provider: Option<String>,
    sampling: Option<f64>,
    disable_reporting: bool,
    custom_tags: BTreeMap<String, weft_api::istio::CustomTag>,
    istio_tags: bool,
}

/// The tracing of a proxy's outbound (client) and inbound (server) connection managers.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Tracers {
    pub client: Option<Tracing>,
    pub server: Option<Tracing>,
}

/// The tracing that applies to `proxy`.
pub(super) fn for_proxy(snapshot: &Snapshot, proxy: &ProxyIdentity) -> Tracers {
    let base = Spec {
        provider: snapshot.mesh.default_providers.as_ref().and_then(|d| d.tracing.first().cloned()),
        istio_tags: true,
        ..Default::default()
    };
    let (mut client, mut server) = (base.clone(), base);
    // Least specific first, so that the more specific override.
    for (_, t) in super::telemetry::in_order(snapshot, proxy) {
        for entry in &t.tracing {
            let mode = entry.r#match.as_ref().and_then(|m| m.mode).unwrap_or(LogSelectorMode::ClientAndServer);
            for (side, applies) in
                [(&mut client, mode != LogSelectorMode::Server), (&mut server, mode != LogSelectorMode::Client)]
            {
                if !applies {
                    continue;
                }
                if let Some(p) = entry.providers.first().and_then(|p| p.name.clone()) {
                    side.provider = Some(p);
                }
                if let Some(s) = entry.random_sampling_percentage {
                    side.sampling = Some(s);
                }
                if let Some(d) = entry.disable_span_reporting {
                    side.disable_reporting = d;
                }
                if !entry.custom_tags.is_empty() {
                    side.custom_tags = entry.custom_tags.clone();
                }
                if let Some(e) = entry.enable_istio_tags {
                    side.istio_tags = e;
                }
            }
        }
    }
    Tracers { client: build(snapshot, proxy, &client), server: build(snapshot, proxy, &server) }
}

fn build(snapshot: &Snapshot, proxy: &ProxyIdentity, spec: &Spec) -> Option<Tracing> {
    if spec.disable_reporting {
        return None;
    }
    let name = spec.provider.as_deref()?;
    let Some(provider) = snapshot.mesh.extension_providers.iter().find(|p| p.name == name) else {
        tracing::warn!("tracing provider {name:?} is not among meshConfig's extensionProviders; no tracing");
        return None;
    };
    let Some(otel) = &provider.opentelemetry else {
        tracing::warn!(
            "tracing provider {name:?} is not an opentelemetry provider, the kind weft supports; no tracing"
        );
        return None;
    };
    let sampling = spec
        .sampling
        .or_else(|| {
            let s = snapshot.mesh.default_config.as_ref()?.tracing.as_ref()?.sampling?;
            Some(if s > 100.0 { DEFAULT_SAMPLING } else { s }).filter(|s| *s > 0.0)
        })
        .unwrap_or(DEFAULT_SAMPLING)
        .clamp(0.0, 100.0);
    let mut tags: Vec<CustomTag> = spec.custom_tags.iter().filter_map(|(name, t)| custom(name, t)).collect();
    if spec.istio_tags {
        tags.extend(istio_tags(snapshot, proxy));
    }
    tags.sort_by(|a, b| a.tag.cmp(&b.tag));
    tags.dedup_by(|a, b| a.tag == b.tag);
    Some(Tracing {
        provider: Some(trace::Http {
            name: "envoy.tracers.opentelemetry".into(),
            config_type: Some(trace::http::ConfigType::TypedConfig(pack_any(exporter(proxy, otel)))),
        }),
        client_sampling: Some(Percent { value: 100.0 }),
        random_sampling: Some(Percent { value: sampling }),
        overall_sampling: Some(Percent { value: 100.0 }),
        max_path_tag_length: otel
            .max_tag_length
            .filter(|l| *l > 0)
            .map(|value| envoy_types::pb::google::protobuf::UInt32Value { value }),
        custom_tags: tags,
        ..Default::default()
    })
}

/// The OpenTelemetry tracer exporting to the provider's collector.
fn exporter(proxy: &ProxyIdentity, otel: &OpenTelemetryProvider) -> OpenTelemetryConfig {
    // `service` is `host` or `namespace/host`.
    let host = otel.service.rsplit_once('/').map_or(otel.service.as_str(), |(_, h)| h);
    let host = crate::registry::resolve_host(host, &proxy.namespace);
    OpenTelemetryConfig {
        grpc_service: Some(GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
                cluster_name: super::cluster::cluster_name("outbound", u32::from(otel.port), "", &host),
                authority: host.clone(),
                ..Default::default()
            })),
            ..Default::default()
        }),
        // Istio's service cluster: `<app>.<namespace>`.
        service_name: format!("{}.{}", proxy.labels.get("app").unwrap_or(&proxy.workload), proxy.namespace),
        ..Default::default()
    }
}

/// Istio's tags on every span: the workload's canonical service and revision, its
/// namespace, the mesh and the cluster.
fn istio_tags(snapshot: &Snapshot, proxy: &ProxyIdentity) -> Vec<CustomTag> {
    let label = |keys: &[&str]| keys.iter().find_map(|k| proxy.labels.get(*k).cloned());
    let service = label(&["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"])
        .unwrap_or_else(|| proxy.workload.clone());
    let revision = label(&["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"])
        .unwrap_or_else(|| "latest".into());
    let mesh_id = snapshot.mesh.trust_domain.clone().unwrap_or_else(|| "cluster.local".into());
    [
        ("istio.canonical_revision", revision),
        ("istio.canonical_service", service),
        ("istio.cluster_id", proxy.cluster_id.clone()),
        ("istio.mesh_id", mesh_id),
        ("istio.namespace", proxy.namespace.clone()),
    ]
    .into_iter()
    .map(|(tag, value)| CustomTag {
        tag: tag.into(),
        r#type: Some(custom_tag::Type::Literal(custom_tag::Literal { value })),
    })
    .collect()
}

/// A Telemetry `customTags` entry.
fn custom(name: &str, t: &weft_api::istio::CustomTag) -> Option<CustomTag> {
    let r#type = if let Some(l) = &t.literal {
        custom_tag::Type::Literal(custom_tag::Literal { value: l.value.clone().unwrap_or_default() })
    } else if let Some(e) = &t.environment {
        custom_tag::Type::Environment(custom_tag::Environment {
            name: e.name.clone().unwrap_or_default(),
            default_value: e.default_value.clone().unwrap_or_default(),
        })
    } else if let Some(h) = &t.header {
        custom_tag::Type::RequestHeader(custom_tag::Header {
            name: h.name.clone().unwrap_or_default(),
            default_value: h.default_value.clone().unwrap_or_default(),
        })
    } else {
        tracing::warn!("tracing custom tag {name:?}: only literal, environment and header tags are supported");
        return None;
    };
    Some(CustomTag { tag: name.to_owned(), r#type: Some(r#type) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use prost::Message;

    const MESH: &str = r#"
extensionProviders:
- name: otel
  opentelemetry: {service: observability/otel-collector.observability.svc.cluster.local, port: 4317}
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
defaultConfig: {tracing: {sampling: 10}}
"#;

    fn telemetry(name: &str, namespace: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
        )
    }

    fn tracers(mesh: &str, telemetries: &str) -> Tracers {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("mesh.yaml");
        std::fs::write(&path, mesh).unwrap_or_else(|e| panic!("{e}"));
        let mut snapshot = Snapshot::new(1, weft_api::parse_text("t.yaml", telemetries).resources);
        snapshot.mesh = std::sync::Arc::new(crate::mesh::load(&path).unwrap_or_else(|e| panic!("{e}")));
        let proxy = crate::testing::proxy(crate::node::Role::Sidecar, &[("app", "reviews"), ("version", "v2")]);
        for_proxy(&snapshot, &proxy)
    }

    fn sampling(t: &Option<Tracing>) -> Option<f64> {
        t.as_ref().and_then(|t| t.random_sampling.as_ref()).map(|p| p.value)
    }

    #[test]
    fn no_provider_no_tracing() {
        assert_eq!(tracers(MESH, ""), Tracers::default());
        // A provider of a kind weft does not export to configures nothing.
        let zipkin = telemetry("t", "istio-system", "{tracing: [{providers: [{name: zipkin}]}]}");
        assert_eq!(tracers(MESH, &zipkin), Tracers::default());
    }

    #[test]
    fn the_opentelemetry_provider_exports_to_its_collector() {
        let t = tracers(MESH, &telemetry("t", "istio-system", "{tracing: [{providers: [{name: otel}]}]}"));
        let client = t.client.as_ref().unwrap_or_else(|| panic!("no client tracing"));
        let provider = client.provider.as_ref().unwrap_or_else(|| panic!("no provider"));
        assert_eq!(provider.name, "envoy.tracers.opentelemetry");
        let Some(trace::http::ConfigType::TypedConfig(any)) = &provider.config_type else { panic!("{provider:?}") };
        let config = OpenTelemetryConfig::decode(any.value.as_slice()).unwrap_or_else(|e| panic!("{e}"));
        let Some(grpc_service::TargetSpecifier::EnvoyGrpc(g)) = config.grpc_service.and_then(|g| g.target_specifier)
        else {
            panic!("no envoy_grpc")
        };
        assert_eq!(g.cluster_name, "outbound|4317||otel-collector.observability.svc.cluster.local");
        assert_eq!(g.authority, "otel-collector.observability.svc.cluster.local");
        assert_eq!(config.service_name, "reviews.default");
        // meshConfig's defaultConfig sampling when the Telemetry sets none.
        assert_eq!(sampling(&t.client), Some(10.0));
        let tags: Vec<(&str, String)> = client
            .custom_tags
            .iter()
            .map(|c| match &c.r#type {
                Some(custom_tag::Type::Literal(l)) => (c.tag.as_str(), l.value.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(tags.contains(&("istio.canonical_service", "reviews".into())), "{tags:?}");
        assert!(tags.contains(&("istio.canonical_revision", "v2".into())), "{tags:?}");
        assert_eq!(t.server, t.client);
        // The connection manager carries it whole.
        let hcm = HttpConnectionManager { tracing: t.client.clone(), ..Default::default() };
        assert_eq!(HttpConnectionManager::decode(hcm.encode_to_vec().as_slice()).ok(), Some(hcm));
    }

    #[test]
    fn more_specific_telemetries_override_what_they_set() {
        let root = telemetry(
            "mesh",
            "istio-system",
            "{tracing: [{providers: [{name: otel}], randomSamplingPercentage: 50, customTags: {team: {literal: {value: core}}}}]}",
        );
        let namespace = telemetry("ns", "default", "{tracing: [{randomSamplingPercentage: 5}]}");
        let t = tracers(MESH, &format!("{root}{namespace}"));
        assert_eq!((sampling(&t.client), sampling(&t.server)), (Some(5.0), Some(5.0)));
        // The root's custom tag stays: the namespace did not set any.
        assert!(t.client.as_ref().is_some_and(|c| c.custom_tags.iter().any(|c| c.tag == "team")));

        // A workload's Telemetry turns span reporting off for its server side only.
        let workload = telemetry(
            "reviews",
            "default",
            "{selector: {matchLabels: {app: reviews}}, tracing: [{match: {mode: SERVER}, disableSpanReporting: true}]}",
        );
        let t = tracers(MESH, &format!("{root}{namespace}{workload}"));
        assert_eq!(sampling(&t.client), Some(5.0));
        assert_eq!(t.server, None);
        // Another workload's Telemetry does not apply.
        let other = workload.replace("app: reviews", "app: ratings");
        let t = tracers(MESH, &format!("{root}{namespace}{other}"));
        assert!(t.server.is_some());
    }

    #[test]
    fn mesh_default_providers_trace_without_a_telemetry() {
        let mesh = format!("{MESH}defaultProviders: {{tracing: [otel]}}\n");
        let t = tracers(&mesh, "");
        assert_eq!(sampling(&t.client), Some(10.0));
        let without_sampling = mesh.replace("defaultConfig: {tracing: {sampling: 10}}\n", "");
        assert_eq!(sampling(&tracers(&without_sampling, "").server), Some(DEFAULT_SAMPLING));
    }
}
