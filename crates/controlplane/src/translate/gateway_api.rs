//! Kubernetes Gateway API: a gateway proxy labelled
//! `gateway.networking.k8s.io/gateway-name: NAME` serves the Gateway NAME of its
//! namespace (as Istio's deployed gateways do); its HTTP listeners take the HTTPRoutes
//! attached to them.

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent, header_value_option,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, Route, RouteAction, RouteMatch,
    VirtualHost, WeightedCluster, header_matcher, query_parameter_matcher, redirect_action, route, route_action,
    route_match, weighted_cluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use gateway_api::httproutes::{
    HttpRouteRules, HttpRouteRulesFiltersRequestHeaderModifier, HttpRouteRulesFiltersType, HttpRouteRulesMatches,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType, HttpRouteRulesMatchesQueryParamsType,
};
use weft_api::gateway::{GatewaySpec, HttpRouteSpec};
use weft_api::{Resource, Spec};

use super::cluster::cluster_name;
use super::duration_text;
use crate::node::ProxyIdentity;
use crate::registry::resolve_host;
use crate::snapshot::Snapshot;

/// The label that ties a gateway proxy to its Gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// The Gateways this proxy serves.
pub fn gateways_for<'a>(snapshot: &'a Snapshot, proxy: &ProxyIdentity) -> Vec<(&'a Resource, &'a GatewaySpec)> {
    let Some(name) = proxy.labels.get(GATEWAY_NAME_LABEL) else { return Vec::new() };
    snapshot
        .resources
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::KubeGateway(g) if r.name() == name && r.namespace() == proxy.namespace => Some((r, g.as_ref())),
            _ => None,
        })
        .collect()
}

/// `(bind address, port)` of every HTTP listener: the Gateway's first IP address, or all.
pub fn http_listeners(snapshot: &Snapshot, proxy: &ProxyIdentity) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for (_, gw) in gateways_for(snapshot, proxy) {
        let bind = gw
            .addresses
            .iter()
            .flatten()
            .find(|a| a.r#type.as_deref().is_none_or(|t| t == "IPAddress"))
            .and_then(|a| a.value.clone())
            .unwrap_or_else(|| "0.0.0.0".into());
        for l in gw.listeners.iter().filter(|l| l.protocol == "HTTP") {
            let port = u32::try_from(l.port).unwrap_or(0);
            if !out.contains(&(bind.clone(), port)) {
                out.push((bind.clone(), port));
            }
        }
    }
    out
}

/// Virtual hosts for the HTTPRoutes attached to this proxy's Gateways on `port`.
pub fn virtual_hosts(snapshot: &Snapshot, proxy: &ProxyIdentity, port: u32) -> Vec<VirtualHost> {
    // (hostname, route namespace, rule) in attachment order; merged per hostname below.
    let mut by_host: Vec<(String, Vec<(&Resource, &HttpRouteRules)>)> = Vec::new();
    for (gr, gw) in gateways_for(snapshot, proxy) {
        for listener in gw.listeners.iter().filter(|l| l.protocol == "HTTP" && u32::try_from(l.port).ok() == Some(port))
        {
            for r in &snapshot.resources {
                let Spec::HttpRoute(route) = &r.spec else { continue };
                if !attached(r, route, gr, &listener.name, port) {
                    continue;
                }
                for host in hostnames(route, listener.hostname.as_deref()) {
                    let i = match by_host.iter().position(|(h, _)| *h == host) {
                        Some(i) => i,
                        None => {
                            by_host.push((host, Vec::new()));
                            by_host.len() - 1
                        }
                    };
                    by_host[i].1.extend(route.rules.iter().flatten().map(|rule| (r, rule)));
                }
            }
        }
    }
    by_host
        .into_iter()
        .map(|(host, rules)| {
            let mut routes: Vec<(Precedence, Route)> = Vec::new();
            for (r, rule) in rules {
                let matches: Vec<Option<&HttpRouteRulesMatches>> = match rule.matches.as_deref() {
                    None | Some([]) => vec![None],
                    Some(ms) => ms.iter().map(Some).collect(),
                };
                for m in matches {
                    routes.push((precedence(m), envoy_route(snapshot, r, rule, m, port)));
                }
            }
            // Gateway API precedence: exact paths, then longer prefixes, then method,
            // header and query conditions; ties keep attachment order (the sort is stable).
            routes.sort_by_key(|r| std::cmp::Reverse(r.0));
            let domains = if host == "*" { vec!["*".to_owned()] } else { vec![host.clone(), format!("{host}:{port}")] };
            VirtualHost {
                name: format!("{host}:{port}"),
                domains,
                routes: routes.into_iter().map(|(_, r)| r).collect(),
                ..Default::default()
            }
        })
        .collect()
}

fn attached(r: &Resource, route: &HttpRouteSpec, gateway: &Resource, listener: &str, port: u32) -> bool {
    route.parent_refs.iter().flatten().any(|p| {
        p.kind.as_deref().is_none_or(|k| k == "Gateway")
            && p.name == gateway.name()
            && p.namespace.as_deref().unwrap_or(r.namespace()) == gateway.namespace()
            && p.section_name.as_deref().is_none_or(|s| s == listener)
            && p.port.is_none_or(|p| u32::try_from(p).ok() == Some(port))
    })
}

/// The route's hostnames that the listener admits (all of them, or the listener's own,
/// or `*`).
fn hostnames(route: &HttpRouteSpec, listener: Option<&str>) -> Vec<String> {
    let route_hosts = route.hostnames.clone().unwrap_or_default();
    match (route_hosts.is_empty(), listener) {
        (true, Some(l)) => vec![l.to_owned()],
        (true, None) => vec!["*".to_owned()],
        (false, None) => route_hosts,
        (false, Some(l)) => route_hosts
            .into_iter()
            .filter(|h| weft_api::validate::host_covers(l, h) || weft_api::validate::host_covers(h, l))
            .collect(),
    }
}

/// Orders matches as the Gateway API says they must be tried.
type Precedence = (u8, usize, u8, usize, usize);

fn precedence(m: Option<&HttpRouteRulesMatches>) -> Precedence {
    let Some(m) = m else { return (0, 1, 0, 0, 0) };
    let (exact, len) = match &m.path {
        Some(p) => {
            (u8::from(p.r#type == Some(HttpRouteRulesMatchesPathType::Exact)), p.value.as_deref().unwrap_or("/").len())
        }
        None => (0, 1),
    };
    (
        exact,
        len,
        u8::from(m.method.is_some()),
        m.headers.as_ref().map_or(0, Vec::len),
        m.query_params.as_ref().map_or(0, Vec::len),
    )
}

fn exact(value: &str) -> StringMatcher {
    StringMatcher { match_pattern: Some(string_matcher::MatchPattern::Exact(value.to_owned())), ignore_case: false }
}

fn regex(value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex: value.to_owned(),
            ..Default::default()
        })),
        ignore_case: false,
    }
}

fn route_match(m: Option<&HttpRouteRulesMatches>) -> RouteMatch {
    let mut out =
        RouteMatch { path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())), ..Default::default() };
    let Some(m) = m else { return out };
    if let Some(p) = &m.path {
        let value = p.value.clone().unwrap_or_else(|| "/".into());
        out.path_specifier = Some(match p.r#type.as_ref().unwrap_or(&HttpRouteRulesMatchesPathType::PathPrefix) {
            HttpRouteRulesMatchesPathType::Exact => route_match::PathSpecifier::Path(value),
            HttpRouteRulesMatchesPathType::RegularExpression => {
                route_match::PathSpecifier::SafeRegex(RegexMatcher { regex: value, ..Default::default() })
            }
            // A path prefix matches whole segments: /books matches /books/1, not /bookshelf.
            HttpRouteRulesMatchesPathType::PathPrefix if value.trim_end_matches('/').is_empty() => {
                route_match::PathSpecifier::Prefix("/".into())
            }
            HttpRouteRulesMatchesPathType::PathPrefix => {
                route_match::PathSpecifier::PathSeparatedPrefix(value.trim_end_matches('/').to_owned())
            }
        });
    }
    for h in m.headers.iter().flatten() {
        let sm = if h.r#type == Some(HttpRouteRulesMatchesHeadersType::RegularExpression) {
            regex(&h.value)
        } else {
            exact(&h.value)
        };
        out.headers.push(HeaderMatcher {
            name: h.name.to_ascii_lowercase(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(sm)),
            ..Default::default()
        });
    }
    if let Some(method) = &m.method {
        let name = format!("{method:?}").to_ascii_uppercase();
        out.headers.push(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(exact(&name))),
            ..Default::default()
        });
    }
    for q in m.query_params.iter().flatten() {
        let sm = if q.r#type == Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression) {
            regex(&q.value)
        } else {
            exact(&q.value)
        };
        out.query_parameters.push(QueryParameterMatcher {
            name: q.name.clone(),
            query_parameter_match_specifier: Some(query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                sm,
            )),
        });
    }
    out
}

fn header_ops(m: &HttpRouteRulesFiltersRequestHeaderModifier) -> (Vec<HeaderValueOption>, Vec<String>) {
    let option = |name: &str, value: &str, action: header_value_option::HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue { key: name.to_owned(), value: value.to_owned(), ..Default::default() }),
        append_action: action as i32,
        ..Default::default()
    };
    let mut add: Vec<HeaderValueOption> = m
        .set
        .iter()
        .flatten()
        .map(|h| option(&h.name, &h.value, header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd))
        .collect();
    add.extend(
        m.add
            .iter()
            .flatten()
            .map(|h| option(&h.name, &h.value, header_value_option::HeaderAppendAction::AppendIfExistsOrAdd)),
    );
    (add, m.remove.clone().unwrap_or_default())
}

fn service_cluster(namespace: &str, name: &str, port: Option<i32>, fallback: u32, snapshot: &Snapshot) -> String {
    let host = resolve_host(name, namespace);
    let port = port.and_then(|p| u32::try_from(p).ok()).or_else(|| {
        let service = snapshot.registry.services.get(&host)?;
        (service.ports.len() == 1).then(|| service.ports[0].number)
    });
    cluster_name("outbound", port.unwrap_or(fallback), "", &host)
}

fn envoy_route(
    snapshot: &Snapshot,
    r: &Resource,
    rule: &HttpRouteRules,
    m: Option<&HttpRouteRulesMatches>,
    port: u32,
) -> Route {
    let ns = r.namespace();
    let mut out = Route { name: format!("{ns}.{}", r.name()), r#match: Some(route_match(m)), ..Default::default() };
    let filters = rule.filters.as_deref().unwrap_or_default();
    for f in filters {
        match f.r#type {
            HttpRouteRulesFiltersType::RequestHeaderModifier => {
                if let Some(h) = &f.request_header_modifier {
                    let (add, remove) = header_ops(h);
                    out.request_headers_to_add.extend(add);
                    out.request_headers_to_remove.extend(remove);
                }
            }
            HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                if let Some(h) = &f.response_header_modifier {
                    let as_request = HttpRouteRulesFiltersRequestHeaderModifier {
                        add: h.add.as_ref().map(|v| {
                            v.iter()
                                .map(|x| gateway_api::httproutes::HttpRouteRulesFiltersRequestHeaderModifierAdd {
                                    name: x.name.clone(),
                                    value: x.value.clone(),
                                })
                                .collect()
                        }),
                        set: h.set.as_ref().map(|v| {
                            v.iter()
                                .map(|x| gateway_api::httproutes::HttpRouteRulesFiltersRequestHeaderModifierSet {
                                    name: x.name.clone(),
                                    value: x.value.clone(),
                                })
                                .collect()
                        }),
                        remove: h.remove.clone(),
                    };
                    let (add, remove) = header_ops(&as_request);
                    out.response_headers_to_add.extend(add);
                    out.response_headers_to_remove.extend(remove);
                }
            }
            _ => {}
        }
    }
    if let Some(redirect) = filters.iter().find_map(|f| f.request_redirect.as_ref()) {
        let path = redirect.path.as_ref().and_then(|p| {
            p.replace_full_path
                .clone()
                .map(redirect_action::PathRewriteSpecifier::PathRedirect)
                .or_else(|| p.replace_prefix_match.clone().map(redirect_action::PathRewriteSpecifier::PrefixRewrite))
        });
        out.action = Some(route::Action::Redirect(RedirectAction {
            host_redirect: redirect.hostname.clone().unwrap_or_default(),
            // Without a port or scheme, the Gateway API redirects to the listener's port
            // (left implicit for the well-known 80 and 443).
            port_redirect: redirect
                .port
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or(if redirect.scheme.is_none() && port != 80 && port != 443 { port } else { 0 }),
            scheme_rewrite_specifier: redirect.scheme.as_ref().map(|s| {
                redirect_action::SchemeRewriteSpecifier::SchemeRedirect(format!("{s:?}").to_ascii_lowercase())
            }),
            response_code: if redirect.status_code == Some(301) {
                redirect_action::RedirectResponseCode::MovedPermanently as i32
            } else {
                redirect_action::RedirectResponseCode::Found as i32
            },
            path_rewrite_specifier: path,
            ..Default::default()
        }));
        return out;
    }
    let backends: Vec<(String, u32)> = rule
        .backend_refs
        .iter()
        .flatten()
        .filter(|b| b.kind.as_deref().is_none_or(|k| k == "Service"))
        .map(|b| {
            (
                service_cluster(b.namespace.as_deref().unwrap_or(ns), &b.name, b.port, port, snapshot),
                b.weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(1),
            )
        })
        .collect();
    if backends.is_empty() {
        out.action = Some(route::Action::DirectResponse(DirectResponseAction { status: 500, ..Default::default() }));
        return out;
    }
    let specifier = if backends.len() == 1 {
        route_action::ClusterSpecifier::Cluster(backends[0].0.clone())
    } else {
        route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: backends
                .iter()
                .map(|(name, w)| weighted_cluster::ClusterWeight {
                    name: name.clone(),
                    weight: Some(UInt32Value { value: *w }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    let mut action = RouteAction {
        cluster_specifier: Some(specifier),
        timeout: Some(rule.timeouts.as_ref().and_then(|t| duration_text(t.request.as_deref())).unwrap_or_default()),
        ..Default::default()
    };
    if let Some(rw) = filters.iter().find_map(|f| f.url_rewrite.as_ref()) {
        if let Some(host) = &rw.hostname {
            action.host_rewrite_specifier = Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(host.clone()));
        }
        if let Some(p) = &rw.path {
            if let Some(full) = &p.replace_full_path {
                action.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(RegexMatcher { regex: "^/.*$".into(), ..Default::default() }),
                    substitution: full.clone(),
                });
            } else if let Some(prefix) = &p.replace_prefix_match {
                action.prefix_rewrite = prefix.clone();
            }
        }
    }
    for mirror in filters.iter().filter_map(|f| f.request_mirror.as_ref()) {
        let b = &mirror.backend_ref;
        let percent = mirror.percent.map_or(100.0, f64::from);
        action.request_mirror_policies.push(route_action::RequestMirrorPolicy {
            cluster: service_cluster(b.namespace.as_deref().unwrap_or(ns), &b.name, b.port, port, snapshot),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(envoy_types::pb::envoy::r#type::v3::FractionalPercent {
                    numerator: (percent * 10_000.0) as u32,
                    denominator: envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType::Million
                        as i32,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    out.action = Some(route::Action::Route(action));
    out
}
