//! Metrics and access logs as Istio configures them.
//!
//! Metrics are on unless a Telemetry turns them off (`metrics: [{overrides: [{disabled:
//! true}]}]`, for all metrics, optionally for CLIENT or SERVER only; the most specific
//! Telemetry with `metrics` decides): as in Istio, an HTTP connection manager whose
//! proxy reports metrics carries the `istio.stats` filter (optional, so Envoy, which
//! lacks it, passes it by).
//!
//! Access logs: meshConfig's `accessLogFile`,
//! `accessLogEncoding` and `accessLogFormat` for the whole mesh, overridden by the
//! Telemetry API's `accessLogging` (workload, then namespace, then root namespace, the
//! most specific Telemetry that says anything about access logs deciding). Providers are
//! the built-in `envoy` (standard output) and meshConfig's `extensionProviders` with
//! `envoyFileAccessLog`. Each becomes an Envoy file access log on the HTTP connection
//! managers it applies to (`match.mode`: CLIENT is outbound, SERVER inbound), with
//! Istio's default format, and a filter `expression` in the subset Istio users write
//! (comparisons of `response.code`, joined by `&&` or `||`) as Envoy's status code
//! filters.

use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLog, AccessLogFilter, AndFilter, ComparisonFilter, OrFilter, StatusCodeFilter, access_log, access_log_filter,
    comparison_filter,
};
use envoy_types::pb::envoy::config::core::v3::{RuntimeUInt32, TrafficDirection};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{HttpFilter, http_filter};
use envoy_types::util::pack_any;
use prost::Message;
use weft_api::istio::{AccessLogging, LogSelectorMode, TagOverrideOperation, TelemetrySpec};
use weft_envoy::stats::{MetricOverride, StatsConfig};

use crate::node::ProxyIdentity;
use crate::snapshot::Snapshot;

const FILE_LOGGER: &str = "envoy.access_loggers.file";
/// Istio's name for its stats filter.
pub const STATS_FILTER: &str = "istio.stats";

/// Istio's default text format.
pub const ISTIO_TEXT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" \
%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \
\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \
%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \
\"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% \
%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON fields.
const ISTIO_JSON_FORMAT: &[(&str, &str)] = &[
    ("authority", "%REQ(:AUTHORITY)%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("connection_termination_details", "%CONNECTION_TERMINATION_DETAILS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("duration", "%DURATION%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("route_name", "%ROUTE_NAME%"),
    ("start_time", "%START_TIME%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("upstream_service_time", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"),
    ("upstream_transport_failure_reason", "%UPSTREAM_TRANSPORT_FAILURE_REASON%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
];

/// What an access log writes.
#[derive(Debug, Clone, PartialEq)]
enum Format {
    Text(String),
    Json(Vec<(String, String)>),
}

/// One access log to configure.
#[derive(Debug, Clone, PartialEq)]
struct Log {
    path: String,
    format: Format,
    filter: Option<AccessLogFilter>,
    mode: LogSelectorMode,
}

/// Adds the metrics filter and the access logs that apply to `proxy` to its HTTP
/// connection managers.
pub(super) fn apply(snapshot: &Snapshot, proxy: &ProxyIdentity, listeners: &mut [Listener]) {
    let logs = logs_for(snapshot, proxy);
    let metrics = metrics_for(snapshot, proxy);
    let tracers = super::tracer::for_proxy(snapshot, proxy);
    for l in listeners {
        let inbound = l.traffic_direction == TrafficDirection::Inbound as i32;
        let config = if inbound { &metrics.server } else { &metrics.client };
        let stats = http_metrics_on(config).then_some(config);
        let tracing = if inbound { &tracers.server } else { &tracers.client };
        let applies: Vec<AccessLog> = logs
            .iter()
            .filter(|log| match log.mode {
                LogSelectorMode::ClientAndServer => true,
                LogSelectorMode::Client => !inbound,
                LogSelectorMode::Server => inbound,
            })
            .map(access_log)
            .collect();
        for chain in l.filter_chains.iter_mut().chain(l.default_filter_chain.as_mut()) {
            // Envoy refuses unknown network filters, so the TCP metrics' overrides ride
            // in the chain's metadata, where the weft proxy reads them.
            if !config.metrics.is_empty() && chain.filters.iter().any(|f| f.name == super::listener::TCP_PROXY) {
                chain
                    .metadata
                    .get_or_insert_with(Default::default)
                    .typed_filter_metadata
                    .insert(STATS_FILTER.into(), stats_struct(config));
            }
            if applies.is_empty() && stats.is_none() && tracing.is_none() {
                continue;
            }
            super::listener::edit_hcm(chain, |hcm| {
                hcm.access_log = applies.clone();
                hcm.tracing = tracing.clone();
                if let Some(config) = stats {
                    // Before the router, which is last.
                    let at = hcm.http_filters.len().saturating_sub(1);
                    hcm.http_filters.insert(at, stats_filter(config));
                }
            });
        }
    }
}

/// The overrides of a proxy's metrics as a client and as a server.
#[derive(Debug, Clone, PartialEq)]
struct MetricsOn {
    client: StatsConfig,
    server: StatsConfig,
}

/// Whether any request metric is left: a side whose every one is dropped gets no stats
/// filter.
fn http_metrics_on(config: &StatsConfig) -> bool {
    !weft_envoy::stats::HTTP_METRICS.iter().all(|m| config.for_metric(m).0)
}

/// Istio's stats filter by its name, its configuration a `google.protobuf.Struct` in
/// Istio's `stats.PluginConfig` shape (which every xDS client can decode), marked
/// optional: proxies that lack it, such as Envoy, pass it by.
fn stats_filter(config: &StatsConfig) -> HttpFilter {
    HttpFilter {
        name: STATS_FILTER.into(),
        is_optional: true,
        config_type: Some(http_filter::ConfigType::TypedConfig(stats_struct(config))),
        ..Default::default()
    }
}

/// The stats configuration as a `google.protobuf.Struct`, encoded in order so that the
/// same configuration always gives the same bytes.
fn stats_struct(config: &StatsConfig) -> envoy_types::pb::google::protobuf::Any {
    use super::sorted::{SortedKind, SortedList, SortedStruct, SortedValue};
    let text = |s: &str| SortedValue { kind: Some(SortedKind::String(s.to_owned())) };
    let metrics: Vec<SortedValue> = config
        .metrics
        .iter()
        .map(|m| {
            let mut fields = std::collections::BTreeMap::new();
            if !m.name.is_empty() {
                fields.insert("name".to_owned(), text(&m.name));
            }
            if let Some(drop) = m.drop {
                fields.insert("drop".to_owned(), SortedValue { kind: Some(SortedKind::Bool(drop)) });
            }
            if !m.tags_to_remove.is_empty() {
                let values = m.tags_to_remove.iter().map(|t| text(t)).collect();
                fields.insert(
                    "tags_to_remove".to_owned(),
                    SortedValue { kind: Some(SortedKind::List(SortedList { values })) },
                );
            }
            if !m.dimensions.is_empty() {
                let dims = SortedStruct { fields: m.dimensions.iter().map(|(k, v)| (k.clone(), text(v))).collect() };
                fields.insert("dimensions".to_owned(), SortedValue { kind: Some(SortedKind::Struct(dims)) });
            }
            SortedValue { kind: Some(SortedKind::Struct(SortedStruct { fields })) }
        })
        .collect();
    let mut fields = std::collections::BTreeMap::new();
    if !metrics.is_empty() {
        fields
            .insert("metrics".to_owned(), SortedValue { kind: Some(SortedKind::List(SortedList { values: metrics })) });
    }
    envoy_types::pb::google::protobuf::Any {
        type_url: "type.googleapis.com/google.protobuf.Struct".into(),
        value: SortedStruct { fields }.encode_to_vec(),
    }
}

/// The metrics of `proxy` as a client and as a server: on, with the Prometheus
/// provider's overrides of every Telemetry that applies, root namespace first, then the
/// workload's namespace, then Telemetries selecting it, each later entry over the earlier
/// ones (Istio's precedence).
fn metrics_for(snapshot: &Snapshot, proxy: &ProxyIdentity) -> MetricsOn {
    let telemetries = in_order(snapshot, proxy);
    let (mut client, mut server) = (Vec::new(), Vec::new());
    for (r, t) in telemetries {
        for m in &t.metrics {
            let prometheus =
                m.providers.is_empty() || m.providers.iter().any(|p| p.name.as_deref() == Some("prometheus"));
            if !prometheus {
                continue;
            }
            for o in &m.overrides {
                let owner = format!("Telemetry {}/{}", r.namespace(), r.name());
                let Some(entry) = metric_override(o, &owner) else { continue };
                let mode = o.r#match.as_ref().and_then(|m| m.mode).unwrap_or(LogSelectorMode::ClientAndServer);
                if mode != LogSelectorMode::Server {
                    client.push(entry.clone());
                }
                if mode != LogSelectorMode::Client {
                    server.push(entry);
                }
            }
        }
    }
    MetricsOn { client: StatsConfig { metrics: client }, server: StatsConfig { metrics: server } }
}

/// One Telemetry metrics override in the stats filter's terms; `None` (with a warning)
/// when it cannot be carried out.
fn metric_override(o: &weft_api::istio::MetricsOverrides, owner: &str) -> Option<MetricOverride> {
    let selector = o.r#match.as_ref();
    let name = match (selector.and_then(|m| m.custom_metric.as_deref()), selector.and_then(|m| m.metric)) {
        (Some(custom), _) => custom.to_owned(),
        (None, Some(metric)) => match weft_envoy::stats::metric_name(metric.as_str()) {
            Some(name) => name.to_owned(),
            None => {
                tracing::warn!("{owner}: metric {} is not known; override ignored", metric.as_str());
                return None;
            }
        },
        (None, None) => String::new(),
    };
    let mut entry = MetricOverride { name, drop: o.disabled, ..Default::default() };
    for (tag, t) in &o.tag_overrides {
        if !weft_envoy::stats::is_label_name(tag) {
            tracing::warn!("{owner}: tag {tag:?} is not a Prometheus label name; override ignored");
            continue;
        }
        match (t.operation, t.value.as_deref()) {
            (Some(TagOverrideOperation::Remove), _) => entry.tags_to_remove.push(tag.clone()),
            (_, Some(value)) => match weft_envoy::stats::parse_attribute(value) {
                Ok(_) => {
                    entry.dimensions.insert(tag.clone(), value.to_owned());
                }
                Err(e) => tracing::warn!("{owner}: tag {tag}: {e}; the tag is left as it is"),
            },
            (_, None) => tracing::warn!("{owner}: tag {tag}: UPSERT needs a value; the tag is left as it is"),
        }
    }
    Some(entry)
}

/// The Telemetries that apply to `proxy`, least specific first (root namespace, then
/// its namespace, then those selecting it), so that later ones override earlier ones.
pub(super) fn in_order<'a>(
    snapshot: &'a Snapshot,
    proxy: &ProxyIdentity,
) -> Vec<(&'a weft_api::Resource, &'a TelemetrySpec)> {
    let mut telemetries = super::policies_for(snapshot, proxy, |spec| match spec {
        weft_api::Spec::Telemetry(t) => {
            Some((t.as_ref(), t.selector.as_ref(), !t.target_refs.is_empty() || t.target_ref.is_some()))
        }
        _ => None,
    });
    telemetries.sort_by_key(|(r, t)| std::cmp::Reverse(rank(r, t, proxy)));
    telemetries
}

/// How specific a Telemetry is for `proxy`: 0 selects its workload, 1 is its namespace's,
/// 2 the root namespace's.
fn rank(r: &weft_api::Resource, t: &TelemetrySpec, proxy: &ProxyIdentity) -> u8 {
    match (t.selector.is_some(), r.namespace() == proxy.namespace) {
        (true, true) => 0,
        (false, true) => 1,
        _ => 2,
    }
}

/// The access logs of `proxy`'s workload: the most specific Telemetry with
/// `accessLogging`, else meshConfig's `accessLogFile`.
fn logs_for(snapshot: &Snapshot, proxy: &ProxyIdentity) -> Vec<Log> {
    let chosen = most_specific(snapshot, proxy, |t| !t.access_logging.is_empty());
    let mesh = &snapshot.mesh;
    match chosen {
        Some((r, t)) => t
            .access_logging
            .iter()
            .filter(|a| a.disabled != Some(true))
            .flat_map(|a| logs_of(snapshot, a, &format!("Telemetry {}/{}", r.namespace(), r.name())))
            .collect(),
        None => match mesh.access_log_file.as_deref() {
            Some(path) if !path.is_empty() => vec![Log {
                path: path.to_owned(),
                format: mesh_format(snapshot),
                filter: None,
                mode: LogSelectorMode::ClientAndServer,
            }],
            _ => Vec::new(),
        },
    }
}

/// The Telemetry that decides for `proxy` among those `relevant`: workload (with a
/// selector) before namespace before root namespace.
fn most_specific<'a>(
    snapshot: &'a Snapshot,
    proxy: &ProxyIdentity,
    relevant: impl Fn(&TelemetrySpec) -> bool,
) -> Option<(&'a weft_api::Resource, &'a TelemetrySpec)> {
    in_order(snapshot, proxy)
        .into_iter()
        .filter(|(_, t)| relevant(t))
        .min_by_key(|(r, t)| (rank(r, t, proxy), r.namespace().to_owned(), r.name().to_owned()))
}

/// meshConfig's `accessLogEncoding` and `accessLogFormat`.
fn mesh_format(snapshot: &Snapshot) -> Format {
    let mesh = &snapshot.mesh;
    let json = mesh.access_log_encoding.as_deref() == Some("JSON");
    match (json, mesh.access_log_format.as_deref()) {
        (false, Some(f)) if !f.is_empty() => {
            Format::Text(if f.ends_with('\n') { f.to_owned() } else { format!("{f}\n") })
        }
        (false, _) => Format::Text(ISTIO_TEXT_FORMAT.to_owned()),
        (true, _) => Format::Json(ISTIO_JSON_FORMAT.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
    }
}

fn logs_of(snapshot: &Snapshot, a: &AccessLogging, owner: &str) -> Vec<Log> {
    let filter = match a.filter.as_ref().and_then(|f| f.expression.as_deref()) {
        None => None,
        Some(expression) => match compile_expression(expression) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(
                    "{owner}: access log filter {expression:?} is not supported ({e}); logging nothing for it"
                );
                return Vec::new();
            }
        },
    };
    let mode = a.r#match.as_ref().and_then(|m| m.mode).unwrap_or(LogSelectorMode::ClientAndServer);
    let mut names: Vec<String> = a.providers.iter().filter_map(|p| p.name.clone()).collect();
    if names.is_empty() {
        names = snapshot.mesh.default_access_log_providers();
    }
    if names.is_empty() {
        names.push("envoy".into());
    }
    names
        .iter()
        .filter_map(|name| {
            let (path, format) = if name == "envoy" {
                ("/dev/stdout".to_owned(), mesh_format(snapshot))
            } else {
                match snapshot.mesh.file_access_log_provider(name) {
                    Some((path, text, labels)) => {
                        let format = match (text, labels) {
                            (_, Some(labels)) => Format::Json(labels),
                            (Some(text), None) => {
                                Format::Text(if text.ends_with('\n') { text } else { format!("{text}\n") })
                            }
                            (None, None) => Format::Text(ISTIO_TEXT_FORMAT.to_owned()),
                        };
                        (path, format)
                    }
                    None => {
                        tracing::warn!(
                            "{owner}: access log provider {name:?} is not an envoyFileAccessLog provider of meshConfig"
                        );
                        return None;
                    }
                }
            };
            Some(Log { path, format, filter: filter.clone(), mode })
        })
        .collect()
}

fn access_log(log: &Log) -> AccessLog {
    use envoy_types::pb::envoy::config::core::v3::{DataSource, SubstitutionFormatString, data_source};
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{FileAccessLog, file_access_log};
    let config = match &log.format {
        Format::Text(t) => pack_any(FileAccessLog {
            path: log.path.clone(),
            access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(SubstitutionFormatString {
                format: Some(
                    envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format::TextFormatSource(
                        DataSource {
                            specifier: Some(data_source::Specifier::InlineString(t.clone())),
                            ..Default::default()
                        },
                    ),
                ),
                ..Default::default()
            })),
        }),
        // The JSON fields are a protobuf Struct, a hash map: encoded in order so that the
        // same configuration always gives the same bytes.
        Format::Json(fields) => {
            use super::sorted::{SortedKind, SortedStruct, SortedValue};
            let json = SortedStruct {
                fields: fields
                    .iter()
                    .map(|(k, v)| (k.clone(), SortedValue { kind: Some(SortedKind::String(v.clone())) }))
                    .collect(),
            };
            let sorted = SortedFileAccessLog {
                path: log.path.clone(),
                log_format: Some(SortedFormatString { json_format: Some(json) }),
            };
            envoy_types::pb::google::protobuf::Any {
                type_url: "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog".into(),
                value: sorted.encode_to_vec(),
            }
        }
    };
    AccessLog {
        name: FILE_LOGGER.into(),
        filter: log.filter.clone(),
        config_type: Some(access_log::ConfigType::TypedConfig(config)),
    }
}

/// `FileAccessLog` with a JSON format, as it is on the wire.
#[derive(Clone, PartialEq, prost::Message)]
struct SortedFileAccessLog {
    #[prost(string, tag = "1")]
    path: String,
    #[prost(message, optional, tag = "5")]
    log_format: Option<SortedFormatString>,
}

/// `SubstitutionFormatString` with `json_format`.
#[derive(Clone, PartialEq, prost::Message)]
struct SortedFormatString {
    #[prost(message, optional, tag = "2")]
    json_format: Option<super::sorted::SortedStruct>,
}

/// `response.code >= 400`, `response.code == 503 || response.code == 504`, ...: the
/// comparisons of `response.code` that Istio users write, joined by `&&` or `||` (not
/// both), as Envoy's status code filters.
fn compile_expression(expression: &str) -> Result<AccessLogFilter, String> {
    let or: Vec<&str> = expression.split("||").collect();
    let and: Vec<&str> = expression.split("&&").collect();
    type Join = fn(Vec<AccessLogFilter>) -> AccessLogFilter;
    let (terms, join): (Vec<&str>, Join) = match (or.len(), and.len()) {
        (1, 1) => (vec![expression], |mut f| f.remove(0)),
        (_, 1) => (or, |filters| AccessLogFilter {
            filter_specifier: Some(access_log_filter::FilterSpecifier::OrFilter(OrFilter { filters })),
        }),
        (1, _) => (and, |filters| AccessLogFilter {
            filter_specifier: Some(access_log_filter::FilterSpecifier::AndFilter(AndFilter { filters })),
        }),
        _ => return Err("both && and || in one expression".into()),
    };
    let filters = terms.iter().map(|t| status_term(t)).collect::<Result<Vec<_>, _>>()?;
    Ok(join(filters))
}

fn status_term(term: &str) -> Result<AccessLogFilter, String> {
    use comparison_filter::Op;
    let rest = term.trim().strip_prefix("response.code").ok_or("only response.code is understood")?.trim_start();
    let (op, number) = [">=", "<=", "==", "!=", ">", "<"]
        .iter()
        .find_map(|op| rest.strip_prefix(op).map(|n| (*op, n.trim())))
        .ok_or("expected a comparison")?;
    let n: u32 = number.parse().map_err(|_| format!("{number:?} is not a status code"))?;
    let (op, n) = match op {
        ">=" => (Op::Ge, n),
        "<=" => (Op::Le, n),
        "==" => (Op::Eq, n),
        "!=" => (Op::Ne, n),
        ">" => (Op::Ge, n + 1),
        _ => (Op::Le, n.checked_sub(1).ok_or("response.code < 0")?),
    };
    Ok(AccessLogFilter {
        filter_specifier: Some(access_log_filter::FilterSpecifier::StatusCodeFilter(StatusCodeFilter {
            comparison: Some(ComparisonFilter {
                op: op as i32,
                value: Some(RuntimeUInt32 { default_value: n, runtime_key: "access_log.status".into() }),
            }),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::listener::v3::filter;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;

    fn code_filter(f: &AccessLogFilter) -> Option<(i32, u32)> {
        match &f.filter_specifier {
            Some(access_log_filter::FilterSpecifier::StatusCodeFilter(s)) => {
                s.comparison.as_ref().map(|c| (c.op, c.value.as_ref().map_or(0, |v| v.default_value)))
            }
            _ => None,
        }
    }

    fn stats_filters(telemetry: &str) -> Vec<bool> {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: r}}\nspec: {{hosts: [reviews.default.svc.cluster.local], location: MESH_INTERNAL, resolution: STATIC, ports: [{{number: 9080, name: http, protocol: HTTP}}], endpoints: [{{address: 10.0.0.1}}]}}\n---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: c}}\nspec: {{workloadSelector: {{labels: {{app: client}}}}, egress: [{{port: {{number: 9080, protocol: HTTP, name: http}}, bind: 127.0.0.9, hosts: [./*]}}]}}\n{telemetry}"
        );
        let snapshot = Snapshot::new(1, weft_api::parse_text("t.yaml", &yaml).resources);
        let proxy = crate::testing::proxy(crate::node::Role::Sidecar, &[("app", "client")]);
        super::super::listeners_for(&snapshot, &proxy, &[])
            .iter()
            .flat_map(|l| l.filter_chains.iter().flat_map(|c| c.filters.iter()))
            .filter_map(|f| match &f.config_type {
                Some(filter::ConfigType::TypedConfig(any)) => HttpConnectionManager::decode(any.value.as_slice()).ok(),
                _ => None,
            })
            .map(|hcm| hcm.http_filters.iter().any(|f| f.name == STATS_FILTER && f.is_optional))
            .collect()
    }

    #[test]
    fn metrics_are_on_until_a_telemetry_turns_them_off() {
        assert_eq!(stats_filters(""), [true]);
        let off = "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: istio-system}\nspec: {metrics: [{providers: [{name: prometheus}], overrides: [{disabled: true}]}]}\n";
        assert_eq!(stats_filters(off), [false]);
        // Only the server side off: the client's (outbound) listener keeps its metrics.
        let server_off =
            off.replace("overrides: [{disabled: true}]", "overrides: [{match: {mode: SERVER}, disabled: true}]");
        assert_eq!(stats_filters(&server_off), [true]);
        // A workload's Telemetry wins over the mesh's.
        let back_on = format!(
            "{off}---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: w}}\nspec: {{selector: {{matchLabels: {{app: client}}}}, metrics: [{{overrides: [{{disabled: false}}]}}]}}\n"
        );
        assert_eq!(stats_filters(&back_on), [true]);
    }

    #[test]
    fn response_code_expressions_become_status_code_filters() {
        use comparison_filter::Op;
        let f = compile_expression("response.code >= 400").unwrap_or_default();
        assert_eq!(code_filter(&f), Some((Op::Ge as i32, 400)));
        let f = compile_expression("response.code > 499").unwrap_or_default();
        assert_eq!(code_filter(&f), Some((Op::Ge as i32, 500)));
        let f = compile_expression("response.code == 503 || response.code == 504").unwrap_or_default();
        let Some(access_log_filter::FilterSpecifier::OrFilter(or)) = f.filter_specifier else { panic!("not an or") };
        assert_eq!(or.filters.iter().filter_map(code_filter).collect::<Vec<_>>(), [(0, 503), (0, 504)]);
        assert!(compile_expression("request.headers['x'] == 'y'").is_err());
        assert!(compile_expression("response.code >= 400 && response.code < 500 || response.code == 200").is_err());
    }
}
