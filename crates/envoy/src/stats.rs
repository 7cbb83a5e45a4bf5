//! Istio's stats filter configuration, shared by the control plane that writes it and the
//! proxy that acts on it: the `istio.stats` HTTP filter's `google.protobuf.Struct`, shaped
//! as Istio's `stats.PluginConfig`:
//!
//! ```yaml
//! metrics:
//! - name: requests_total            # empty: every metric
//!   drop: false
//!   tags_to_remove: [request_protocol]
//!   dimensions: {request_host: request.host}
//! ```
//!
//! Entries apply in order, a later one over an earlier one. A dimension's value is an
//! attribute expression in the subset of CEL that Istio's users write for metrics.

use std::collections::BTreeMap;

use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

/// Istio's request metrics, by their names in the configuration (`istio_` + name is the
/// Prometheus name).
pub const HTTP_METRICS: [&str; 4] =
    ["requests_total", "request_duration_milliseconds", "request_bytes", "response_bytes"];

/// Istio's TCP metrics, by their names in the configuration.
pub const TCP_METRICS: [&str; 4] = [
    "tcp_sent_bytes_total",
    "tcp_received_bytes_total",
    "tcp_connections_opened_total",
    "tcp_connections_closed_total",
];

/// Istio's standard labels of the request metrics, in the order they are written.
pub const STANDARD_LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// The configuration name of a Telemetry API metric (`REQUEST_COUNT` is
/// `requests_total`); `ALL_METRICS` is the empty name.
pub fn metric_name(telemetry: &str) -> Option<&'static str> {
    Some(match telemetry {
        "ALL_METRICS" => "",
        "REQUEST_COUNT" => "requests_total",
        "REQUEST_DURATION" => "request_duration_milliseconds",
        "REQUEST_SIZE" => "request_bytes",
        "RESPONSE_SIZE" => "response_bytes",
        "TCP_OPENED_CONNECTIONS" => "tcp_connections_opened_total",
        "TCP_CLOSED_CONNECTIONS" => "tcp_connections_closed_total",
        "TCP_SENT_BYTES" => "tcp_sent_bytes_total",
        "TCP_RECEIVED_BYTES" => "tcp_received_bytes_total",
        "GRPC_REQUEST_MESSAGES" => "request_messages_total",
        "GRPC_RESPONSE_MESSAGES" => "response_messages_total",
        _ => return None,
    })
}

/// One entry of `metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricOverride {
    /// The metric (`requests_total`), or empty for all.
    pub name: String,
    /// The metric is not reported (`Some(true)`), or reported again after an earlier
    /// entry dropped it (`Some(false)`); `None` leaves it as it was.
    pub drop: Option<bool>,
    /// Standard labels left out.
    pub tags_to_remove: Vec<String>,
    /// Labels added or replaced, by attribute expression.
    pub dimensions: BTreeMap<String, String>,
}

/// The stats filter's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsConfig {
    /// Overrides, in order.
    pub metrics: Vec<MetricOverride>,
}

impl StatsConfig {
    /// Reads the filter's `Struct`. Unknown fields are left alone, as Istio's filter does;
    /// a field of the wrong type, or a dimension whose expression is not understood, is
    /// an error.
    pub fn from_struct(s: &Struct) -> Result<StatsConfig, String> {
        let Some(metrics) = s.fields.get("metrics") else { return Ok(StatsConfig::default()) };
        let Some(Kind::ListValue(list)) = &metrics.kind else { return Err("metrics must be a list".into()) };
        let mut out = Vec::new();
        for (i, entry) in list.values.iter().enumerate() {
            let Some(Kind::StructValue(entry)) = &entry.kind else { return Err(format!("metrics[{i}] must be a map")) };
            let text = |v: &Value| match &v.kind {
                Some(Kind::StringValue(s)) => Ok(s.clone()),
                _ => Err(format!("metrics[{i}]: expected a string")),
            };
            let mut m = MetricOverride::default();
            if let Some(name) = entry.fields.get("name") {
                m.name = text(name)?;
            }
            match entry.fields.get("drop").and_then(|v| v.kind.as_ref()) {
                None => {}
                Some(Kind::BoolValue(b)) => m.drop = Some(*b),
                Some(_) => return Err(format!("metrics[{i}].drop must be a boolean")),
            }
            match entry.fields.get("tags_to_remove").and_then(|v| v.kind.as_ref()) {
                None => {}
                Some(Kind::ListValue(l)) => {
                    m.tags_to_remove = l.values.iter().map(text).collect::<Result<_, _>>()?;
                }
                Some(_) => return Err(format!("metrics[{i}].tags_to_remove must be a list")),
            }
            match entry.fields.get("dimensions").and_then(|v| v.kind.as_ref()) {
                None => {}
                Some(Kind::StructValue(d)) => {
                    for (k, v) in &d.fields {
                        if !is_label_name(k) {
                            return Err(format!("metrics[{i}].dimensions: {k:?} is not a Prometheus label name"));
                        }
                        let expression = text(v)?;
                        parse_attribute(&expression).map_err(|e| format!("metrics[{i}].dimensions.{k}: {e}"))?;
                        m.dimensions.insert(k.clone(), expression);
                    }
                }
                Some(_) => return Err(format!("metrics[{i}].dimensions must be a map")),
            }
            out.push(m);
        }
        Ok(StatsConfig { metrics: out })
    }

    /// What applies to one metric: whether it is dropped, the labels removed, and the
    /// labels added (name, expression), sorted by name.
    pub fn for_metric(&self, metric: &str) -> (bool, Vec<String>, BTreeMap<String, String>) {
        let (mut drop, mut removed, mut added) = (false, Vec::<String>::new(), BTreeMap::new());
        for m in self.metrics.iter().filter(|m| m.name.is_empty() || m.name == metric) {
            if let Some(d) = m.drop {
                drop = d;
            }
            for t in &m.tags_to_remove {
                added.remove(t);
                if !removed.contains(t) {
                    removed.push(t.clone());
                }
            }
            for (k, v) in &m.dimensions {
                removed.retain(|r| r != k);
                added.insert(k.clone(), v.clone());
            }
        }
        (drop, removed, added)
    }
}

/// What a dimension's expression reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attribute {
    /// `'text'`.
    Literal(String),
    /// `request.host` (`:authority`).
    RequestHost,
    /// `request.method`.
    RequestMethod,
    /// `request.path` (with the query).
    RequestPath,
    /// `request.url_path` (without the query).
    RequestUrlPath,
    /// `request.scheme`.
    RequestScheme,
    /// `request.protocol` (`HTTP/1.1`, `HTTP/2`).
    RequestProtocol,
    /// `request.useragent`.
    RequestUserAgent,
    /// `request.referer`.
    RequestReferer,
    /// `request.id` (`x-request-id`).
    RequestId,
    /// `request.headers['name']`, the name lower-cased.
    RequestHeader(String),
    /// `response.code`.
    ResponseCode,
    /// `response.grpc_status`.
    ResponseGrpcStatus,
    /// `source.address` (`ip:port`).
    SourceAddress,
    /// `source.port`.
    SourcePort,
    /// `destination.address` (`ip:port`).
    DestinationAddress,
    /// `destination.port`.
    DestinationPort,
    /// `xds.cluster_name`: the cluster the request went to.
    ClusterName,
    /// `xds.route_name`.
    RouteName,
}

/// Reads an attribute expression: an attribute, a header lookup, a quoted literal, each
/// optionally inside `string(...)`.
pub fn parse_attribute(expression: &str) -> Result<Attribute, String> {
    let e = expression.trim();
    if let Some(inner) = e.strip_prefix("string(").and_then(|r| r.strip_suffix(')')) {
        return parse_attribute(inner);
    }
    if let Some(lit) = quoted(e) {
        return Ok(Attribute::Literal(lit.to_owned()));
    }
    if let Some(rest) = e.strip_prefix("request.headers[").and_then(|r| r.strip_suffix(']'))
        && let Some(name) = quoted(rest.trim())
    {
        let name = name.to_ascii_lowercase();
        // HTTP/2's pseudo-headers, as Envoy names them.
        return match name.as_str() {
            ":authority" | "host" => Ok(Attribute::RequestHost),
            ":path" => Ok(Attribute::RequestPath),
            ":method" => Ok(Attribute::RequestMethod),
            ":scheme" => Ok(Attribute::RequestScheme),
            _ if is_header_name(&name) => Ok(Attribute::RequestHeader(name)),
            _ => Err(format!("{expression:?}: {name:?} is not a header name")),
        };
    }
    Ok(match e {
        "request.host" => Attribute::RequestHost,
        "request.method" => Attribute::RequestMethod,
        "request.path" => Attribute::RequestPath,
        "request.url_path" => Attribute::RequestUrlPath,
        "request.scheme" => Attribute::RequestScheme,
        "request.protocol" => Attribute::RequestProtocol,
        "request.useragent" => Attribute::RequestUserAgent,
        "request.referer" => Attribute::RequestReferer,
        "request.id" => Attribute::RequestId,
        "response.code" => Attribute::ResponseCode,
        "response.grpc_status" => Attribute::ResponseGrpcStatus,
        "source.address" => Attribute::SourceAddress,
        "source.port" => Attribute::SourcePort,
        "destination.address" => Attribute::DestinationAddress,
        "destination.port" => Attribute::DestinationPort,
        "xds.cluster_name" => Attribute::ClusterName,
        "xds.route_name" => Attribute::RouteName,
        _ => {
            return Err(format!(
                "{expression:?} is not an attribute weft evaluates (request.*, response.code, source/destination \
                 address or port, xds.cluster_name, xds.route_name, request.headers['name'], a quoted literal)"
            ));
        }
    })
}

/// Whether `s` can name a Prometheus label: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A header name a request can carry: HTTP token characters, lower case.
fn is_header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn quoted(s: &str) -> Option<&str> {
    let inner = s.strip_prefix('\'').and_then(|r| r.strip_suffix('\''));
    inner.or_else(|| s.strip_prefix('"').and_then(|r| r.strip_suffix('"')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_parse_as_istio_users_write_them() {
        assert_eq!(parse_attribute("request.host"), Ok(Attribute::RequestHost));
        assert_eq!(parse_attribute(" string(destination.port) "), Ok(Attribute::DestinationPort));
        assert_eq!(parse_attribute("request.headers['X-Tenant']"), Ok(Attribute::RequestHeader("x-tenant".into())));
        assert_eq!(parse_attribute("'fixed'"), Ok(Attribute::Literal("fixed".into())));
        assert!(parse_attribute("request.headers['a'] + 'b'").is_err());
        assert_eq!(parse_attribute("request.headers[':authority']"), Ok(Attribute::RequestHost));
        assert!(parse_attribute("request.headers['a b']").is_err());
        assert!(is_label_name("request_host") && is_label_name("_x1"));
        assert!(!is_label_name("x-tenant") && !is_label_name("1abc") && !is_label_name(""));
        assert!(parse_attribute("upstream_peer.labels['app']").is_err());
    }

    #[test]
    fn later_entries_override_earlier_ones() {
        let config = StatsConfig {
            metrics: vec![
                MetricOverride {
                    tags_to_remove: vec!["request_protocol".into(), "destination_port".into()],
                    ..Default::default()
                },
                MetricOverride {
                    name: "requests_total".into(),
                    dimensions: [("destination_port".to_owned(), "destination.port".to_owned())].into(),
                    ..Default::default()
                },
                MetricOverride { name: "request_bytes".into(), drop: Some(true), ..Default::default() },
                // An entry that says nothing of dropping leaves it dropped.
                MetricOverride { tags_to_remove: vec!["response_flags".into()], ..Default::default() },
            ],
        };
        let (drop, removed, added) = config.for_metric("requests_total");
        assert!(!drop);
        assert_eq!(removed, ["request_protocol", "response_flags"]);
        assert_eq!(added.keys().collect::<Vec<_>>(), ["destination_port"]);
        let (drop, removed, added) = config.for_metric("response_bytes");
        assert!(!drop && added.is_empty());
        assert_eq!(removed, ["request_protocol", "destination_port", "response_flags"]);
        assert!(config.for_metric("request_bytes").0);
    }
}
