//! Route configurations (RDS): VirtualService http rules as Envoy routes, one route
//! configuration per port (sidecars), per gateway port (`http.8080`) or per target
//! (`reviews.default.svc.cluster.local:9080`, proxyless gRPC).

use std::collections::BTreeSet;

use base64::Engine;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, data_source, header_value_option,
};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    Decorator, DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, header_matcher, query_parameter_matcher,
    redirect_action, route, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault, fault_abort};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};
use envoy_types::util::pack_any;
use prost::Message;
use weft_api::Resource;
use weft_api::istio::{Destination, Headers, HttpMatchRequest, HttpRoute, StringMatch, VirtualServiceSpec};
use weft_api::validate::host_covers;

use super::cluster::{cluster_name, reachable_services};
use super::duration_text;
use super::listener::HCM;
use crate::node::{ProxyIdentity, Role};
use crate::registry::{Service, resolve_host};
use crate::snapshot::Snapshot;

/// Istio's retry policy when a route sets none.
const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
const DEFAULT_ATTEMPTS: u32 = 2;

/// The route configurations the listeners refer to.
pub fn routes_for(snapshot: &Snapshot, proxy: &ProxyIdentity, listeners: &[Listener]) -> Vec<RouteConfiguration> {
    let names: BTreeSet<String> = listeners.iter().flat_map(rds_names).collect();
    names.into_iter().map(|name| route_config(snapshot, proxy, &name)).collect()
}

/// The RDS names a listener's connection managers refer to.
fn rds_names(listener: &Listener) -> Vec<String> {
    let mut out = Vec::new();
    let hcms = listener
        .filter_chains
        .iter()
        .flat_map(|c| &c.filters)
        .filter(|f| f.name == HCM)
        .filter_map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        })
        .chain(listener.api_listener.as_ref().and_then(|a| a.api_listener.as_ref()));
    for any in hcms {
        if let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice())
            && let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier
        {
            out.push(rds.route_config_name);
        }
    }
    out
}

/// Which traffic a route configuration serves.
enum Scope<'a> {
    /// A sidecar's outbound port.
    Sidecar(u32),
    /// A gateway port.
    Gateway(u32),
    /// A proxyless client's target.
    Target(&'a Service, u32, &'a str),
}

fn route_config(snapshot: &Snapshot, proxy: &ProxyIdentity, name: &str) -> RouteConfiguration {
    let scope = if let Some(port) = name.strip_prefix("http.").and_then(|p| p.parse().ok()) {
        Some(Scope::Gateway(port))
    } else if let Ok(port) = name.parse() {
        Some(Scope::Sidecar(port))
    } else {
        name.rsplit_once(':').and_then(|(host, port)| {
            let service = snapshot.registry.services.get(&resolve_host(host, &proxy.namespace))?;
            Some(Scope::Target(service, port.parse().ok()?, host))
        })
    };
    let virtual_hosts = match scope {
        Some(Scope::Sidecar(port)) => reachable_services(snapshot, proxy)
            .into_iter()
            .filter(|s| s.port(port).is_some())
            .map(|s| service_virtual_host(snapshot, proxy, s, port, domains(s, port, &proxy.namespace)))
            .collect(),
        Some(Scope::Target(service, port, host)) => {
            let mut domains = vec![name.to_owned(), host.to_owned(), service.hostname.clone()];
            domains.dedup();
            vec![service_virtual_host(snapshot, proxy, service, port, domains)]
        }
        Some(Scope::Gateway(port)) => gateway_virtual_hosts(snapshot, proxy, port),
        None => Vec::new(),
    };
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

/// The names a service answers to on a port: its FQDN and, from its own namespace,
/// the short forms (`reviews`, `reviews.default`, `reviews.default.svc`), each also
/// with `:port`.
fn domains(service: &Service, port: u32, proxy_namespace: &str) -> Vec<String> {
    let mut names = vec![service.hostname.clone()];
    if let Some(short) =
        service.hostname.strip_suffix(&format!(".{}.{}", service.namespace, crate::registry::DOMAIN_SUFFIX))
    {
        names.push(format!("{short}.{}", service.namespace));
        names.push(format!("{short}.{}.svc", service.namespace));
        if service.namespace == proxy_namespace {
            names.push(short.to_owned());
        }
    }
    let with_port: Vec<String> = names.iter().map(|n| format!("{n}:{port}")).collect();
    names.extend(with_port);
    names
}

/// The first VirtualService (in configuration order) that applies to `gateway` and
/// names the host.
pub(super) fn virtual_service_for<'a>(
    snapshot: &'a Snapshot,
    proxy: &ProxyIdentity,
    hostname: &str,
    gateway: &str,
) -> Option<(&'a Resource, &'a VirtualServiceSpec)> {
    snapshot.virtual_services().find(|(r, vs)| {
        let applies = if gateway == "mesh" {
            vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh")
        } else {
            vs.gateways.iter().any(|g| gateway_ref_matches(g, r.namespace(), gateway))
        };
        let visible = vs.export_to.is_empty()
            || vs
                .export_to
                .iter()
                .any(|e| e == "*" || e == &proxy.namespace || (e == "." && r.namespace() == proxy.namespace));
        applies && visible && vs.hosts.iter().any(|h| resolve_host(h, r.namespace()) == hostname)
    })
}

/// Whether a VirtualService's gateway reference (`name` or `ns/name`) names `gateway`
/// (`ns/name`).
pub(super) fn gateway_ref_matches(reference: &str, vs_namespace: &str, gateway: &str) -> bool {
    let full = if reference.contains('/') { reference.to_owned() } else { format!("{vs_namespace}/{reference}") };
    full == gateway
}

fn service_virtual_host(
    snapshot: &Snapshot,
    proxy: &ProxyIdentity,
    service: &Service,
    port: u32,
    domains: Vec<String>,
) -> VirtualHost {
    let routes = match virtual_service_for(snapshot, proxy, &service.hostname, "mesh") {
        Some((r, vs)) => http_routes(snapshot, proxy, r, vs, port, "mesh"),
        None => vec![default_route(snapshot, proxy, &service.hostname, &service.namespace, port)],
    };
    VirtualHost { name: format!("{}:{port}", service.hostname), domains, routes, ..Default::default() }
}

fn gateway_virtual_hosts(snapshot: &Snapshot, proxy: &ProxyIdentity, port: u32) -> Vec<VirtualHost> {
    let mut out: Vec<VirtualHost> = super::gateway_api::virtual_hosts(snapshot, proxy, port);
    for (gr, gw) in snapshot.gateways_for(proxy) {
        let gateway = format!("{}/{}", gr.namespace(), gr.name());
        let server_hosts: Vec<(String, String)> = gw
            .servers
            .iter()
            .filter(|s| s.port.as_ref().and_then(|p| p.number) == Some(port))
            .flat_map(|s| &s.hosts)
            .map(|h| match h.split_once('/') {
                Some((ns, host)) => (ns.to_owned(), host.to_owned()),
                None => ("*".to_owned(), h.clone()),
            })
            .collect();
        if server_hosts.is_empty() {
            continue;
        }
        for (r, vs) in snapshot.virtual_services() {
            if !vs.gateways.iter().any(|g| gateway_ref_matches(g, r.namespace(), &gateway)) {
                continue;
            }
            for host in &vs.hosts {
                let admitted = server_hosts.iter().any(|(ns, h)| {
                    let ns_ok = ns == "*" || ns == r.namespace() || (ns == "." && r.namespace() == gr.namespace());
                    ns_ok && (host_covers(h, host) || host_covers(host, h))
                });
                if !admitted || out.iter().any(|v| v.name == format!("{host}:{port}")) {
                    continue;
                }
                let domains =
                    if host == "*" { vec!["*".to_owned()] } else { vec![host.clone(), format!("{host}:{port}")] };
                out.push(VirtualHost {
                    name: format!("{host}:{port}"),
                    domains,
                    routes: http_routes(snapshot, proxy, r, vs, port, &gateway),
                    ..Default::default()
                });
            }
        }
    }
    out
}

fn default_route(snapshot: &Snapshot, proxy: &ProxyIdentity, hostname: &str, namespace: &str, port: u32) -> Route {
    let cluster = cluster_name("outbound", port, "", hostname);
    let mut action = RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
        timeout: Some(Duration::default()),
        retry_policy: Some(retry_policy(None, None, None, proxy)),
        ..Default::default()
    };
    action.hash_policy = hash_policy(snapshot, proxy, hostname, namespace, port);
    Route {
        name: "default".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(action)),
        decorator: Some(Decorator { operation: format!("{hostname}:{port}/*"), ..Default::default() }),
        ..Default::default()
    }
}

/// Istio's operation (span name) for a route: `host:port` and the path it matches when
/// it goes to one service, else the VirtualService's name in place of the host.
fn operation(route: &Route, virtual_service: &str, port: u32) -> String {
    let path = match route.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
        Some(route_match::PathSpecifier::Prefix(p)) => format!("{p}*"),
        Some(route_match::PathSpecifier::Path(p)) => p.clone(),
        Some(route_match::PathSpecifier::SafeRegex(r)) => r.regex.clone(),
        _ => "/*".to_owned(),
    };
    // One destination: its host and port, from the cluster's name.
    let destination = match &route.action {
        Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(c)),
            ..
        })) => super::cluster::parse_cluster_name(c).filter(|(_, _, host)| !host.is_empty()),
        _ => None,
    };
    match destination {
        Some((destination_port, _, host)) => format!("{host}:{destination_port}{path}"),
        None => format!("{virtual_service}:{port}{path}"),
    }
}

/// Envoy routes for a VirtualService's http rules on one port. A rule with several
/// matches becomes several routes with the same action, in order.
fn http_routes(
    snapshot: &Snapshot,
    proxy: &ProxyIdentity,
    r: &Resource,
    vs: &VirtualServiceSpec,
    port: u32,
    gateway: &str,
) -> Vec<Route> {
    let mut out = Vec::new();
    for (i, rule) in vs.http.iter().enumerate() {
        let name = rule.name.clone().unwrap_or_else(|| format!("{}.{}.{i}", r.namespace(), r.name()));
        let matches: Vec<Option<&HttpMatchRequest>> =
            if rule.r#match.is_empty() { vec![None] } else { rule.r#match.iter().map(Some).collect() };
        for m in matches {
            if let Some(m) = m
                && !match_applies(m, proxy, port, gateway)
            {
                continue;
            }
            let mut envoy_route = Route { name: name.clone(), r#match: Some(route_match(m)), ..Default::default() };
            envoy_route.action = Some(action(snapshot, proxy, r.namespace(), rule, port));
            envoy_route.decorator =
                Some(Decorator { operation: operation(&envoy_route, r.name(), port), ..Default::default() });
            apply_headers(&mut envoy_route, rule.headers.as_ref());
            if let Some(fault) = rule.fault.as_ref().and_then(fault_config) {
                envoy_route.typed_per_filter_config.insert("envoy.filters.http.fault".into(), pack_any(fault));
            }
            if let Some(cors) = rule.cors_policy.as_ref() {
                envoy_route
                    .typed_per_filter_config
                    .insert("envoy.filters.http.cors".into(), pack_any(cors_policy(cors)));
            }
            out.push(envoy_route);
        }
    }
    out
}

/// Whether a match's conditions on the caller (port, gateway, source labels and
/// namespace) hold for this proxy; they are decided here, not per request.
fn match_applies(m: &HttpMatchRequest, proxy: &ProxyIdentity, port: u32, gateway: &str) -> bool {
    m.port.is_none_or(|p| p == port)
        && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == gateway || gateway.ends_with(&format!("/{g}"))))
        && m.source_labels.iter().all(|(k, v)| proxy.labels.get(k) == Some(v))
        && m.source_namespace.as_deref().is_none_or(|ns| ns == proxy.namespace)
}

fn string_matcher(m: &StringMatch, ignore_case: bool) -> Option<StringMatcher> {
    let pattern = if let Some(exact) = &m.exact {
        string_matcher::MatchPattern::Exact(exact.clone())
    } else if let Some(prefix) = &m.prefix {
        string_matcher::MatchPattern::Prefix(prefix.clone())
    } else {
        string_matcher::MatchPattern::SafeRegex(RegexMatcher { regex: m.regex.clone()?, ..Default::default() })
    };
    Some(StringMatcher { match_pattern: Some(pattern), ignore_case })
}

fn header(name: &str, m: &StringMatch, invert: bool) -> HeaderMatcher {
    let specifier = match string_matcher(m, false) {
        Some(sm) => header_matcher::HeaderMatchSpecifier::StringMatch(sm),
        None => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
    };
    HeaderMatcher {
        name: name.to_owned(),
        invert_match: invert,
        header_match_specifier: Some(specifier),
        ..Default::default()
    }
}

fn route_match(m: Option<&HttpMatchRequest>) -> RouteMatch {
    let Some(m) = m else {
        return RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        };
    };
    let ignore_case = m.ignore_uri_case == Some(true);
    let path = match &m.uri {
        Some(StringMatch { exact: Some(p), .. }) => route_match::PathSpecifier::Path(p.clone()),
        Some(StringMatch { prefix: Some(p), .. }) => route_match::PathSpecifier::Prefix(p.clone()),
        Some(StringMatch { regex: Some(r), .. }) => {
            route_match::PathSpecifier::SafeRegex(RegexMatcher { regex: r.clone(), ..Default::default() })
        }
        _ => route_match::PathSpecifier::Prefix("/".into()),
    };
    let mut headers: Vec<HeaderMatcher> = Vec::new();
    for (pseudo, sm) in [(":method", &m.method), (":authority", &m.authority), (":scheme", &m.scheme)] {
        if let Some(sm) = sm {
            headers.push(header(pseudo, sm, false));
        }
    }
    headers.extend(m.headers.iter().map(|(k, v)| header(k, v, false)));
    headers.extend(m.without_headers.iter().map(|(k, v)| header(k, v, true)));
    let query_parameters = m
        .query_params
        .iter()
        .map(|(k, v)| QueryParameterMatcher {
            name: k.clone(),
            query_parameter_match_specifier: Some(match string_matcher(v, false) {
                Some(sm) => query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(sm),
                None => query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true),
            }),
        })
        .collect();
    RouteMatch {
        path_specifier: Some(path),
        case_sensitive: ignore_case.then_some(BoolValue { value: false }),
        headers,
        query_parameters,
        ..Default::default()
    }
}

/// The cluster a destination names: its port, or the service's only port, or the
/// port the request arrived on.
pub(super) fn destination_cluster(snapshot: &Snapshot, namespace: &str, d: &Destination, port: u32) -> String {
    let host = resolve_host(d.host.as_deref().unwrap_or(""), namespace);
    let service_port = d.port.as_ref().and_then(|p| p.number).or_else(|| {
        let service = snapshot.registry.services.get(&host)?;
        (service.ports.len() == 1).then(|| service.ports[0].number)
    });
    cluster_name("outbound", service_port.unwrap_or(port), d.subset.as_deref().unwrap_or(""), &host)
}

fn action(snapshot: &Snapshot, proxy: &ProxyIdentity, namespace: &str, rule: &HttpRoute, port: u32) -> route::Action {
    if let Some(redirect) = &rule.redirect {
        let code = match redirect.redirect_code.unwrap_or(301) {
            302 => redirect_action::RedirectResponseCode::Found,
            303 => redirect_action::RedirectResponseCode::SeeOther,
            307 => redirect_action::RedirectResponseCode::TemporaryRedirect,
            308 => redirect_action::RedirectResponseCode::PermanentRedirect,
            _ => redirect_action::RedirectResponseCode::MovedPermanently,
        };
        return route::Action::Redirect(RedirectAction {
            host_redirect: redirect.authority.clone().unwrap_or_default(),
            port_redirect: redirect.port.unwrap_or(0),
            response_code: code as i32,
            scheme_rewrite_specifier: redirect
                .scheme
                .clone()
                .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
            path_rewrite_specifier: redirect
                .uri
                .clone()
                .map(redirect_action::PathRewriteSpecifier::PathRedirect)
                .or_else(|| redirect.prefix_rewrite.clone().map(redirect_action::PathRewriteSpecifier::PrefixRewrite)),
            ..Default::default()
        });
    }
    if let Some(direct) = &rule.direct_response {
        let body = direct.body.as_ref().and_then(|b| {
            let specifier = match (&b.string, &b.bytes) {
                (Some(s), _) => data_source::Specifier::InlineString(s.clone()),
                (None, Some(bytes)) => {
                    data_source::Specifier::InlineBytes(base64::engine::general_purpose::STANDARD.decode(bytes).ok()?)
                }
                (None, None) => return None,
            };
            Some(DataSource { specifier: Some(specifier), ..Default::default() })
        });
        return route::Action::DirectResponse(DirectResponseAction {
            status: direct.status.unwrap_or(200),
            body,
            ..Default::default()
        });
    }
    let clusters: Vec<(String, Option<i32>, Option<&Headers>)> = rule
        .route
        .iter()
        .filter_map(|d| {
            Some((
                destination_cluster(snapshot, namespace, d.destination.as_ref()?, port),
                d.weight,
                d.headers.as_ref(),
            ))
        })
        .collect();
    let specifier = if clusters.len() == 1 && clusters[0].2.is_none() {
        route_action::ClusterSpecifier::Cluster(clusters[0].0.clone())
    } else {
        route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .iter()
                .map(|(name, weight, headers)| {
                    let mut wc = weighted_cluster::ClusterWeight {
                        name: name.clone(),
                        weight: Some(UInt32Value {
                            value: u32::try_from(weight.unwrap_or(if clusters.len() == 1 { 100 } else { 0 }))
                                .unwrap_or(0),
                        }),
                        ..Default::default()
                    };
                    if let Some(h) = headers {
                        let (add, remove) = header_ops(h.request.as_ref());
                        wc.request_headers_to_add = add;
                        wc.request_headers_to_remove = remove;
                        let (add, remove) = header_ops(h.response.as_ref());
                        wc.response_headers_to_add = add;
                        wc.response_headers_to_remove = remove;
                    }
                    wc
                })
                .collect(),
            ..Default::default()
        })
    };
    let first_host = rule
        .route
        .first()
        .and_then(|d| d.destination.as_ref())
        .and_then(|d| d.host.as_deref())
        .map(|h| resolve_host(h, namespace));
    let mut action = RouteAction {
        cluster_specifier: Some(specifier),
        timeout: Some(duration_text(rule.timeout.as_deref()).unwrap_or_default()),
        retry_policy: Some({
            let mut policy = retry_policy(
                rule.retries.as_ref().and_then(|r| r.attempts),
                rule.retries.as_ref().and_then(|r| r.retry_on.as_deref()),
                rule.retries.as_ref().and_then(|r| r.per_try_timeout.as_deref()),
                proxy,
            );
            // Envoy caps the backoff at ten times its base, as Istio leaves it.
            policy.retry_back_off =
                rule.retries.as_ref().and_then(|r| duration_text(r.backoff.as_deref())).map(|base| {
                    envoy_types::pb::envoy::config::route::v3::retry_policy::RetryBackOff {
                        base_interval: Some(base),
                        max_interval: None,
                    }
                });
            policy
        }),
        ..Default::default()
    };
    if let Some(rw) = &rule.rewrite {
        if let Some(uri) = &rw.uri {
            action.prefix_rewrite = uri.clone();
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            action.regex_rewrite = Some(envoy_types::pb::envoy::r#type::matcher::v3::RegexMatchAndSubstitute {
                pattern: Some(RegexMatcher { regex: rr.r#match.clone().unwrap_or_default(), ..Default::default() }),
                substitution: rr.rewrite.clone().unwrap_or_default(),
            });
        }
        if let Some(authority) = &rw.authority {
            action.host_rewrite_specifier =
                Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(authority.clone()));
        }
    }
    let mirrors = rule
        .mirror
        .iter()
        .map(|d| {
            (
                d,
                rule.mirror_percentage
                    .as_ref()
                    .and_then(|p| p.value)
                    .or(rule.mirror_percent.or(rule.mirror_percent_snake).map(f64::from)),
            )
        })
        .chain(
            rule.mirrors
                .iter()
                .filter_map(|m| Some((m.destination.as_ref()?, m.percentage.as_ref().and_then(|p| p.value)))),
        );
    for (d, percent) in mirrors {
        action.request_mirror_policies.push(route_action::RequestMirrorPolicy {
            cluster: destination_cluster(snapshot, namespace, d, port),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(fraction(percent.unwrap_or(100.0))),
                ..Default::default()
            }),
            trace_sampled: Some(BoolValue { value: false }),
            ..Default::default()
        });
    }
    if let Some(host) = first_host {
        let service_ns = snapshot.registry.services.get(&host).map(|s| s.namespace.clone()).unwrap_or_default();
        action.hash_policy = hash_policy(snapshot, proxy, &host, &service_ns, port);
    }
    route::Action::Route(action)
}

fn retry_policy(
    attempts: Option<i32>,
    retry_on: Option<&str>,
    per_try: Option<&str>,
    proxy: &ProxyIdentity,
) -> RetryPolicy {
    let attempts = attempts.map_or(DEFAULT_ATTEMPTS, |a| u32::try_from(a).unwrap_or(0));
    let mut policy = RetryPolicy {
        retry_on: retry_on.unwrap_or(DEFAULT_RETRY_ON).to_owned(),
        num_retries: Some(UInt32Value { value: attempts }),
        per_try_timeout: duration_text(per_try),
        retriable_status_codes: vec![503],
        ..Default::default()
    };
    if proxy.role != Role::Proxyless {
        policy.host_selection_retry_max_attempts = 5;
        policy.retry_host_predicate = vec![envoy_types::pb::envoy::config::route::v3::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType::TypedConfig(pack_any(
                envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate::default(),
            ))),
        }];
    }
    policy
}

/// Consistent-hash routing from the destination's DestinationRule.
fn hash_policy(
    snapshot: &Snapshot,
    proxy: &ProxyIdentity,
    host: &str,
    service_ns: &str,
    port: u32,
) -> Vec<route_action::HashPolicy> {
    use route_action::hash_policy::{ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter};
    let Some(dr) = snapshot.destination_rule(host, &proxy.namespace, service_ns) else { return Vec::new() };
    let Some(tp) = dr.traffic_policy.as_ref() else { return Vec::new() };
    let lb = tp
        .port_level_settings
        .iter()
        .find(|p| p.port.as_ref().and_then(|p| p.number) == Some(port))
        .and_then(|p| p.load_balancer.as_ref())
        .or(tp.load_balancer.as_ref());
    let Some(ch) = lb.and_then(|lb| lb.consistent_hash.as_ref()) else { return Vec::new() };
    let specifier = if let Some(h) = &ch.http_header_name {
        PolicySpecifier::Header(Header { header_name: h.clone(), ..Default::default() })
    } else if let Some(c) = &ch.http_cookie {
        PolicySpecifier::Cookie(Cookie {
            name: c.name.clone().unwrap_or_default(),
            path: c.path.clone().unwrap_or_default(),
            ttl: duration_text(c.ttl.as_deref()),
            ..Default::default()
        })
    } else if ch.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
    } else if let Some(q) = &ch.http_query_parameter_name {
        PolicySpecifier::QueryParameter(QueryParameter { name: q.clone() })
    } else {
        return Vec::new();
    };
    vec![route_action::HashPolicy { policy_specifier: Some(specifier), terminal: false }]
}

fn header_ops(ops: Option<&weft_api::istio::HeaderOperations>) -> (Vec<HeaderValueOption>, Vec<String>) {
    let Some(ops) = ops else { return (Vec::new(), Vec::new()) };
    let option = |k: &String, v: &String, action: header_value_option::HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue { key: k.clone(), value: v.clone(), ..Default::default() }),
        append_action: action as i32,
        ..Default::default()
    };
    let mut add: Vec<HeaderValueOption> = ops
        .set
        .iter()
        .map(|(k, v)| option(k, v, header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd))
        .collect();
    add.extend(ops.add.iter().map(|(k, v)| option(k, v, header_value_option::HeaderAppendAction::AppendIfExistsOrAdd)));
    (add, ops.remove.clone())
}

fn apply_headers(route: &mut Route, headers: Option<&Headers>) {
    let Some(h) = headers else { return };
    let (add, remove) = header_ops(h.request.as_ref());
    route.request_headers_to_add = add;
    route.request_headers_to_remove = remove;
    let (add, remove) = header_ops(h.response.as_ref());
    route.response_headers_to_add = add;
    route.response_headers_to_remove = remove;
}

/// A percentage as Envoy's fraction per million (keeps Istio's decimals).
fn fraction(percent: f64) -> FractionalPercent {
    let per_million = (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
    FractionalPercent { numerator: per_million, denominator: fractional_percent::DenominatorType::Million as i32 }
}

fn fault_config(fault: &weft_api::istio::HttpFaultInjection) -> Option<HttpFault> {
    let delay = fault.delay.as_ref().and_then(|d| {
        let fixed = duration_text(d.fixed_delay.as_deref())?;
        let percent = d.percentage.as_ref().and_then(|p| p.value).or(d.percent.map(f64::from)).unwrap_or(100.0);
        Some(FaultDelay {
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(fixed)),
            percentage: Some(fraction(percent)),
        })
    });
    let abort = fault.abort.as_ref().and_then(|a| {
        let error = if let Some(status) = a.http_status {
            fault_abort::ErrorType::HttpStatus(u32::try_from(status).ok()?)
        } else {
            fault_abort::ErrorType::GrpcStatus(grpc_code(a.grpc_status.as_deref()?)?)
        };
        let percent = a.percentage.as_ref().and_then(|p| p.value).unwrap_or(100.0);
        Some(FaultAbort { error_type: Some(error), percentage: Some(fraction(percent)), ..Default::default() })
    });
    (delay.is_some() || abort.is_some()).then(|| HttpFault { delay, abort, ..Default::default() })
}

/// gRPC status names (Istio writes `UNAVAILABLE`) or numbers.
fn grpc_code(name: &str) -> Option<u32> {
    const CODES: &[&str] = &[
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    name.parse()
        .ok()
        .or_else(|| CODES.iter().position(|c| c.eq_ignore_ascii_case(name)).and_then(|i| u32::try_from(i).ok()))
}

fn cors_policy(c: &weft_api::istio::CorsPolicy) -> CorsPolicy {
    let mut origins: Vec<StringMatcher> = c.allow_origins.iter().filter_map(|o| string_matcher(o, false)).collect();
    origins.extend(c.allow_origin.iter().map(|o| StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(o.clone())),
        ignore_case: false,
    }));
    CorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: duration_text(c.max_age.as_deref()).map(|d| d.seconds.to_string()).unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(|value| BoolValue { value }),
        ..Default::default()
    }
}

/// One SNI route: the server names it matches and its weighted destination clusters.
pub(super) type SniRoute = (Vec<String>, Vec<(String, u32)>);

/// TLS routed by SNI on a port: for each VirtualService `tls` match bound to one of
/// `gateways` (`namespace/name`, or `mesh` for sidecars) on this port, in order, the SNI names it matches (its
/// `sniHosts`, else the VirtualService's hosts) and its weighted destinations.
pub(super) fn gateway_tls_routes(snapshot: &Snapshot, port: u32, gateways: &[String]) -> Vec<SniRoute> {
    let mut out = Vec::new();
    for (r, vs) in snapshot.virtual_services() {
        let ns = r.namespace();
        let bound: Vec<&String> =
            gateways.iter().filter(|gw| vs.gateways.iter().any(|g| gateway_ref_matches(g, ns, gw))).collect();
        // `mesh` stands for the sidecars: VirtualServices without gateways bind to it.
        let mesh =
            gateways.iter().any(|g| g == "mesh") && (vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh"));
        if bound.is_empty() && !mesh {
            continue;
        }
        for rule in &vs.tls {
            for m in &rule.r#match {
                let gateway_ok = m.gateways.is_empty()
                    || m.gateways
                        .iter()
                        .any(|g| (mesh && g == "mesh") || bound.iter().any(|gw| gateway_ref_matches(g, ns, gw)));
                if m.port.is_some_and(|p| p != port) || !gateway_ok {
                    continue;
                }
                let names = if m.sni_hosts.is_empty() { vs.hosts.clone() } else { m.sni_hosts.clone() };
                let total = rule.route.len();
                let destinations = rule
                    .route
                    .iter()
                    .filter_map(|d| {
                        let weight =
                            d.weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(if total == 1 { 100 } else { 0 });
                        Some((destination_cluster(snapshot, ns, d.destination.as_ref()?, port), weight))
                    })
                    .collect();
                out.push((names, destinations));
            }
        }
    }
    out
}

/// Where a TCP connection to `hostname:port` goes: the first matching `tcp` rule of the
/// VirtualService for the host (weighted destinations), else the service itself.
pub(super) fn tcp_destinations(
    snapshot: &Snapshot,
    proxy: &ProxyIdentity,
    hostname: &str,
    port: u32,
    gateway: &str,
) -> Vec<(String, u32)> {
    if let Some((r, vs)) = virtual_service_for(snapshot, proxy, hostname, gateway) {
        let rule = vs.tcp.iter().find(|rule| {
            rule.r#match.is_empty()
                || rule.r#match.iter().any(|m| {
                    m.port.is_none_or(|p| p == port)
                        && (m.gateways.is_empty()
                            || m.gateways.iter().any(|g| g == gateway || gateway.ends_with(&format!("/{g}"))))
                        && m.source_labels.iter().all(|(k, v)| proxy.labels.get(k) == Some(v))
                })
        });
        if let Some(rule) = rule {
            let total = rule.route.len();
            return rule
                .route
                .iter()
                .filter_map(|d| {
                    let weight =
                        d.weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(if total == 1 { 100 } else { 0 });
                    Some((destination_cluster(snapshot, r.namespace(), d.destination.as_ref()?, port), weight))
                })
                .collect();
        }
    }
    vec![(cluster_name("outbound", port, "", hostname), 100)]
}
