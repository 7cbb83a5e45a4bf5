//! Sidecars with traffic capture (`INTERCEPTION_MODE` REDIRECT, iptables): Istio's
//! `virtualOutbound` on 15001 hands each connection to the `0.0.0.0_<port>` listener of
//! its original destination port (or passes it through), and `virtualInbound` on 15006
//! picks a filter chain by the original destination port and forwards to the
//! application on loopback.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener, ListenerFilter};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use super::cluster::{CONNECT_TIMEOUT, cluster_name, lb_endpoint_for};
use super::listener::{RouteSource, http_chain, inbound_route, tcp_chain};
use super::{duration, socket};
use crate::node::ProxyIdentity;
use crate::registry::{Endpoint, Protocol, Service};
use crate::snapshot::Snapshot;

/// Istio's outbound capture port.
pub const OUTBOUND_PORT: u32 = 15001;
/// Istio's inbound capture port.
pub const INBOUND_PORT: u32 = 15006;
/// Where captured connections to unknown destinations go, unchanged.
pub const PASSTHROUGH: &str = "PassthroughCluster";
/// Where captured connections to unknown destinations go under REGISTRY_ONLY: nowhere.
pub const BLACKHOLE: &str = "BlackHoleCluster";
/// Where captured inbound connections to undeclared ports go, unchanged.
pub const INBOUND_PASSTHROUGH: &str = "InboundPassthroughCluster";

/// Whether the proxy's traffic is captured by iptables rather than sent to it.
pub fn captured(proxy: &ProxyIdentity) -> bool {
    matches!(proxy.interception_mode.as_str(), "REDIRECT" | "TPROXY")
}

/// Whether `endpoint` of `service` is this captured proxy's workload: by its
/// WorkloadEntry's name, or by its address.
pub fn is_own(proxy: &ProxyIdentity, service: &Service, endpoint: &Endpoint) -> bool {
    endpoint.workload.as_deref() == Some(proxy.workload.as_str()) && service.namespace == proxy.namespace
        || (!proxy.ip.is_empty() && endpoint.address == proxy.ip)
}

/// The ports this workload serves, with their protocols: the target ports of the
/// services that select it.
fn inbound_ports(snapshot: &Snapshot, proxy: &ProxyIdentity) -> BTreeMap<u32, Protocol> {
    let mut ports = BTreeMap::new();
    for service in snapshot.registry.services.values() {
        for endpoint in &service.endpoints {
            if !is_own(proxy, service, endpoint) {
                continue;
            }
            for port in &service.ports {
                ports.entry(endpoint.port_for(port)).or_insert(port.protocol);
            }
        }
    }
    ports
}

fn original_dst_filter() -> ListenerFilter {
    use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType;
    use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
    ListenerFilter {
        name: "envoy.filters.listener.original_dst".into(),
        config_type: Some(ConfigType::TypedConfig(envoy_types::util::pack_any(OriginalDst::default()))),
        ..Default::default()
    }
}

/// The outbound capture listeners: `virtualOutbound` and one `0.0.0.0_<port>` per
/// outbound port (not bound; reached by hand-off).
pub fn outbound_listeners(
    outbound: Vec<(u32, FilterChain)>,
    snapshot: &Snapshot,
    proxy: &ProxyIdentity,
) -> Vec<Listener> {
    // The Sidecar's outboundTrafficPolicy: ALLOW_ANY (Istio's default) passes unknown
    // destinations through, REGISTRY_ONLY closes their connections.
    let registry_only =
        snapshot.sidecar_for(proxy).and_then(|s| s.outbound_traffic_policy.as_ref()).and_then(|p| p.mode)
            == Some(weft_api::istio::OutboundTrafficPolicyMode::RegistryOnly);
    let unknown = if registry_only { BLACKHOLE } else { PASSTHROUGH };
    let mut out = vec![Listener {
        name: "virtualOutbound".into(),
        address: Some(socket("0.0.0.0", OUTBOUND_PORT)),
        use_original_dst: Some(BoolValue { value: true }),
        listener_filters: vec![original_dst_filter()],
        default_filter_chain: Some(tcp_chain(unknown, &[(unknown.to_owned(), 100)])),
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    }];
    for (port, chain) in outbound {
        out.push(Listener {
            name: format!("0.0.0.0_{port}"),
            address: Some(socket("0.0.0.0", port)),
            bind_to_port: Some(BoolValue { value: false }),
            filter_chains: vec![chain],
            traffic_direction: TrafficDirection::Outbound as i32,
            ..Default::default()
        });
    }
    out
}

/// `virtualInbound`: one filter chain per port the workload serves.
pub fn inbound_listener(snapshot: &Snapshot, proxy: &ProxyIdentity) -> Listener {
    let mut chains = Vec::new();
    for (port, protocol) in inbound_ports(snapshot, proxy) {
        let cluster = cluster_name("inbound", port, "", "");
        let mut chain = if protocol.is_http() {
            let operation = super::cluster::inbound_operation(snapshot, proxy, port);
            http_chain(
                &format!("inbound_{port}"),
                RouteSource::Inline(Box::new(inbound_route(&cluster, port, operation))),
            )
        } else {
            tcp_chain(&cluster, &[(cluster.clone(), 100)])
        };
        chain.filter_chain_match =
            Some(FilterChainMatch { destination_port: Some(UInt32Value { value: port }), ..Default::default() });
        chain.name = cluster;
        chains.extend(super::security::inbound_chains(snapshot, proxy, port, chain));
    }
    let mut listener_filters = vec![original_dst_filter()];
    listener_filters.extend(super::security::tls_inspector(&chains));
    Listener {
        name: "virtualInbound".into(),
        address: Some(socket("0.0.0.0", INBOUND_PORT)),
        listener_filters,
        filter_chains: chains,
        default_filter_chain: Some(super::security::inbound_passthrough(
            snapshot,
            proxy,
            tcp_chain(INBOUND_PASSTHROUGH, &[(INBOUND_PASSTHROUGH.to_owned(), 100)]),
        )),
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}

/// The passthrough clusters and the black hole, for destinations outside the mesh.
pub fn passthrough_clusters() -> Vec<Cluster> {
    let passthrough = |name: &str| Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::OriginalDst as i32)),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(duration(CONNECT_TIMEOUT)),
        ..Default::default()
    };
    vec![
        passthrough(PASSTHROUGH),
        passthrough(INBOUND_PASSTHROUGH),
        Cluster {
            name: BLACKHOLE.to_owned(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32)),
            connect_timeout: Some(duration(CONNECT_TIMEOUT)),
            ..Default::default()
        },
    ]
}

/// One `inbound|<port>||` cluster per port the workload serves, to the application on
/// loopback.
pub fn inbound_clusters(snapshot: &Snapshot, proxy: &ProxyIdentity) -> Vec<Cluster> {
    let mut out = Vec::new();
    for port in inbound_ports(snapshot, proxy).into_keys() {
        let name = cluster_name("inbound", port, "", "");
        out.push(Cluster {
            name: name.clone(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32)),
            connect_timeout: Some(duration(CONNECT_TIMEOUT)),
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: name,
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![lb_endpoint_for("127.0.0.1", port, 0)],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    out
}
