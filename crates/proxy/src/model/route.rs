//! Route configurations (RDS), compiled once when they arrive so that a request only
//! compares strings: virtual hosts by domain, routes by path, headers and query.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderValueOption, header_value_option};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, RetryPolicy as EnvoyRetry, Route as EnvoyRoute, RouteAction as EnvoyAction,
    RouteConfiguration, VirtualHost as EnvoyVirtualHost, header_matcher, query_parameter_matcher, redirect_action,
    route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::Any;
use hyper::header::{HeaderName, HeaderValue};
use regex::Regex;

use super::{ConfigError, duration, unpack};

const FAULT_FILTER: &str = "envoy.filters.http.fault";
const CORS_FILTER: &str = "envoy.filters.http.cors";

/// A compiled route configuration.
#[derive(Debug)]
pub struct RouteTable {
    /// Its name (`9080`, `http.8080`, `inbound|9080||`).
    pub name: String,
    /// Virtual hosts in configuration order.
    pub virtual_hosts: Vec<VirtualHost>,
    exact: HashMap<String, usize, foldhash::fast::RandomState>,
    suffixes: Vec<(String, usize)>,
    prefixes: Vec<(String, usize)>,
    any: Option<usize>,
    /// Headers changed on every request through this table.
    pub request_headers: HeaderOps,
    /// Headers changed on every response through this table.
    pub response_headers: HeaderOps,
}

/// A virtual host.
#[derive(Debug)]
pub struct VirtualHost {
    /// `reviews.default.svc.cluster.local:9080`.
    pub name: String,
    /// Routes, first match wins.
    pub routes: Vec<Route>,
    /// CORS for routes that set none.
    pub cors: Option<Arc<Cors>>,
    /// Request headers changed for every route.
    pub request_headers: HeaderOps,
    /// Response headers changed for every route.
    pub response_headers: HeaderOps,
}

/// A route.
#[derive(Debug)]
pub struct Route {
    /// Its name, for stats and logs (shared with each request's metrics and log entry).
    pub name: Arc<str>,
    /// When it applies.
    pub matcher: RouteMatcher,
    /// What it does.
    pub action: Action,
    /// Fault injection, if configured for this route.
    pub fault: Option<Fault>,
    /// CORS, if configured for this route.
    pub cors: Option<Arc<Cors>>,
    /// Request header changes.
    pub request_headers: HeaderOps,
    /// Response header changes.
    pub response_headers: HeaderOps,
    /// The span name of requests it takes, when traced.
    pub decorator: Option<Decorator>,
}

/// A route's `decorator`: the operation its traced requests' spans are named after.
#[derive(Debug)]
pub struct Decorator {
    /// The span name.
    pub operation: String,
    /// Whether the name goes upstream (`x-envoy-decorator-operation`), so that the
    /// server's sidecar names its span the same.
    pub propagate: bool,
}

/// The conditions of a route.
#[derive(Debug)]
pub struct RouteMatcher {
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
    /// Share of matching requests that take this route, per million.
    fraction: Option<u32>,
}

#[derive(Debug)]
enum PathMatch {
    Prefix(String),
    Exact(String),
    SeparatedPrefix(String),
    Regex(Regex),
}

#[derive(Debug)]
pub(crate) struct HeaderMatch {
    name: HeaderName,
    kind: HeaderMatchKind,
    invert: bool,
    missing_as_empty: bool,
}

#[derive(Debug)]
enum HeaderMatchKind {
    String(StringMatch),
    Present(bool),
    Range(i64, i64),
}

#[derive(Debug)]
struct QueryMatch {
    name: String,
    /// None: the parameter must be present.
    value: Option<StringMatch>,
}

/// Envoy's string matcher.
#[derive(Debug)]
pub enum StringMatch {
    /// Equal (optionally ignoring case).
    Exact(String, bool),
    /// Starts with.
    Prefix(String, bool),
    /// Ends with.
    Suffix(String, bool),
    /// Contains.
    Contains(String, bool),
    /// Matches the whole value.
    Regex(Regex),
}

/// What a route does.
#[derive(Debug)]
pub enum Action {
    /// Forward to a cluster.
    Forward(Box<Forward>),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly.
    Direct { status: u16, body: String },
}

/// Forwarding to a cluster.
#[derive(Debug)]
pub struct Forward {
    /// The cluster or weighted clusters.
    pub clusters: Clusters,
    /// Whole-request timeout (None: none).
    pub timeout: Option<Duration>,
    /// Retries.
    pub retry: Option<RetryPolicy>,
    /// Replaces the matched prefix.
    pub prefix_rewrite: Option<String>,
    /// Regex rewrite of the path.
    pub regex_rewrite: Option<(Regex, String)>,
    /// Replaces the authority.
    pub host_rewrite: Option<HeaderValue>,
    /// Mirrors (cluster, share per million).
    pub mirrors: Vec<(String, u32)>,
    /// Consistent-hash inputs.
    pub hash_policy: Vec<HashPolicy>,
}

/// One cluster or a weighted choice.
#[derive(Debug)]
pub enum Clusters {
    /// A single cluster.
    One(String),
    /// Weighted clusters, with their total weight.
    Weighted(Vec<WeightedCluster>, u64),
}

/// One weighted cluster.
#[derive(Debug)]
pub struct WeightedCluster {
    /// Cluster name.
    pub name: String,
    /// Weight.
    pub weight: u32,
    /// Request header changes when this cluster is chosen.
    pub request_headers: HeaderOps,
    /// Response header changes when this cluster is chosen.
    pub response_headers: HeaderOps,
}

/// A consistent-hash input.
#[derive(Debug, Clone)]
pub enum HashPolicy {
    /// A request header.
    Header(HeaderName),
    /// A cookie (generated with this ttl and path when absent and ttl is set).
    Cookie { name: String, ttl: Option<Duration>, path: String },
    /// The downstream address.
    SourceIp,
    /// A query parameter.
    Query(String),
}

/// A retry policy.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Conditions.
    pub on: RetryOn,
    /// Retries after the first attempt.
    pub num_retries: u32,
    /// Timeout of each attempt.
    pub per_try_timeout: Option<Duration>,
    /// Status codes retried under `retriable-status-codes`.
    pub status_codes: Vec<u16>,
    /// Back-off base interval.
    pub backoff_base: Duration,
    /// Back-off cap.
    pub backoff_max: Duration,
    /// Try other hosts than the ones already tried.
    pub other_hosts: bool,
    /// How many picks to find a host not tried yet.
    pub host_selection_attempts: u32,
}

/// Retry conditions (`retry_on`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RetryOn {
    /// Any 5xx, connect failure or reset.
    pub any_5xx: bool,
    /// 502, 503, 504.
    pub gateway_error: bool,
    /// Connection failure.
    pub connect_failure: bool,
    /// Reset, disconnect or timeout before a response.
    pub reset: bool,
    /// 409.
    pub retriable_4xx: bool,
    /// HTTP/2 REFUSED_STREAM.
    pub refused_stream: bool,
    /// The policy's status codes.
    pub status_codes: bool,
    /// gRPC statuses.
    pub grpc_cancelled: bool,
    /// gRPC DEADLINE_EXCEEDED.
    pub grpc_deadline_exceeded: bool,
    /// gRPC INTERNAL.
    pub grpc_internal: bool,
    /// gRPC RESOURCE_EXHAUSTED.
    pub grpc_resource_exhausted: bool,
    /// gRPC UNAVAILABLE.
    pub grpc_unavailable: bool,
}

/// A redirect.
#[derive(Debug)]
pub struct Redirect {
    /// New scheme.
    pub scheme: Option<String>,
    /// New host.
    pub host: Option<String>,
    /// New port.
    pub port: Option<u32>,
    /// New path.
    pub path: Option<PathRedirect>,
    /// Drop the query string.
    pub strip_query: bool,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// How a redirect changes the path.
#[derive(Debug)]
pub enum PathRedirect {
    /// Replace the whole path.
    Full(String),
    /// Replace the matched prefix.
    Prefix(String),
    /// Regex substitution.
    Regex(Regex, String),
}

/// Fault injection.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Delay and share per million.
    pub delay: Option<(Duration, u32)>,
    /// Abort and share per million.
    pub abort: Option<(FaultAbort, u32)>,
}

/// How an injected fault answers.
#[derive(Debug, Clone, Copy)]
pub enum FaultAbort {
    /// An HTTP status.
    Http(u16),
    /// A gRPC status.
    Grpc(u32),
}

/// A CORS policy.
#[derive(Debug)]
pub struct Cors {
    /// Allowed origins.
    pub origins: Vec<StringMatch>,
    /// `access-control-allow-methods`.
    pub methods: Option<HeaderValue>,
    /// `access-control-allow-headers`.
    pub headers: Option<HeaderValue>,
    /// `access-control-expose-headers`.
    pub expose: Option<HeaderValue>,
    /// `access-control-max-age`.
    pub max_age: Option<HeaderValue>,
    /// `access-control-allow-credentials: true`.
    pub credentials: bool,
}

/// Header changes.
#[derive(Debug, Default)]
pub struct HeaderOps {
    /// Headers to set or add.
    pub add: Vec<(HeaderName, HeaderValue, Append)>,
    /// Headers to remove.
    pub remove: Vec<HeaderName>,
}

/// What to do when a header to add is already there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Append {
    /// Add another value.
    Append,
    /// Add only when absent.
    IfAbsent,
    /// Replace (or add).
    Overwrite,
    /// Replace only when present.
    OverwriteIfExists,
}

impl StringMatch {
    /// Compiles an Envoy `StringMatcher`.
    pub fn compile(m: &StringMatcher) -> Result<StringMatch, ConfigError> {
        let ic = m.ignore_case;
        let lower = |s: &String| if ic { s.to_ascii_lowercase() } else { s.clone() };
        Ok(match &m.match_pattern {
            Some(string_matcher::MatchPattern::Exact(s)) => StringMatch::Exact(lower(s), ic),
            Some(string_matcher::MatchPattern::Prefix(s)) => StringMatch::Prefix(lower(s), ic),
            Some(string_matcher::MatchPattern::Suffix(s)) => StringMatch::Suffix(lower(s), ic),
            Some(string_matcher::MatchPattern::Contains(s)) => StringMatch::Contains(lower(s), ic),
            Some(string_matcher::MatchPattern::SafeRegex(r)) => StringMatch::Regex(whole_regex(&r.regex)?),
            Some(string_matcher::MatchPattern::Custom(_)) => {
                return Err(ConfigError::new("custom string matchers are not supported"));
            }
            None => StringMatch::Exact(String::new(), false),
        })
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        fn cmp(value: &str, ic: bool, f: impl Fn(&str) -> bool) -> bool {
            if ic { f(&value.to_ascii_lowercase()) } else { f(value) }
        }
        match self {
            StringMatch::Exact(s, ic) => cmp(value, *ic, |v| v == s),
            StringMatch::Prefix(s, ic) => cmp(value, *ic, |v| v.starts_with(s.as_str())),
            StringMatch::Suffix(s, ic) => cmp(value, *ic, |v| v.ends_with(s.as_str())),
            StringMatch::Contains(s, ic) => cmp(value, *ic, |v| v.contains(s.as_str())),
            StringMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// A regex that must match the whole input, as RE2's full match in Envoy.
fn whole_regex(pattern: &str) -> Result<Regex, ConfigError> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| ConfigError::new(format!("invalid regex {pattern:?}: {e}")))
}

/// A fractional percent as parts per million.
pub fn per_million(p: Option<&FractionalPercent>) -> u32 {
    let Some(p) = p else { return 1_000_000 };
    let scale = match fractional_percent::DenominatorType::try_from(p.denominator) {
        Ok(fractional_percent::DenominatorType::Hundred) => 10_000,
        Ok(fractional_percent::DenominatorType::TenThousand) => 100,
        _ => 1,
    };
    p.numerator.saturating_mul(scale).min(1_000_000)
}

/// Draws whether something with this share per million happens now.
pub fn chance(per_million: u32) -> bool {
    per_million >= 1_000_000 || fastrand::u32(0..1_000_000) < per_million
}

impl RouteTable {
    /// The virtual host for a request's authority (Envoy's order: exact, longest
    /// `*.suffix`, longest `prefix.*`, then `*`).
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        // Authorities are nearly always lower case already; copy only when they are not.
        let host: std::borrow::Cow<'_, str> = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            authority.to_ascii_lowercase().into()
        } else {
            authority.into()
        };
        let index = self
            .exact
            .get(host.as_ref())
            .copied()
            .or_else(|| {
                self.suffixes.iter().find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str())).map(|x| x.1)
            })
            .or_else(|| {
                self.prefixes.iter().find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str())).map(|x| x.1)
            })
            .or(self.any)?;
        self.virtual_hosts.get(index)
    }
}

impl RouteMatcher {
    /// Whether the route applies to a request with this path (query included) and headers.
    pub fn matches(&self, path_and_query: &str, headers: &hyper::HeaderMap) -> bool {
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => starts_with(path, p, self.case_sensitive),
            PathMatch::Exact(p) => {
                if self.case_sensitive {
                    path == p
                } else {
                    path.eq_ignore_ascii_case(p)
                }
            }
            PathMatch::SeparatedPrefix(p) => {
                starts_with(path, p, self.case_sensitive)
                    && (path.len() == p.len() || path.as_bytes().get(p.len()) == Some(&b'/'))
            }
            PathMatch::Regex(r) => r.is_match(path),
        };
        if !path_ok {
            return false;
        }
        if !self.headers.iter().all(|h| h.matches(headers)) {
            return false;
        }
        if !self.query.is_empty() {
            let params: Vec<(String, String)> = form_pairs(query);
            for q in &self.query {
                let found = params.iter().find(|(k, _)| *k == q.name);
                let ok = match (&q.value, found) {
                    (_, None) => false,
                    (None, Some(_)) => true,
                    (Some(m), Some((_, v))) => m.matches(v),
                };
                if !ok {
                    return false;
                }
            }
        }
        self.fraction.is_none_or(chance)
    }

    /// The length of the prefix a prefix match consumed (for `prefix_rewrite`).
    pub fn prefix_len(&self) -> Option<usize> {
        match &self.path {
            PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) => Some(p.len()),
            PathMatch::Exact(p) => Some(p.len()),
            PathMatch::Regex(_) => None,
        }
    }
}

fn starts_with(path: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        path.starts_with(prefix)
    } else {
        path.len() >= prefix.len() && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }
}

/// Query parameters, percent-decoded (`application/x-www-form-urlencoded`).
pub fn form_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

impl HeaderMatch {
    pub(crate) fn matches(&self, headers: &hyper::HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter().filter_map(|v| v.to_str().ok()).peekable();
        match values.next() {
            None => self.matches_value(None),
            Some(first) if values.peek().is_none() => self.matches_value(Some(first)),
            Some(first) => {
                let joined = std::iter::once(first).chain(values).collect::<Vec<_>>().join(",");
                self.matches_value(Some(&joined))
            }
        }
    }

    /// Whether one value (None: the header is absent) matches, whatever the header's name
    /// (for pseudo-headers such as `:method`).
    pub(crate) fn matches_value(&self, value: Option<&str>) -> bool {
        let value = match value {
            Some(v) => v,
            None if self.missing_as_empty => "",
            None => {
                return match self.kind {
                    HeaderMatchKind::Present(present) => present == self.invert,
                    _ => false,
                };
            }
        };
        let result = match &self.kind {
            HeaderMatchKind::String(m) => m.matches(value),
            HeaderMatchKind::Present(p) => *p,
            HeaderMatchKind::Range(lo, hi) => value.parse::<i64>().is_ok_and(|v| *lo <= v && v < *hi),
        };
        result != self.invert
    }
}

impl HeaderOps {
    /// Applies the changes to a header map.
    pub fn apply(&self, headers: &mut hyper::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value, append) in &self.add {
            match append {
                Append::Append => {
                    headers.append(name.clone(), value.clone());
                }
                Append::IfAbsent => {
                    if !headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
                Append::Overwrite => {
                    headers.insert(name.clone(), value.clone());
                }
                Append::OverwriteIfExists => {
                    if headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
            }
        }
    }

    /// True when there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// Compiles an RDS resource (or an inline route configuration).
pub fn compile_route_table(rc: &RouteConfiguration) -> Result<RouteTable, ConfigError> {
    let ctx = |e: ConfigError| e.context(format!("route configuration {}", rc.name));
    let mut table = RouteTable {
        name: rc.name.clone(),
        virtual_hosts: Vec::with_capacity(rc.virtual_hosts.len()),
        exact: HashMap::default(),
        suffixes: Vec::new(),
        prefixes: Vec::new(),
        any: None,
        request_headers: header_ops(&rc.request_headers_to_add, &rc.request_headers_to_remove).map_err(ctx)?,
        response_headers: header_ops(&rc.response_headers_to_add, &rc.response_headers_to_remove).map_err(ctx)?,
    };
    for (index, vh) in rc.virtual_hosts.iter().enumerate() {
        for domain in &vh.domains {
            let d = domain.to_ascii_lowercase();
            let duplicate = if d == "*" {
                table.any.replace(index).is_some()
            } else if let Some(suffix) = d.strip_prefix('*') {
                table.suffixes.push((suffix.to_owned(), index));
                false
            } else if let Some(prefix) = d.strip_suffix('*') {
                table.prefixes.push((prefix.to_owned(), index));
                false
            } else {
                table.exact.insert(d.clone(), index).is_some()
            };
            if duplicate {
                return Err(ctx(ConfigError::new(format!(
                    "only unique values for domains are permitted: duplicate entry of domain {domain}"
                ))));
            }
        }
        table.virtual_hosts.push(compile_virtual_host(vh).map_err(ctx)?);
    }
    table.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
    table.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
    Ok(table)
}

fn compile_virtual_host(vh: &EnvoyVirtualHost) -> Result<VirtualHost, ConfigError> {
    let ctx = |e: ConfigError| e.context(format!("virtual host {}", vh.name));
    let routes = vh.routes.iter().map(compile_route).collect::<Result<_, _>>().map_err(ctx)?;
    Ok(VirtualHost {
        name: vh.name.clone(),
        routes,
        cors: cors_of(&vh.typed_per_filter_config).map_err(ctx)?,
        request_headers: header_ops(&vh.request_headers_to_add, &vh.request_headers_to_remove).map_err(ctx)?,
        response_headers: header_ops(&vh.response_headers_to_add, &vh.response_headers_to_remove).map_err(ctx)?,
    })
}

fn compile_route(r: &EnvoyRoute) -> Result<Route, ConfigError> {
    let ctx = |e: ConfigError| e.context(format!("route {:?}", r.name));
    let m = r.r#match.clone().unwrap_or_default();
    let path = match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(route_match::PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        Some(route_match::PathSpecifier::PathSeparatedPrefix(p)) => PathMatch::SeparatedPrefix(p.clone()),
        Some(route_match::PathSpecifier::SafeRegex(re)) => PathMatch::Regex(whole_regex(&re.regex).map_err(ctx)?),
        Some(_) => return Err(ctx(ConfigError::new("this path specifier is not supported"))),
        None => return Err(ctx(ConfigError::new("a route match needs a path specifier"))),
    };
    let case_sensitive = m.case_sensitive.as_ref().is_none_or(|b| b.value);
    let headers = m.headers.iter().map(header_match).collect::<Result<_, _>>().map_err(ctx)?;
    let query = m.query_parameters.iter().map(query_match).collect::<Result<_, _>>().map_err(ctx)?;
    let fraction = m.runtime_fraction.as_ref().map(|f| per_million(f.default_value.as_ref()));
    let action = match &r.action {
        Some(route::Action::Route(a)) => Action::Forward(Box::new(forward(a).map_err(ctx)?)),
        Some(route::Action::Redirect(rd)) => Action::Redirect(redirect(rd).map_err(ctx)?),
        Some(route::Action::DirectResponse(d)) => Action::Direct {
            status: u16::try_from(d.status).ok().filter(|s| (200..600).contains(s)).ok_or_else(|| {
                ctx(ConfigError::new(format!("direct response status {} is not an HTTP status", d.status)))
            })?,
            body: match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                Some(envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(s)) => s.clone(),
                Some(envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineBytes(b)) => {
                    String::from_utf8_lossy(b).into_owned()
                }
                _ => String::new(),
            },
        },
        Some(_) => return Err(ctx(ConfigError::new("this route action is not supported"))),
        None => return Err(ctx(ConfigError::new("a route needs an action"))),
    };
    Ok(Route {
        name: r.name.as_str().into(),
        matcher: RouteMatcher { path, case_sensitive, headers, query, fraction },
        action,
        fault: fault_of(&r.typed_per_filter_config).map_err(ctx)?,
        cors: cors_of(&r.typed_per_filter_config).map_err(ctx)?,
        request_headers: header_ops(&r.request_headers_to_add, &r.request_headers_to_remove).map_err(ctx)?,
        response_headers: header_ops(&r.response_headers_to_add, &r.response_headers_to_remove).map_err(ctx)?,
        decorator: r.decorator.as_ref().filter(|d| !d.operation.is_empty()).map(|d| Decorator {
            operation: d.operation.clone(),
            propagate: d.propagate.as_ref().is_none_or(|p| p.value),
        }),
    })
}

pub(crate) fn header_name(name: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| ConfigError::new(format!("{name:?} is not a valid header name")))
}

// The deprecated matcher forms are still valid xDS that Envoy accepts.
#[allow(deprecated)]
pub(crate) fn header_match(h: &HeaderMatcher) -> Result<HeaderMatch, ConfigError> {
    use header_matcher::HeaderMatchSpecifier as S;
    let kind = match &h.header_match_specifier {
        Some(S::StringMatch(m)) => HeaderMatchKind::String(StringMatch::compile(m)?),
        Some(S::ExactMatch(e)) => HeaderMatchKind::String(StringMatch::Exact(e.clone(), false)),
        Some(S::PrefixMatch(p)) => HeaderMatchKind::String(StringMatch::Prefix(p.clone(), false)),
        Some(S::SuffixMatch(p)) => HeaderMatchKind::String(StringMatch::Suffix(p.clone(), false)),
        Some(S::ContainsMatch(p)) => HeaderMatchKind::String(StringMatch::Contains(p.clone(), false)),
        Some(S::SafeRegexMatch(r)) => HeaderMatchKind::String(StringMatch::Regex(whole_regex(&r.regex)?)),
        Some(S::PresentMatch(p)) => HeaderMatchKind::Present(*p),
        Some(S::RangeMatch(r)) => HeaderMatchKind::Range(r.start, r.end),
        // No specifier: the header must be present.
        None => HeaderMatchKind::Present(true),
    };
    Ok(HeaderMatch {
        name: header_name(&h.name)?,
        kind,
        invert: h.invert_match,
        missing_as_empty: h.treat_missing_header_as_empty,
    })
}

fn query_match(q: &QueryParameterMatcher) -> Result<QueryMatch, ConfigError> {
    let value = match &q.query_parameter_match_specifier {
        Some(query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(m)) => Some(StringMatch::compile(m)?),
        Some(query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true)) | None => None,
        Some(query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(false)) => {
            return Err(ConfigError::new("present_match: false is not supported"));
        }
    };
    Ok(QueryMatch { name: q.name.clone(), value })
}

fn forward(a: &EnvoyAction) -> Result<Forward, ConfigError> {
    let clusters = match &a.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => Clusters::One(c.clone()),
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            let mut list = Vec::with_capacity(w.clusters.len());
            for c in &w.clusters {
                list.push(WeightedCluster {
                    name: c.name.clone(),
                    weight: c.weight.as_ref().map_or(0, |w| w.value),
                    request_headers: header_ops(&c.request_headers_to_add, &c.request_headers_to_remove)?,
                    response_headers: header_ops(&c.response_headers_to_add, &c.response_headers_to_remove)?,
                });
            }
            let total: u64 = list.iter().map(|c| u64::from(c.weight)).sum();
            if total == 0 {
                return Err(ConfigError::new("weighted clusters must have a positive total weight"));
            }
            Clusters::Weighted(list, total)
        }
        Some(_) => return Err(ConfigError::new("this cluster specifier is not supported")),
        None => return Err(ConfigError::new("a route action needs a cluster")),
    };
    // Envoy's default route timeout is 15 s; an explicit 0 disables it.
    let timeout = match &a.timeout {
        None => Some(Duration::from_secs(15)),
        Some(t) => Some(duration(t)).filter(|d| !d.is_zero()),
    };
    let host_rewrite = match &a.host_rewrite_specifier {
        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(
            HeaderValue::from_str(h)
                .map_err(|_| ConfigError::new(format!("host rewrite {h:?} is not a header value")))?,
        ),
        Some(route_action::HostRewriteSpecifier::AutoHostRewrite(b)) if !b.value => None,
        Some(_) => return Err(ConfigError::new("only literal host rewrites are supported")),
        None => None,
    };
    let regex_rewrite = match &a.regex_rewrite {
        Some(r) => {
            let pattern = r.pattern.as_ref().map(|p| p.regex.as_str()).unwrap_or_default();
            let re = Regex::new(pattern).map_err(|e| ConfigError::new(format!("invalid regex {pattern:?}: {e}")))?;
            Some((re, envoy_substitution(&r.substitution)))
        }
        None => None,
    };
    let mirrors = a
        .request_mirror_policies
        .iter()
        .map(|m| {
            (
                m.cluster.clone(),
                m.runtime_fraction.as_ref().map_or(1_000_000, |f| per_million(f.default_value.as_ref())),
            )
        })
        .collect();
    let hash_policy = a.hash_policy.iter().filter_map(hash_policy).collect::<Result<_, _>>()?;
    Ok(Forward {
        clusters,
        timeout,
        retry: a.retry_policy.as_ref().map(retry_policy).transpose()?,
        prefix_rewrite: Some(a.prefix_rewrite.clone()).filter(|p| !p.is_empty()),
        regex_rewrite,
        host_rewrite,
        mirrors,
        hash_policy,
    })
}

/// RE2 substitutions write `\1`; Rust's regex writes `${1}`.
fn envoy_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(d)) if d.is_ascii_digit() => {
                out.push_str(&format!("${{{d}}}"));
                chars.next();
            }
            ('$', _) => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}

fn hash_policy(h: &route_action::HashPolicy) -> Option<Result<HashPolicy, ConfigError>> {
    use route_action::hash_policy::PolicySpecifier as P;
    Some(match h.policy_specifier.as_ref()? {
        P::Header(hh) => header_name(&hh.header_name).map(HashPolicy::Header),
        P::Cookie(c) => {
            Ok(HashPolicy::Cookie { name: c.name.clone(), ttl: c.ttl.as_ref().map(duration), path: c.path.clone() })
        }
        P::ConnectionProperties(p) if p.source_ip => Ok(HashPolicy::SourceIp),
        P::QueryParameter(q) => Ok(HashPolicy::Query(q.name.clone())),
        _ => return None,
    })
}

fn retry_policy(r: &EnvoyRetry) -> Result<RetryPolicy, ConfigError> {
    let mut on = RetryOn::default();
    for cond in r.retry_on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        match cond {
            "5xx" => on.any_5xx = true,
            "gateway-error" => on.gateway_error = true,
            "connect-failure" => on.connect_failure = true,
            "reset" | "reset-before-request" => on.reset = true,
            "retriable-4xx" => on.retriable_4xx = true,
            "refused-stream" => on.refused_stream = true,
            "retriable-status-codes" => on.status_codes = true,
            "cancelled" => on.grpc_cancelled = true,
            "deadline-exceeded" => on.grpc_deadline_exceeded = true,
            "internal" => on.grpc_internal = true,
            "resource-exhausted" => on.grpc_resource_exhausted = true,
            "unavailable" => on.grpc_unavailable = true,
            "envoy-ratelimited" | "retriable-headers" | "http3-post-connect-failure" => {}
            other => return Err(ConfigError::new(format!("unknown retry_on condition {other:?}"))),
        }
    }
    let base = r
        .retry_back_off
        .as_ref()
        .and_then(|b| b.base_interval.as_ref())
        .map_or(Duration::from_millis(25), duration)
        .max(Duration::from_millis(1));
    let max = r.retry_back_off.as_ref().and_then(|b| b.max_interval.as_ref()).map_or(base * 10, duration);
    Ok(RetryPolicy {
        on,
        num_retries: r.num_retries.as_ref().map_or(1, |n| n.value),
        per_try_timeout: r.per_try_timeout.as_ref().map(duration).filter(|d| !d.is_zero()),
        status_codes: r.retriable_status_codes.iter().filter_map(|c| u16::try_from(*c).ok()).collect(),
        backoff_base: base,
        backoff_max: max.max(base),
        other_hosts: r.retry_host_predicate.iter().any(|p| p.name == "envoy.retry_host_predicates.previous_hosts"),
        host_selection_attempts: u32::try_from(r.host_selection_retry_max_attempts).unwrap_or(1).max(1),
    })
}

fn redirect(r: &envoy_types::pb::envoy::config::route::v3::RedirectAction) -> Result<Redirect, ConfigError> {
    let scheme = match &r.scheme_rewrite_specifier {
        Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_owned()),
        Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
        _ => None,
    };
    let path = match &r.path_rewrite_specifier {
        Some(redirect_action::PathRewriteSpecifier::PathRedirect(p)) => Some(PathRedirect::Full(p.clone())),
        Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(p)) => Some(PathRedirect::Prefix(p.clone())),
        Some(redirect_action::PathRewriteSpecifier::RegexRewrite(rr)) => {
            let pattern = rr.pattern.as_ref().map(|p| p.regex.as_str()).unwrap_or_default();
            let re = Regex::new(pattern).map_err(|e| ConfigError::new(format!("invalid regex {pattern:?}: {e}")))?;
            Some(PathRedirect::Regex(re, envoy_substitution(&rr.substitution)))
        }
        Some(_) => return Err(ConfigError::new("this redirect path rewrite is not supported")),
        None => None,
    };
    let status = match redirect_action::RedirectResponseCode::try_from(r.response_code) {
        Ok(redirect_action::RedirectResponseCode::MovedPermanently) => 301,
        Ok(redirect_action::RedirectResponseCode::Found) => 302,
        Ok(redirect_action::RedirectResponseCode::SeeOther) => 303,
        Ok(redirect_action::RedirectResponseCode::TemporaryRedirect) => 307,
        Ok(redirect_action::RedirectResponseCode::PermanentRedirect) => 308,
        Err(_) => return Err(ConfigError::new(format!("unknown redirect response code {}", r.response_code))),
    };
    Ok(Redirect {
        scheme,
        host: Some(r.host_redirect.clone()).filter(|h| !h.is_empty()),
        port: Some(r.port_redirect).filter(|p| *p != 0),
        path,
        strip_query: r.strip_query,
        status,
    })
}

#[allow(deprecated)]
fn header_ops(add: &[HeaderValueOption], remove: &[String]) -> Result<HeaderOps, ConfigError> {
    let mut ops = HeaderOps { add: Vec::with_capacity(add.len()), remove: Vec::with_capacity(remove.len()) };
    for name in remove {
        ops.remove.push(header_name(name)?);
    }
    for option in add {
        let Some(h) = &option.header else { continue };
        let value = if h.raw_value.is_empty() { h.value.as_bytes() } else { &h.raw_value };
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| ConfigError::new(format!("header {}: not a valid header value", h.key)))?;
        let append = match &option.append {
            Some(b) if b.value => Append::Append,
            Some(_) => Append::Overwrite,
            None => match header_value_option::HeaderAppendAction::try_from(option.append_action) {
                Ok(header_value_option::HeaderAppendAction::AppendIfExistsOrAdd) => Append::Append,
                Ok(header_value_option::HeaderAppendAction::AddIfAbsent) => Append::IfAbsent,
                Ok(header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd) => Append::Overwrite,
                Ok(header_value_option::HeaderAppendAction::OverwriteIfExists) => Append::OverwriteIfExists,
                Err(_) => return Err(ConfigError::new(format!("unknown append action {}", option.append_action))),
            },
        };
        ops.add.push((header_name(&h.key)?, value, append));
    }
    Ok(ops)
}

fn fault_of(config: &HashMap<String, Any>) -> Result<Option<Fault>, ConfigError> {
    let Some(any) = config.get(FAULT_FILTER) else { return Ok(None) };
    let f: HttpFault = unpack(any, "envoy.extensions.filters.http.fault.v3.HTTPFault")?;
    let delay = match &f.delay {
        Some(d) => match &d.fault_delay_secifier {
            Some(envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier::FixedDelay(t)) => {
                Some((duration(t), per_million(d.percentage.as_ref())))
            }
            _ => return Err(ConfigError::new("only fixed fault delays are supported")),
        },
        None => None,
    };
    let abort = match &f.abort {
        Some(a) => {
            let kind = match &a.error_type {
                Some(fault_abort::ErrorType::HttpStatus(s)) => FaultAbort::Http(
                    u16::try_from(*s)
                        .ok()
                        .filter(|s| (200..600).contains(s))
                        .ok_or_else(|| ConfigError::new(format!("fault abort status {s} is not an HTTP status")))?,
                ),
                Some(fault_abort::ErrorType::GrpcStatus(s)) => FaultAbort::Grpc(*s),
                _ => return Err(ConfigError::new("only HTTP and gRPC fault aborts are supported")),
            };
            Some((kind, per_million(a.percentage.as_ref())))
        }
        None => None,
    };
    Ok(Some(Fault { delay, abort }).filter(|f| f.delay.is_some() || f.abort.is_some()))
}

fn cors_of(config: &HashMap<String, Any>) -> Result<Option<Arc<Cors>>, ConfigError> {
    let Some(any) = config.get(CORS_FILTER) else { return Ok(None) };
    let c: CorsPolicy = unpack(any, "envoy.extensions.filters.http.cors.v3.CorsPolicy")?;
    if c.filter_enabled.as_ref().is_some_and(|f| per_million(f.default_value.as_ref()) == 0) {
        return Ok(None);
    }
    let value = |s: &str| -> Result<Option<HeaderValue>, ConfigError> {
        if s.is_empty() {
            return Ok(None);
        }
        HeaderValue::from_str(s)
            .map(Some)
            .map_err(|_| ConfigError::new(format!("CORS value {s:?} is not a header value")))
    };
    Ok(Some(Arc::new(Cors {
        origins: c.allow_origin_string_match.iter().map(StringMatch::compile).collect::<Result<_, _>>()?,
        methods: value(&c.allow_methods)?,
        headers: value(&c.allow_headers)?,
        expose: value(&c.expose_headers)?,
        max_age: value(&c.max_age)?,
        credentials: c.allow_credentials.as_ref().is_some_and(|b| b.value),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::{RouteMatch, VirtualHost as Vh};

    fn table(domains: &[&[&str]]) -> RouteTable {
        let rc = RouteConfiguration {
            name: "t".into(),
            virtual_hosts: domains
                .iter()
                .enumerate()
                .map(|(i, d)| Vh {
                    name: format!("vh{i}"),
                    domains: d.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        compile_route_table(&rc).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn virtual_hosts_match_in_envoys_order() {
        let t = table(&[&["*"], &["*.example.com"], &["*.shop.example.com"], &["api.*"], &["api.shop.example.com"]]);
        let name = |host: &str| t.virtual_host(host).map(|v| v.name.clone());
        assert_eq!(name("API.shop.example.com").as_deref(), Some("vh4"), "exact first, case-insensitive");
        assert_eq!(name("www.shop.example.com").as_deref(), Some("vh2"), "longest suffix next");
        assert_eq!(name("www.example.com").as_deref(), Some("vh1"));
        assert_eq!(name("api.other.org").as_deref(), Some("vh3"), "then prefixes");
        assert_eq!(name("other.org").as_deref(), Some("vh0"), "then the catch-all");
        assert_eq!(name("example.com").as_deref(), Some("vh0"), "*.example.com needs a label before it");
    }

    #[test]
    fn duplicate_domains_are_rejected() {
        let rc = RouteConfiguration {
            name: "t".into(),
            virtual_hosts: vec![
                Vh { name: "a".into(), domains: vec!["x".into()], ..Default::default() },
                Vh { name: "b".into(), domains: vec!["x".into()], ..Default::default() },
            ],
            ..Default::default()
        };
        let err = compile_route_table(&rc).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("duplicate entry of domain x"), "{err}");
    }

    fn matcher(m: RouteMatch) -> RouteMatcher {
        let r = EnvoyRoute {
            r#match: Some(m),
            action: Some(route::Action::DirectResponse(Default::default())),
            ..Default::default()
        };
        // A direct response needs a valid status; the matcher is what is tested here.
        let mut r = r;
        r.action =
            Some(route::Action::DirectResponse(envoy_types::pb::envoy::config::route::v3::DirectResponseAction {
                status: 200,
                ..Default::default()
            }));
        compile_route(&r).unwrap_or_else(|e| panic!("{e}")).matcher
    }

    fn headers(pairs: &[(&str, &str)]) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header_name(k).unwrap_or_else(|e| panic!("{e}")),
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        h
    }

    #[test]
    fn header_matching_follows_envoy_on_missing_headers() {
        let exact = |invert| HeaderMatcher {
            name: "end-user".into(),
            invert_match: invert,
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact("jason".into())),
                ignore_case: false,
            })),
            ..Default::default()
        };
        let m = matcher(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            headers: vec![exact(true)],
            ..Default::default()
        });
        assert!(m.matches("/", &headers(&[("end-user", "mary")])));
        assert!(!m.matches("/", &headers(&[("end-user", "jason")])));
        // Envoy: an inverted string match does not match an absent header.
        assert!(!m.matches("/", &headers(&[])));
        let m = matcher(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            headers: vec![exact(false)],
            ..Default::default()
        });
        assert!(m.matches("/", &headers(&[("end-user", "jason")])));
        assert!(!m.matches("/", &headers(&[])));
    }

    #[test]
    fn paths_match_without_the_query_and_regexes_match_whole_paths() {
        let prefix = matcher(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/api".into())),
            case_sensitive: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
            ..Default::default()
        });
        assert!(prefix.matches("/API/v1?x=1", &headers(&[])));
        let exact = matcher(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Path("/login".into())),
            ..Default::default()
        });
        assert!(exact.matches("/login?next=/", &headers(&[])));
        assert!(!exact.matches("/login/", &headers(&[])));
        let regex = matcher(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::SafeRegex(
                envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                    regex: "/items/[0-9]+".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        });
        assert!(regex.matches("/items/42", &headers(&[])));
        assert!(!regex.matches("/items/42/edit", &headers(&[])));
        let separated = matcher(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::PathSeparatedPrefix("/reviews".into())),
            ..Default::default()
        });
        assert!(separated.matches("/reviews/7", &headers(&[])) && separated.matches("/reviews", &headers(&[])));
        assert!(!separated.matches("/reviewsfoo", &headers(&[])));
        let query = matcher(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            query_parameters: vec![QueryParameterMatcher {
                name: "lang".into(),
                query_parameter_match_specifier: Some(
                    query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::Exact("en gb".into())),
                        ignore_case: false,
                    }),
                ),
            }],
            ..Default::default()
        });
        assert!(query.matches("/?a=1&lang=en%20gb", &headers(&[])));
        assert!(!query.matches("/?lang=fr", &headers(&[])));
    }

    #[test]
    fn fractional_percents_scale_to_parts_per_million() {
        let p = |numerator, d: fractional_percent::DenominatorType| {
            per_million(Some(&FractionalPercent { numerator, denominator: d as i32 }))
        };
        assert_eq!(p(25, fractional_percent::DenominatorType::Hundred), 250_000);
        assert_eq!(p(25, fractional_percent::DenominatorType::TenThousand), 2_500);
        assert_eq!(p(7, fractional_percent::DenominatorType::Million), 7);
        assert_eq!(p(500, fractional_percent::DenominatorType::Hundred), 1_000_000);
        assert_eq!(per_million(None), 1_000_000);
    }

    #[test]
    fn re2_substitutions_become_rust_ones() {
        assert_eq!(envoy_substitution(r"/v2/\1/\2"), "/v2/${1}/${2}");
        assert_eq!(envoy_substitution("/$x"), "/$$x");
    }
}
