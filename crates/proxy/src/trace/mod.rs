//! Distributed tracing, as Envoy's OpenTelemetry tracer does it for an HTTP connection
//! manager with `tracing` configured.
//!
//! The decision is Envoy's: a decision already packed into `x-request-id` (its UUID
//! version digit) stands; otherwise `x-client-trace-id` forces a trace (at
//! `client_sampling`), then `x-envoy-force-trace`, then `random_sampling` draws on the
//! request id; `overall_sampling` caps them all, and the decision is packed back into the
//! id for the next hop. A caller's context (`traceparent`, or B3 when there is no
//! `traceparent`) is continued, sampled when both the caller's flag and the decision
//! say so (as Envoy 1.40 does); otherwise the decision alone says. Every request gets a span of this hop (SERVER on inbound listeners, CLIENT on
//! outbound) whose context goes upstream as `traceparent` (and as B3, when the caller used
//! B3); sampled spans are sent over OTLP/gRPC to the collector's cluster. A context that
//! cannot be read is left alone and not traced.

pub mod context;
pub mod export;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as EnvoyTracing;
use envoy_types::pb::envoy::r#type::tracing::v3::{CustomTag, custom_tag};
use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, Status, span::SpanKind, status::StatusCode};

use crate::Shared;
use crate::model::{ConfigError, unpack};
use context::Outgoing;
use export::Target;

const OPENTELEMETRY: &str = "envoy.config.trace.v3.OpenTelemetryConfig";
/// Envoy's default limit on the `http.url` tag.
const MAX_PATH_TAG_LENGTH: usize = 256;
/// Envoy's default span buffer.
const MAX_CACHE_SIZE: usize = 1024;

/// The tracing of one HTTP connection manager.
#[derive(Debug)]
pub struct Tracer {
    target: Arc<Target>,
    /// Percentages, as Envoy's `Percent`.
    random: f64,
    client: f64,
    overall: f64,
    /// Inbound: SERVER spans named by the caller's decorator; outbound: CLIENT spans.
    ingress: bool,
    tags: Vec<(String, Tag)>,
    max_path: usize,
}

#[derive(Debug)]
enum Tag {
    /// A literal, or an environment variable read when the configuration arrived.
    Fixed(String),
    /// A request header, with a default when absent.
    Header(HeaderName, Option<String>),
    /// `:authority`.
    Authority,
    /// `:path`.
    Path,
    /// `:method`.
    Method,
}

impl Tracer {
    /// The connection manager's tracing, or `None` when it has none. Providers other
    /// than OpenTelemetry are refused.
    pub fn from_envoy(t: &EnvoyTracing, ingress: bool) -> Result<Option<Tracer>, ConfigError> {
        let Some(provider) = &t.provider else { return Ok(None) };
        let any = match &provider.config_type {
            Some(envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType::TypedConfig(any)) => any,
            None => return Err(ConfigError::new(format!("tracing provider {} has no typed_config", provider.name))),
        };
        if !any.type_url.ends_with(OPENTELEMETRY) {
            return Err(ConfigError::new(format!(
                "tracing provider {} ({}) is not supported; weft exports spans over OpenTelemetry",
                provider.name, any.type_url
            )));
        }
        let config: OpenTelemetryConfig = unpack(any, OPENTELEMETRY)?;
        let grpc = config.grpc_service.as_ref().and_then(|g| g.target_specifier.as_ref());
        let Some(envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier::EnvoyGrpc(envoy_grpc)) = grpc
        else {
            return Err(ConfigError::new("the OpenTelemetry tracer needs grpc_service.envoy_grpc (a cluster)"));
        };
        let authority = if envoy_grpc.authority.is_empty() {
            envoy_grpc.cluster_name.clone()
        } else {
            envoy_grpc.authority.clone()
        };
        let percent =
            |p: Option<&envoy_types::pb::envoy::r#type::v3::Percent>| p.map_or(100.0, |p| p.value.clamp(0.0, 100.0));
        let tags = t.custom_tags.iter().map(custom_tag).collect::<Result<_, _>>()?;
        Ok(Some(Tracer {
            target: Arc::new(Target {
                cluster: envoy_grpc.cluster_name.clone(),
                authority,
                service_name: if config.service_name.is_empty() {
                    "unknown_service:envoy".to_owned()
                } else {
                    config.service_name.clone()
                },
                max_cache: config.max_cache_size.map_or(MAX_CACHE_SIZE, |v| v.value as usize),
            }),
            random: percent(t.random_sampling.as_ref()),
            client: percent(t.client_sampling.as_ref()),
            overall: percent(t.overall_sampling.as_ref()),
            ingress,
            tags,
            max_path: t.max_path_tag_length.map_or(MAX_PATH_TAG_LENGTH, |v| v.value as usize),
        }))
    }

    /// Envoy's tracing decision for the request, packed into its `x-request-id` (which
    /// must be set).
    fn decide(&self, headers: &mut HeaderMap) -> bool {
        let Some(id) = headers.get(crate::http::names::X_REQUEST_ID).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        // Sampling draws on the request id, so every hop that sees it agrees.
        let Some(draw) = id.get(..8).and_then(|h| u64::from_str_radix(h, 16).ok()).map(|v| v % 10_000) else {
            return false;
        };
        let below = |percent: f64| draw < (percent * 100.0).round() as u64;
        let mut reason = Reason::of(id);
        if reason == Reason::NotTraceable {
            if headers.contains_key("x-client-trace-id") && chance(self.client) {
                reason = Reason::ClientForced;
            } else if headers.contains_key("x-envoy-force-trace") {
                reason = Reason::ServiceForced;
            } else if below(self.random) {
                reason = Reason::Sampling;
            }
        }
        if reason != Reason::NotTraceable && !below(self.overall) {
            reason = Reason::NotTraceable;
        }
        if let Some(packed) = reason.pack(id)
            && let Ok(v) = HeaderValue::from_str(&packed)
        {
            headers.insert(crate::http::names::X_REQUEST_ID, v);
        }
        // As Envoy, the decision is what the id carries: an id that is not a UUID holds
        // none, and its request is not traced.
        let carried = headers
            .get(crate::http::names::X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map_or(Reason::NotTraceable, Reason::of);
        carried != Reason::NotTraceable
    }

    /// Decides whether the request is traced and starts this hop's span; `None` when
    /// the caller's context cannot be read. `x-request-id` must already be set.
    pub fn begin(
        self: &Arc<Tracer>,
        req: &mut hyper::Request<crate::body::Inbound>,
        peer: std::net::SocketAddr,
        tls: bool,
        node: &crate::config::NodeInfo,
    ) -> Option<Active> {
        let decided = self.decide(req.headers_mut());
        let (trace_id, parent_span_id, trace_state, b3, sampled) = match context::extract(req.headers()) {
            context::Incoming::Invalid => return None,
            context::Incoming::None => (nonzero_u128(), None, None, None, decided),
            // Reported when both the caller and this hop sample, as in Envoy 1.40.
            context::Incoming::Parent(p) => (p.trace_id, Some(p.span_id), p.trace_state, p.b3, p.sampled && decided),
        };
        let outgoing = Outgoing { trace_id, span_id: nonzero_u64(), parent_span_id, sampled, trace_state, b3 };
        // Inbound, the caller's sidecar names the operation; the header goes no further.
        let caller_named = if self.ingress {
            req.headers_mut()
                .remove("x-envoy-decorator-operation")
                .and_then(|v| v.to_str().ok().filter(|v| !v.is_empty()).map(str::to_owned))
        } else {
            None
        };
        let named = caller_named.is_some();
        if !sampled {
            return Some(Active { tracer: self.clone(), outgoing, named, detail: None });
        }
        let headers = req.headers();
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let host = crate::http::authority(req).unwrap_or_default();
        // Envoy's original URI: the path cut to the limit, after the scheme and host.
        let mut path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
        truncate(&mut path, self.max_path);
        let scheme = text("x-forwarded-proto").unwrap_or(if tls { "https" } else { "http" });
        let url = format!("{scheme}://{host}{path}");
        let mut attributes = vec![
            string_attribute("node_id", &node.id),
            string_attribute("zone", ""),
            string_attribute("guid:x-request-id", text("x-request-id").unwrap_or("")),
            string_attribute("http.url", &url),
            string_attribute("http.method", req.method().as_str()),
            string_attribute("downstream_cluster", text("x-envoy-downstream-service-cluster").unwrap_or("-")),
            string_attribute("user_agent", text("user-agent").unwrap_or("-")),
            string_attribute("http.protocol", crate::http::protocol_name(req.version())),
            string_attribute("peer.address", &peer.ip().to_string()),
            string_attribute("component", "proxy"),
        ];
        if let Some(id) = text("x-client-trace-id") {
            attributes.push(string_attribute("guid:x-client-trace-id", id));
        }
        for (name, tag) in &self.tags {
            let value = match tag {
                Tag::Fixed(v) => Some(v.as_str()),
                Tag::Header(h, default) => headers.get(h).and_then(|v| v.to_str().ok()).or(default.as_deref()),
                Tag::Authority => Some(host.as_str()),
                Tag::Path => Some(path.as_str()),
                Tag::Method => Some(req.method().as_str()),
            };
            if let Some(v) = value {
                attributes.push(string_attribute(name, v));
            }
        }
        let name = match caller_named {
            Some(n) => n,
            None if self.ingress => "ingress".to_owned(),
            None => format!("egress {host}"),
        };
        let detail = Detail { start: SystemTime::now(), name, attributes };
        Some(Active { tracer: self.clone(), outgoing, named, detail: Some(Box::new(detail)) })
    }
}

/// Envoy's trace reason, packed into the version digit of an `x-request-id` UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    NotTraceable,
    Sampling,
    ServiceForced,
    ClientForced,
}

impl Reason {
    fn of(id: &str) -> Reason {
        if id.len() != 36 {
            return Reason::NotTraceable;
        }
        match id.as_bytes()[14] {
            b'9' => Reason::Sampling,
            b'a' => Reason::ServiceForced,
            b'b' => Reason::ClientForced,
            _ => Reason::NotTraceable,
        }
    }

    /// The id with this reason packed in, if it is a UUID and the reason changes it.
    fn pack(self, id: &str) -> Option<String> {
        if id.len() != 36 || !id.is_char_boundary(14) || !id.is_char_boundary(15) {
            return None;
        }
        let digit = match self {
            Reason::NotTraceable => '4',
            Reason::Sampling => '9',
            Reason::ServiceForced => 'a',
            Reason::ClientForced => 'b',
        };
        let current = id.as_bytes()[14];
        if current == digit as u8 || (self == Reason::NotTraceable && Reason::of(id) == Reason::NotTraceable) {
            return None;
        }
        Some(format!("{}{digit}{}", &id[..14], &id[15..]))
    }
}

/// A request's span, open until the response ends.
#[derive(Debug)]
pub struct Active {
    tracer: Arc<Tracer>,
    outgoing: Outgoing,
    /// Set when the caller's decorator named the span (inbound), which the route's does
    /// not change and the response does not carry back.
    named: bool,
    /// What a sampled span reports; unsampled spans only pass their context on.
    detail: Option<Box<Detail>>,
}

#[derive(Debug)]
struct Detail {
    start: SystemTime,
    name: String,
    attributes: Vec<KeyValue>,
}

/// How a traced request ended.
#[derive(Debug, Default)]
pub struct Outcome<'a> {
    /// The response status sent downstream.
    pub status: u16,
    /// gRPC status, from the response headers or trailers.
    pub grpc_status: Option<u16>,
    /// Envoy's response flags (`-` when none).
    pub flags: &'a str,
    /// The cluster, if the request reached one.
    pub cluster: Option<&'a str>,
    /// `ip:port` of the upstream host.
    pub upstream: Option<&'a str>,
    /// Request body bytes.
    pub request_size: u64,
    /// Response body bytes.
    pub response_size: u64,
}

impl Active {
    /// The context to pass upstream.
    pub fn outgoing(&self) -> &Outgoing {
        &self.outgoing
    }

    /// Names the span after the route's decorator (unless the caller's named it).
    pub fn decorate(&mut self, operation: &str) {
        if let Some(d) = self.detail.as_mut()
            && !self.named
        {
            operation.clone_into(&mut d.name);
        }
    }

    /// The decorator header on the response, as Envoy handles it: outbound, the
    /// server's sidecar named the operation, which renames this span, and the header
    /// goes no further; inbound, the route's `operation` goes back to the caller's
    /// sidecar unless the caller named it.
    pub fn on_response(&mut self, operation: Option<&str>, headers: &mut HeaderMap) {
        if self.egress() {
            if let Some(v) = headers.remove("x-envoy-decorator-operation")
                && let (Ok(name), Some(d)) = (v.to_str(), self.detail.as_mut())
                && !name.is_empty()
            {
                name.clone_into(&mut d.name);
            }
        } else if !self.named
            && let Some(v) = operation.and_then(|op| HeaderValue::from_str(op).ok())
        {
            headers.insert("x-envoy-decorator-operation", v);
        }
    }

    /// Whether the span is sampled (and so reported).
    pub fn sampled(&self) -> bool {
        self.detail.is_some()
    }

    /// Whether this hop is outbound (it passes its decorator on to the server's sidecar).
    pub fn egress(&self) -> bool {
        !self.tracer.ingress
    }

    /// Ends the span and, if sampled, hands it to the exporter.
    pub fn finish(self, shared: &Arc<Shared>, outcome: Outcome<'_>) {
        let Some(mut detail) = self.detail else { return };
        let client = !self.tracer.ingress;
        let a = &mut detail.attributes;
        a.push(string_attribute("request_size", &outcome.request_size.to_string()));
        a.push(string_attribute("response_size", &outcome.response_size.to_string()));
        a.push(string_attribute("response_flags", outcome.flags));
        a.push(string_attribute("http.status_code", &outcome.status.to_string()));
        if let Some(c) = outcome.cluster {
            a.push(string_attribute("upstream_cluster", c));
            a.push(string_attribute("upstream_cluster.name", c));
        }
        if let Some(u) = outcome.upstream {
            a.push(string_attribute("upstream_address", u));
        }
        if let Some(g) = outcome.grpc_status {
            a.push(string_attribute("grpc.status_code", &g.to_string()));
        }
        // Envoy's `error` tag: no response, a 5xx, or a gRPC status that means a fault.
        let grpc_fault = outcome.grpc_status.is_some_and(|g| matches!(g, 2 | 4 | 8 | 12 | 13 | 14 | 15));
        if outcome.status >= 500 || outcome.status == 0 || grpc_fault {
            a.push(string_attribute("error", "true"));
        }
        // The OpenTelemetry status, as Envoy's tracer maps it.
        let error = outcome.status >= 500
            || (client && outcome.status >= 400)
            || outcome
                .grpc_status
                .is_some_and(|g| if client { g != 0 } else { matches!(g, 2 | 4 | 12 | 13 | 14 | 15) });
        let o = &self.outgoing;
        let span = Span {
            trace_id: o.trace_id.to_be_bytes().to_vec(),
            span_id: o.span_id.to_be_bytes().to_vec(),
            trace_state: o.trace_state.as_ref().and_then(|s| s.to_str().ok()).unwrap_or("").to_owned(),
            parent_span_id: o.parent_span_id.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
            // Sampled; whether the parent is remote is known (it is, when there is one).
            flags: if o.parent_span_id.is_some() { 0x301 } else { 0x101 },
            name: detail.name,
            kind: if client { SpanKind::Client } else { SpanKind::Server } as i32,
            start_time_unix_nano: unix_nanos(detail.start),
            end_time_unix_nano: unix_nanos(SystemTime::now()),
            attributes: detail.attributes,
            status: Some(Status {
                code: if error { StatusCode::Error } else { StatusCode::Unset } as i32,
                message: String::new(),
            }),
            ..Default::default()
        };
        shared.spans.push(shared, &self.tracer.target, span);
    }
}

/// Writes the context (and, outbound, the route's decorator) into the upstream request.
pub fn inject(active: &Active, operation: Option<&str>, headers: &mut HeaderMap) {
    active.outgoing.inject(headers);
    if let Some(op) = operation.filter(|_| active.egress())
        && let Ok(v) = HeaderValue::from_str(op)
    {
        headers.insert("x-envoy-decorator-operation", v);
    }
}

fn custom_tag(t: &CustomTag) -> Result<(String, Tag), ConfigError> {
    let tag = match &t.r#type {
        Some(custom_tag::Type::Literal(l)) => Tag::Fixed(l.value.clone()),
        Some(custom_tag::Type::Environment(e)) => {
            Tag::Fixed(std::env::var(&e.name).ok().unwrap_or_else(|| e.default_value.clone()))
        }
        Some(custom_tag::Type::RequestHeader(h)) => match h.name.to_ascii_lowercase().as_str() {
            ":authority" | "host" => Tag::Authority,
            ":path" => Tag::Path,
            ":method" => Tag::Method,
            name => match crate::model::route::header_name(name) {
                Ok(name) => Tag::Header(name, Some(h.default_value.clone()).filter(|d| !d.is_empty())),
                Err(e) => {
                    // One bad tag is not worth refusing the listener over.
                    tracing::warn!("custom tag {}: {e}; left out", t.tag);
                    Tag::Fixed(h.default_value.clone())
                }
            },
        },
        _ => {
            return Err(ConfigError::new(format!(
                "custom tag {}: only literal, environment and request_header tags are supported",
                t.tag
            )));
        }
    };
    Ok((t.tag.clone(), tag))
}

/// An OTLP string attribute.
pub fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_owned())) }),
        ..Default::default()
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

fn chance(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

fn nonzero_u128() -> u128 {
    fastrand::u128(1..)
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(random: f64, overall: f64) -> Tracer {
        Tracer {
            target: Arc::new(Target {
                cluster: "c".into(),
                authority: "c".into(),
                service_name: "s".into(),
                max_cache: 8,
            }),
            random,
            client: 100.0,
            overall,
            ingress: true,
            tags: Vec::new(),
            max_path: 256,
        }
    }

    fn with_id(id: &str, extra: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_str(id).unwrap_or_else(|e| panic!("{e}")));
        for (k, v) in extra {
            h.insert(*k, HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")));
        }
        h
    }

    const ID: &str = "12345678-aaaa-4bbb-8ccc-1234567890ab";

    #[test]
    fn the_decision_is_packed_into_the_request_id() {
        // 0x12345678 % 10000 = 9896: sampled at 99%, not at 98%.
        let mut h = with_id(ID, &[]);
        assert!(tracer(99.0, 100.0).decide(&mut h));
        assert_eq!(h["x-request-id"], "12345678-aaaa-9bbb-8ccc-1234567890ab");
        let mut h = with_id(ID, &[]);
        assert!(!tracer(98.0, 100.0).decide(&mut h));
        assert_eq!(h["x-request-id"], ID);
        // A decision already in the id stands, whatever this hop's percentage.
        let mut h = with_id("12345678-aaaa-9bbb-8ccc-1234567890ab", &[]);
        assert!(tracer(0.0, 100.0).decide(&mut h));
        // x-client-trace-id forces a trace (reason 'b'); overall sampling caps it.
        let mut h = with_id(ID, &[("x-client-trace-id", "x")]);
        assert!(tracer(0.0, 100.0).decide(&mut h));
        assert_eq!(h["x-request-id"], "12345678-aaaa-bbbb-8ccc-1234567890ab");
        let mut h = with_id(ID, &[("x-client-trace-id", "x")]);
        assert!(!tracer(0.0, 50.0).decide(&mut h));
        assert_eq!(h["x-request-id"], "12345678-aaaa-4bbb-8ccc-1234567890ab");
        // An id that is not a UUID holds no decision: not traced.
        let mut h = with_id("12345678", &[]);
        assert!(!tracer(100.0, 100.0).decide(&mut h));
        let mut h = with_id("not-hex-at-all", &[]);
        assert!(!tracer(100.0, 100.0).decide(&mut h));
    }

    #[test]
    fn reasons_read_the_version_digit() {
        assert_eq!(Reason::of("12345678-aaaa-abbb-8ccc-1234567890ab"), Reason::ServiceForced);
        assert_eq!(Reason::of("12345678-aaaa-4bbb-8ccc-1234567890ab"), Reason::NotTraceable);
        assert_eq!(Reason::of("short"), Reason::NotTraceable);
        // Multi-byte text of UUID length is not cut inside a character.
        let odd = "ééééééééééééééééé-x";
        assert_eq!(Reason::Sampling.pack(odd), None);
    }

    #[test]
    fn long_paths_are_cut_on_a_character_boundary() {
        let mut s = "/é".repeat(10);
        truncate(&mut s, 5);
        assert_eq!(s, "/é/");
    }
}
