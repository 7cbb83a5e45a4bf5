//! Translation: pure functions from (snapshot, proxy identity) to the Envoy v3
//! resources that proxy needs. No I/O, no clock: the same input gives the same output,
//! which is what makes them golden-testable and cacheable per proxy class.
//!
//! Names follow Istio's, so config dumps read as users know them: clusters
//! `outbound|9080|v1|reviews.default.svc.cluster.local` and `inbound|9080||`, listeners
//! `127.0.10.1_9080`, routes by port (`9080`) or `http.8080` on gateways.

mod authn;
mod authz;
mod capture;
mod cluster;
mod gateway_api;
mod listener;
mod route;
mod security;
mod sorted;
mod telemetry;
mod tracer;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{
    Address, ApiVersion, ConfigSource, SocketAddress, address, config_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Duration;

use crate::node::{ProxyIdentity, Role};
use crate::snapshot::Snapshot;

pub use capture::{captured, is_own};
pub use cluster::{cluster_name, clusters_for, clusters_of, endpoints_for, endpoints_of_cluster, parse_cluster_name};
pub use gateway_api::GATEWAY_NAME_LABEL;
pub use listener::{listeners_for, listeners_of};
pub use route::routes_for;

/// Type URLs of the resources translation produces.
pub mod type_url {
    /// Listener (LDS).
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// RouteConfiguration (RDS).
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// Cluster (CDS).
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// ClusterLoadAssignment (EDS).
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// Every type, in the order Istio pushes them (clusters before their endpoints,
    /// listeners before their routes).
    pub const PUSH_ORDER: &[&str] = &[CLUSTER, ENDPOINT, LISTENER, ROUTE];
}

/// Everything one proxy is sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// CDS.
    pub clusters: Vec<Cluster>,
    /// EDS.
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// LDS.
    pub listeners: Vec<Listener>,
    /// RDS.
    pub routes: Vec<RouteConfiguration>,
}

impl Resources {
    /// Appends another set (the other half of a proxy's configuration).
    pub fn extend(&mut self, other: Resources) {
        self.clusters.extend(other.clusters);
        self.endpoints.extend(other.endpoints);
        self.listeners.extend(other.listeners);
        self.routes.extend(other.routes);
    }
}

/// The two halves of a proxy's configuration. They are translated apart because they
/// depend on different parts of the proxy's identity: the outbound half is the same for
/// every proxy of a namespace with the same labels, so a thousand replicas share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Half {
    /// What the proxy sends to: outbound listeners, their routes, outbound clusters and
    /// their endpoints; everything a gateway or a proxyless client gets. It reads the
    /// proxy as [`outbound_identity`] leaves it.
    Outbound,
    /// What reaches the proxy's own workload: inbound listeners and clusters.
    Inbound,
}

/// Translates the snapshot for one proxy. For proxyless gRPC clients, whose listeners
/// are requested by name (`host:port`), `listener_names` says which to build.
pub fn resources_for(snapshot: &Snapshot, proxy: &ProxyIdentity, listener_names: &[String]) -> Resources {
    let proxy = snapshot.with_workload(proxy);
    let mut out = half_for(snapshot, &outbound_identity(snapshot, &proxy), listener_names, Half::Outbound);
    out.extend(half_for(snapshot, &proxy, listener_names, Half::Inbound));
    out
}

/// One half of a proxy's configuration; `proxy` is as [`Snapshot::with_workload`] sees it
/// (and as [`outbound_identity`] leaves it, for the outbound half).
pub fn half_for(snapshot: &Snapshot, proxy: &ProxyIdentity, listener_names: &[String], half: Half) -> Resources {
    let listeners = listeners_of(snapshot, proxy, listener_names, half);
    let routes = routes_for(snapshot, proxy, &listeners);
    let clusters = clusters_of(snapshot, proxy, half);
    let endpoints = endpoints_for(snapshot, proxy, &clusters);
    Resources { clusters, endpoints, listeners, routes }
}

/// What the outbound half reads of a proxy in `snapshot`: [`outbound_view`], and of a
/// sidecar's labels only those some resource selects on (or tracing reads, when tracing
/// may be on), and its workload name only when tracing may be on. Proxies equal in these
/// (and, for proxyless clients, in the listeners they ask for) share one outbound half:
/// sidecars of a hundred Deployments that no policy tells apart get one translation.
pub fn outbound_identity(snapshot: &Snapshot, proxy: &ProxyIdentity) -> ProxyIdentity {
    let mut out = outbound_view(proxy);
    if out.role == Role::Sidecar {
        out.labels.retain(|key, _| snapshot.outbound_reads_label(key));
        if !snapshot.may_trace() {
            out.workload.clear();
        }
    }
    out
}

/// What the outbound half may read of a proxy whatever the snapshot: its role, namespace,
/// labels, capture mode, cluster id and SDS, not its address, service account or node id.
/// The workload name stays only when the labels have no `app`: tracing then names the
/// service after it.
pub fn outbound_view(proxy: &ProxyIdentity) -> ProxyIdentity {
    ProxyIdentity {
        id: String::new(),
        ip: String::new(),
        workload: if proxy.labels.contains_key("app") { String::new() } else { proxy.workload.clone() },
        service_account: String::new(),
        revision: String::new(),
        istio_version: String::new(),
        ..proxy.clone()
    }
}

/// The security policies of one kind that apply to `proxy`'s workload, in name order:
/// those in its namespace or the root namespace whose selector (if any) matches its
/// labels. `of` picks the kind: the spec, its selector, and whether it targets a Gateway
/// API resource instead (not applied to workloads).
pub(crate) fn policies_for<'a, T>(
    snapshot: &'a Snapshot,
    proxy: &ProxyIdentity,
    of: impl Fn(&'a weft_api::Spec) -> Option<(&'a T, Option<&'a weft_api::istio::WorkloadSelector>, bool)>,
) -> Vec<(&'a weft_api::Resource, &'a T)> {
    let mut out: Vec<_> = snapshot
        .resources
        .iter()
        .filter_map(|r| of(&r.spec).map(|(spec, selector, targeted)| (r, spec, selector, targeted)))
        .filter(|(r, _, selector, targeted)| {
            let in_scope = r.namespace() == proxy.namespace || r.namespace() == crate::snapshot::ROOT_NAMESPACE;
            let selected = selector.is_none_or(|s| s.match_labels.iter().all(|(k, v)| proxy.labels.get(k) == Some(v)));
            in_scope && selected && !targeted
        })
        .map(|(r, spec, _, _)| (r, spec))
        .collect();
    out.sort_by(|(a, _), (b, _)| (a.namespace(), a.name()).cmp(&(b.namespace(), b.name())));
    out
}

/// Whether translation for this proxy builds listeners from requested names.
pub fn listeners_by_name(proxy: &ProxyIdentity) -> bool {
    proxy.role == Role::Proxyless
}

/// `ConfigSource` pointing at the ADS stream the proxy already has.
pub(crate) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(Default::default())),
        ..Default::default()
    }
}

/// A socket address.
pub(crate) fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// A protobuf duration from a `std::time::Duration`.
pub(crate) fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf duration from Istio's text form; `None` if absent or unparsable
/// (validation has already refused unparsable ones).
pub(crate) fn duration_text(text: Option<&str>) -> Option<Duration> {
    text.and_then(|t| weft_api::duration::parse(t).ok()).map(duration)
}

#[cfg(test)]
mod tests;
