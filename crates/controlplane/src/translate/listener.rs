//! Listeners (LDS). Sidecars without traffic capture get one listener per Sidecar
//! egress port on its `bind` address (127.0.0.1 by default) and one per ingress port
//! forwarding to `defaultEndpoint`, as Istio configures VM sidecars without iptables.
//! Gateways get one listener per Gateway server port; proxyless gRPC clients an
//! `api_listener` per requested `host:port`.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    Decorator, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::Duration;
use envoy_types::util::pack_any;

use super::cluster::{cluster_name, default_endpoint};
use super::{Half, ads, socket};
use crate::node::{ProxyIdentity, Role};
use crate::registry::{Protocol, resolve_host};
use crate::snapshot::Snapshot;
use weft_api::istio::SidecarSpec;

/// Network filter names.
pub(super) const HCM: &str = "envoy.filters.network.http_connection_manager";
pub(super) const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

/// The listeners `proxy` needs.
pub fn listeners_for(snapshot: &Snapshot, proxy: &ProxyIdentity, requested: &[String]) -> Vec<Listener> {
    let mut out = listeners_of(snapshot, proxy, requested, Half::Outbound);
    out.extend(listeners_of(snapshot, proxy, requested, Half::Inbound));
    out
}

/// The listeners of one half of `proxy`'s configuration.
pub fn listeners_of(snapshot: &Snapshot, proxy: &ProxyIdentity, requested: &[String], half: Half) -> Vec<Listener> {
    let mut out = match (proxy.role, half) {
        (Role::Sidecar, _) => sidecar_listeners(snapshot, proxy, half),
        (Role::Gateway, Half::Outbound) => gateway_listeners(snapshot, proxy),
        (Role::Proxyless, Half::Outbound) => {
            return requested.iter().filter_map(|name| api_listener(snapshot, proxy, name)).collect();
        }
        (Role::Gateway | Role::Proxyless, Half::Inbound) => return Vec::new(),
    };
    super::telemetry::apply(snapshot, proxy, &mut out);
    out
}

fn sidecar_listeners(snapshot: &Snapshot, proxy: &ProxyIdentity, half: Half) -> Vec<Listener> {
    if super::capture::captured(proxy) {
        return match half {
            Half::Outbound => captured_sidecar_listeners(snapshot, proxy),
            Half::Inbound => vec![super::capture::inbound_listener(snapshot, proxy)],
        };
    }
    let Some(sidecar) = snapshot.sidecar_for(proxy) else { return Vec::new() };
    match half {
        Half::Outbound => egress_listeners(snapshot, proxy, sidecar),
        Half::Inbound => ingress_listeners(snapshot, proxy, sidecar),
    }
}

/// One listener per Sidecar egress port, on its `bind` address.
fn egress_listeners(snapshot: &Snapshot, proxy: &ProxyIdentity, sidecar: &SidecarSpec) -> Vec<Listener> {
    let mut out = Vec::new();
    for egress in &sidecar.egress {
        let Some(port) = egress.port.as_ref() else { continue };
        let Some(number) = port.number else { continue };
        let bind = egress.bind.clone().unwrap_or_else(|| "127.0.0.1".to_owned());
        let protocol = Protocol::of(port.protocol.as_deref(), port.name.as_deref());
        if protocol == Protocol::Tls {
            if let Some(l) = sidecar_tls_listener(snapshot, proxy, egress, &bind, number) {
                out.push(l);
            }
            continue;
        }
        let chain = if protocol.is_http() {
            http_chain(&format!("outbound_{number}"), RouteSource::Rds(number.to_string()))
        } else {
            // Without traffic capture a TCP listener cannot tell services apart: it serves
            // the first one the egress listener admits on its port.
            let services = snapshot.services_for(proxy, Some(egress));
            let Some(service) = services.iter().find(|s| s.port(number).is_some()) else { continue };
            tcp_chain(
                &format!("outbound_{number}"),
                &super::route::tcp_destinations(snapshot, proxy, &service.hostname, number, "mesh"),
            )
        };
        out.push(listener(&bind, number, TrafficDirection::Outbound, chain));
    }
    out
}

/// One listener per Sidecar ingress port, forwarding to its `defaultEndpoint`.
fn ingress_listeners(snapshot: &Snapshot, proxy: &ProxyIdentity, sidecar: &SidecarSpec) -> Vec<Listener> {
    let mut out = Vec::new();
    for ingress in &sidecar.ingress {
        let Some(port) = ingress.port.as_ref() else { continue };
        let Some(number) = port.number else { continue };
        let bind = ingress
            .bind
            .clone()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| if proxy.ip.is_empty() { "0.0.0.0".into() } else { proxy.ip.clone() });
        let cluster = cluster_name("inbound", number, "", "");
        let protocol = Protocol::of(port.protocol.as_deref(), port.name.as_deref());
        let (_, target) = default_endpoint(ingress.default_endpoint.as_deref(), number);
        let chain = if protocol.is_http() {
            http_chain(
                &format!("inbound_{number}"),
                RouteSource::Inline(Box::new(inbound_route(
                    &cluster,
                    number,
                    super::cluster::inbound_operation(snapshot, proxy, number),
                ))),
            )
        } else {
            tcp_chain(&cluster, &[(cluster.clone(), 100)])
        };
        // PeerAuthentication's port-level settings name the workload's port.
        let mut l = listener(&bind, number, TrafficDirection::Inbound, FilterChain::default());
        l.filter_chains = super::security::inbound_chains(snapshot, proxy, target, chain);
        l.listener_filters.extend(super::security::tls_inspector(&l.filter_chains));
        out.push(l);
    }
    out
}

/// With iptables capture: one outbound chain per port of the reachable services, behind
/// Istio's `virtualOutbound` and `virtualInbound`.
fn captured_sidecar_listeners(snapshot: &Snapshot, proxy: &ProxyIdentity) -> Vec<Listener> {
    let mut ports: BTreeMap<u32, FilterChain> = BTreeMap::new();
    for service in super::cluster::reachable_services(snapshot, proxy) {
        for port in &service.ports {
            let number = port.number;
            ports.entry(number).or_insert_with(|| {
                if port.protocol.is_http() {
                    http_chain(&format!("outbound_{number}"), RouteSource::Rds(number.to_string()))
                } else {
                    let destinations =
                        super::route::tcp_destinations(snapshot, proxy, &service.hostname, number, "mesh");
                    tcp_chain(&format!("outbound_{number}"), &destinations)
                }
            });
        }
    }
    super::capture::outbound_listeners(ports.into_iter().collect(), snapshot, proxy)
}

fn gateway_listeners(snapshot: &Snapshot, proxy: &ProxyIdentity) -> Vec<Listener> {
    // One listener per (bind, port); servers sharing a port share its routes.
    let mut ports: BTreeMap<(String, u32), Protocol> = BTreeMap::new();
    for (_, gw) in snapshot.gateways_for(proxy) {
        for server in &gw.servers {
            let Some(port) = server.port.as_ref() else { continue };
            let Some(number) = port.number else { continue };
            let protocol = Protocol::of(port.protocol.as_deref(), port.name.as_deref());
            ports.entry((server.bind.clone().unwrap_or_else(|| "0.0.0.0".into()), number)).or_insert(protocol);
        }
    }
    for (bind, port) in super::gateway_api::http_listeners(snapshot, proxy) {
        ports.entry((bind, port)).or_insert(Protocol::Http);
    }
    let mut tcp = Vec::new();
    for ((bind, number), _) in ports.iter().filter(|(_, p)| **p == Protocol::Tls) {
        if let Some(l) = gateway_passthrough_listener(snapshot, proxy, bind, *number) {
            tcp.push(l);
        }
    }
    for ((bind, number), _) in ports.iter().filter(|(_, p)| **p == Protocol::Tcp) {
        if let Some(destinations) = gateway_tcp_destinations(snapshot, proxy, *number) {
            let mut chain = tcp_chain(&format!("gateway_{number}"), &destinations);
            super::security::guard(snapshot, proxy, &mut chain);
            tcp.push(listener(bind, *number, TrafficDirection::Outbound, chain));
        }
    }
    ports
        .into_iter()
        .filter(|(_, protocol)| protocol.is_http())
        .map(|((bind, number), _)| {
            // As on sidecars: the gateway's own RequestAuthentication and
            // AuthorizationPolicy (selected by its labels) guard what enters the mesh.
            let mut chain = http_chain(&format!("gateway_{number}"), RouteSource::Rds(format!("http.{number}")));
            super::security::guard(snapshot, proxy, &mut chain);
            listener(&bind, number, TrafficDirection::Outbound, chain)
        })
        .chain(tcp)
        .collect()
}

/// A sidecar's TLS egress port: chains by SNI, from VirtualService `tls` routes first,
/// then one per visible service on the port for its own host name.
fn sidecar_tls_listener(
    snapshot: &Snapshot,
    proxy: &ProxyIdentity,
    egress: &weft_api::istio::IstioEgressListener,
    bind: &str,
    port: u32,
) -> Option<Listener> {
    let mut routes = super::route::gateway_tls_routes(snapshot, port, &["mesh".to_owned()]);
    for service in snapshot.services_for(proxy, Some(egress)) {
        if service.port(port).is_some() && !routes.iter().any(|(names, _)| names.contains(&service.hostname)) {
            routes.push((
                vec![service.hostname.clone()],
                vec![(cluster_name("outbound", port, "", &service.hostname), 100)],
            ));
        }
    }
    sni_listener(bind, port, &format!("outbound_{port}"), routes)
}

/// A listener whose filter chains are chosen by the client's SNI (TLS inspector).
fn sni_listener(bind: &str, port: u32, prefix: &str, routes: Vec<super::route::SniRoute>) -> Option<Listener> {
    use envoy_types::pb::envoy::config::listener::v3::{FilterChainMatch, ListenerFilter, listener_filter};
    use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
    let chains: Vec<FilterChain> = routes
        .into_iter()
        .enumerate()
        .map(|(i, (names, destinations))| {
            let mut chain = tcp_chain(&format!("{prefix}_tls_{i}"), &destinations);
            chain.filter_chain_match = Some(FilterChainMatch { server_names: names, ..Default::default() });
            chain
        })
        .collect();
    if chains.is_empty() {
        return None;
    }
    let mut l = listener(bind, port, TrafficDirection::Outbound, FilterChain::default());
    l.filter_chains = chains;
    l.listener_filters = vec![ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(TlsInspector::default()))),
        ..Default::default()
    }];
    Some(l)
}

/// A TLS port in PASSTHROUGH mode: one filter chain per VirtualService `tls` match,
/// chosen by the client's SNI, forwarding the still-encrypted connection.
fn gateway_passthrough_listener(snapshot: &Snapshot, proxy: &ProxyIdentity, bind: &str, port: u32) -> Option<Listener> {
    use weft_api::istio::ServerTlsMode;
    let gateways: Vec<String> = snapshot
        .gateways_for(proxy)
        .into_iter()
        .filter(|(_, gw)| {
            gw.servers.iter().any(|s| {
                s.port.as_ref().and_then(|p| p.number) == Some(port)
                    && s.tls.as_ref().is_none_or(|t| t.mode == Some(ServerTlsMode::Passthrough))
            })
        })
        .map(|(r, _)| format!("{}/{}", r.namespace(), r.name()))
        .collect();
    sni_listener(bind, port, &format!("gateway_{port}"), super::route::gateway_tls_routes(snapshot, port, &gateways))
}

/// The destinations of the first VirtualService `tcp` route bound to one of this
/// gateway's Gateways for a TCP server port.
fn gateway_tcp_destinations(snapshot: &Snapshot, proxy: &ProxyIdentity, port: u32) -> Option<Vec<(String, u32)>> {
    for (gr, gw) in snapshot.gateways_for(proxy) {
        let gateway = format!("{}/{}", gr.namespace(), gr.name());
        if !gw.servers.iter().any(|s| s.port.as_ref().and_then(|p| p.number) == Some(port)) {
            continue;
        }
        for (r, vs) in snapshot.virtual_services() {
            if vs.tcp.is_empty()
                || !vs.gateways.iter().any(|g| super::route::gateway_ref_matches(g, r.namespace(), &gateway))
            {
                continue;
            }
            let host = vs.hosts.first().map(|h| resolve_host(h, r.namespace())).unwrap_or_default();
            let applies = vs
                .tcp
                .iter()
                .any(|rule| rule.r#match.is_empty() || rule.r#match.iter().any(|m| m.port.is_none_or(|p| p == port)));
            if applies {
                return Some(super::route::tcp_destinations(snapshot, proxy, &host, port, &gateway));
            }
        }
    }
    None
}

/// gRPC's xDS client asks for the listener named by its target (`host:port`).
fn api_listener(snapshot: &Snapshot, proxy: &ProxyIdentity, name: &str) -> Option<Listener> {
    let (host, port) = name.rsplit_once(':')?;
    let port: u32 = port.parse().ok()?;
    let service = snapshot.registry.services.get(&resolve_host(host, &proxy.namespace))?;
    service.port(port)?;
    let hcm = HttpConnectionManager {
        stat_prefix: name.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: name.to_owned(),
        })),
        http_filters: vec![http_filter("envoy.filters.http.fault", pack_any(HttpFault::default())), router()],
        ..Default::default()
    };
    Some(Listener {
        name: name.to_owned(),
        api_listener: Some(ApiListener { api_listener: Some(pack_any(hcm)) }),
        ..Default::default()
    })
}

pub(super) enum RouteSource {
    Rds(String),
    Inline(Box<RouteConfiguration>),
}

fn http_filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> HttpFilter {
    HttpFilter {
        name: name.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

fn router() -> HttpFilter {
    http_filter("envoy.filters.http.router", pack_any(Router::default()))
}

/// Changes the HTTP connection manager of `chain`, if it has one (decoded, edited,
/// packed again).
pub(super) fn edit_hcm(chain: &mut FilterChain, mut change: impl FnMut(&mut HttpConnectionManager)) {
    for f in &mut chain.filters {
        let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else { continue };
        if f.name != HCM {
            continue;
        }
        let Ok(mut hcm) = <HttpConnectionManager as prost::Message>::decode(any.value.as_slice()) else { continue };
        change(&mut hcm);
        *any = pack_any(hcm);
    }
}

pub(super) fn http_chain(stat_prefix: &str, route: RouteSource) -> FilterChain {
    let route_specifier = match route {
        RouteSource::Rds(name) => {
            http_connection_manager::RouteSpecifier::Rds(Rds { config_source: Some(ads()), route_config_name: name })
        }
        RouteSource::Inline(config) => http_connection_manager::RouteSpecifier::RouteConfig(*config),
    };
    let hcm = HttpConnectionManager {
        stat_prefix: stat_prefix.to_owned(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(route_specifier),
        // The router must be last; fault and CORS act per route through per-filter config.
        http_filters: vec![
            http_filter("envoy.filters.http.fault", pack_any(HttpFault::default())),
            http_filter("envoy.filters.http.cors", pack_any(Cors::default())),
            router(),
        ],
        // As Istio's default path normalization (BASE): RFC 3986 normalization before
        // routing and authorization.
        normalize_path: Some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
        // As Istio: WebSocket upgrades pass through every HTTP listener.
        upgrade_configs: vec![http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    FilterChain {
        filters: vec![Filter {
            name: HCM.to_owned(),
            config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
        }],
        ..Default::default()
    }
}

pub(super) fn tcp_chain(stat_prefix: &str, destinations: &[(String, u32)]) -> FilterChain {
    let specifier = match destinations {
        [(cluster, _)] => tcp_proxy::ClusterSpecifier::Cluster(cluster.clone()),
        many => tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
            clusters: many
                .iter()
                .map(|(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                    name: name.clone(),
                    weight: *weight,
                    ..Default::default()
                })
                .collect(),
        }),
    };
    let proxy =
        TcpProxy { stat_prefix: stat_prefix.to_owned(), cluster_specifier: Some(specifier), ..Default::default() };
    FilterChain {
        filters: vec![Filter {
            name: TCP_PROXY.to_owned(),
            config_type: Some(filter::ConfigType::TypedConfig(pack_any(proxy))),
        }],
        ..Default::default()
    }
}

fn listener(bind: &str, port: u32, direction: TrafficDirection, chain: FilterChain) -> Listener {
    Listener {
        name: format!("{bind}_{port}"),
        address: Some(socket(bind, port)),
        filter_chains: vec![chain],
        traffic_direction: direction as i32,
        ..Default::default()
    }
}

/// Everything arriving on an ingress port goes to the application; traced requests'
/// spans are named after `operation`.
pub(super) fn inbound_route(cluster: &str, port: u32, operation: Option<String>) -> RouteConfiguration {
    RouteConfiguration {
        name: cluster.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{port}"),
            domains: vec!["*".into()],
            routes: vec![envoy_types::pb::envoy::config::route::v3::Route {
                name: "default".into(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_owned())),
                    timeout: Some(Duration::default()),
                    ..Default::default()
                })),
                decorator: operation.map(|operation| Decorator { operation, ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        }],
        validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        ..Default::default()
    }
}
