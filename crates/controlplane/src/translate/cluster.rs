//! Clusters (CDS) and their endpoints (EDS): one cluster per service port, one more per
//! DestinationRule subset, shaped by the DestinationRule's traffic policy.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection, circuit_breakers::Thresholds, cluster,
};
use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
use envoy_types::pb::envoy::config::core::v3::{Locality, RoutingPriority};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;
use weft_api::istio::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, LoadBalancerSettings, Location,
    OutlierDetection as IstioOutlier, Resolution, SimpleLb, TrafficPolicy,
};

use super::{Half, ads, duration, duration_text, socket};
use crate::node::{ProxyIdentity, Role};
use crate::registry::{Endpoint, Protocol, Service, ServicePort};
use crate::snapshot::Snapshot;

/// Istio's cluster name: `outbound|9080|v1|reviews.default.svc.cluster.local`.
pub fn cluster_name(direction: &str, port: u32, subset: &str, host: &str) -> String {
    format!("{direction}|{port}|{subset}|{host}")
}

/// Where a proxy without an identity agent finds the operating system's roots (Debian's
/// and Ubuntu's bundle, which Envoy's own images use too).
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Default connect timeout, as Istio's meshConfig default.
pub(super) const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The clusters `proxy` needs.
pub fn clusters_for(snapshot: &Snapshot, proxy: &ProxyIdentity) -> Vec<Cluster> {
    let mut out = clusters_of(snapshot, proxy, Half::Outbound);
    out.extend(clusters_of(snapshot, proxy, Half::Inbound));
    out
}

/// The clusters of one half of `proxy`'s configuration.
pub fn clusters_of(snapshot: &Snapshot, proxy: &ProxyIdentity, half: Half) -> Vec<Cluster> {
    let captured = proxy.role == Role::Sidecar && super::capture::captured(proxy);
    match half {
        Half::Outbound if captured => {
            let mut out = outbound_clusters(snapshot, proxy);
            out.extend(super::capture::passthrough_clusters());
            out
        }
        Half::Outbound => outbound_clusters(snapshot, proxy),
        Half::Inbound if captured => super::capture::inbound_clusters(snapshot, proxy),
        Half::Inbound if proxy.role == Role::Sidecar => inbound_clusters(snapshot, proxy),
        Half::Inbound => Vec::new(),
    }
}

fn outbound_clusters(snapshot: &Snapshot, proxy: &ProxyIdentity) -> Vec<Cluster> {
    let mut out = Vec::new();
    for service in reachable_services(snapshot, proxy) {
        let dr = snapshot.destination_rule(&service.hostname, &proxy.namespace, &service.namespace);
        for port in &service.ports {
            let policy = effective_policy(dr.and_then(|d| d.traffic_policy.as_ref()), port.number);
            let mut c = outbound_cluster(service, port, "", &policy);
            apply_tls(&mut c, policy.tls.as_ref(), &service.hostname, proxy.sds);
            super::security::apply_outbound(&mut c, snapshot, proxy, service, policy.tls.as_ref());
            super::security::apply_tls_defaults(&mut c, snapshot, policy.tls.as_ref());
            out.push(c);
            for subset in dr.map(|d| d.subsets.as_slice()).unwrap_or_default() {
                let Some(name) = subset.name.as_deref() else { continue };
                let mut merged = policy.clone();
                if let Some(sp) = &subset.traffic_policy {
                    overlay(&mut merged, &effective_policy(Some(sp), port.number));
                }
                let mut c = outbound_cluster(service, port, name, &merged);
                apply_tls(&mut c, merged.tls.as_ref(), &service.hostname, proxy.sds);
                super::security::apply_outbound(&mut c, snapshot, proxy, service, merged.tls.as_ref());
                super::security::apply_tls_defaults(&mut c, snapshot, merged.tls.as_ref());
                out.push(c);
            }
        }
    }
    out
}

/// Services whose clusters a proxy gets: for sidecars, those its Sidecar's egress
/// listeners admit (all visible ones without a Sidecar); all visible ones otherwise.
pub(super) fn reachable_services<'a>(snapshot: &'a Snapshot, proxy: &ProxyIdentity) -> Vec<&'a Service> {
    let egress =
        if proxy.role == Role::Sidecar { snapshot.sidecar_for(proxy).map(|s| s.egress.as_slice()) } else { None };
    match egress {
        Some(listeners) if !listeners.is_empty() => {
            let mut seen = BTreeSet::new();
            listeners
                .iter()
                .flat_map(|e| snapshot.services_for(proxy, Some(e)))
                .filter(|s| seen.insert(s.hostname.clone()))
                .collect()
        }
        _ => snapshot.services_for(proxy, None),
    }
}

fn inbound_clusters(snapshot: &Snapshot, proxy: &ProxyIdentity) -> Vec<Cluster> {
    let Some(sidecar) = snapshot.sidecar_for(proxy) else { return Vec::new() };
    sidecar
        .ingress
        .iter()
        .filter_map(|ing| {
            let port = ing.port.as_ref()?.number?;
            let (ip, target) = default_endpoint(ing.default_endpoint.as_deref(), port);
            let name = cluster_name("inbound", port, "", "");
            let services = own_services(snapshot, proxy, port);
            Some(Cluster {
                name: name.clone(),
                metadata: (!services.is_empty()).then(|| istio_metadata(&services)),
                cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::Static as i32,
                )),
                connect_timeout: Some(duration(CONNECT_TIMEOUT)),
                load_assignment: Some(ClusterLoadAssignment {
                    cluster_name: name,
                    endpoints: vec![LocalityLbEndpoints {
                        lb_endpoints: vec![lb_endpoint_for(&ip, target, 0)],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
        .collect()
}

/// Where an ingress listener forwards: `defaultEndpoint` (`127.0.0.1:8080`), or the
/// listener's port on loopback.
pub(super) fn default_endpoint(endpoint: Option<&str>, port: u32) -> (String, u32) {
    endpoint
        .and_then(|e| {
            let (host, p) = e.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let host = if host == "0.0.0.0" {
                "127.0.0.1"
            } else if host == "::" {
                "::1"
            } else {
                host
            };
            Some((host.to_owned(), p.parse().ok()?))
        })
        .unwrap_or_else(|| ("127.0.0.1".to_owned(), port))
}

/// The traffic policy for one port: the top-level settings, overridden field by field
/// by the matching `portLevelSettings` entry.
fn effective_policy(policy: Option<&TrafficPolicy>, port: u32) -> TrafficPolicy {
    let Some(policy) = policy else { return TrafficPolicy::default() };
    let mut out = TrafficPolicy {
        load_balancer: policy.load_balancer.clone(),
        connection_pool: policy.connection_pool.clone(),
        outlier_detection: policy.outlier_detection.clone(),
        tls: policy.tls.clone(),
        ..Default::default()
    };
    if let Some(pl) = policy.port_level_settings.iter().find(|p| p.port.as_ref().and_then(|p| p.number) == Some(port)) {
        if pl.load_balancer.is_some() {
            out.load_balancer = pl.load_balancer.clone();
        }
        if pl.connection_pool.is_some() {
            out.connection_pool = pl.connection_pool.clone();
        }
        if pl.outlier_detection.is_some() {
            out.outlier_detection = pl.outlier_detection.clone();
        }
        if pl.tls.is_some() {
            out.tls = pl.tls.clone();
        }
    }
    out
}

/// Subset settings replace the destination's, field by field.
fn overlay(base: &mut TrafficPolicy, top: &TrafficPolicy) {
    if top.load_balancer.is_some() {
        base.load_balancer = top.load_balancer.clone();
    }
    if top.connection_pool.is_some() {
        base.connection_pool = top.connection_pool.clone();
    }
    if top.outlier_detection.is_some() {
        base.outlier_detection = top.outlier_detection.clone();
    }
    if top.tls.is_some() {
        base.tls = top.tls.clone();
    }
}

/// Istio's cluster metadata, `istio.services`: the services behind a cluster, which
/// proxies name in their metrics (`destination_service`, `_name`, `_namespace`). Only
/// services in the mesh get it (and with it the peer metadata exchange).
///
/// It is a `google.protobuf.Struct` under the typed metadata key `istio`, encoded from
/// ordered maps so that the same services always give the same bytes (the generated
/// `Struct` holds a hash map, whose order changes from one encoding to the next, which
/// would make every translation look like a change).
fn istio_metadata(services: &[&Service]) -> envoy_types::pb::envoy::config::core::v3::Metadata {
    use super::sorted::{SortedKind, SortedList, SortedStruct, SortedValue};
    let text = |s: &str| SortedValue { kind: Some(SortedKind::String(s.to_owned())) };
    let entries = services
        .iter()
        .map(|s| {
            let short = s.hostname.strip_suffix(&format!(".{}.svc.cluster.local", s.namespace));
            let fields = [
                ("host".to_owned(), text(&s.hostname)),
                ("name".to_owned(), text(short.unwrap_or(&s.hostname))),
                ("namespace".to_owned(), text(&s.namespace)),
            ];
            SortedValue { kind: Some(SortedKind::Struct(SortedStruct { fields: fields.into_iter().collect() })) }
        })
        .collect();
    let list = SortedValue { kind: Some(SortedKind::List(SortedList { values: entries })) };
    let istio = SortedStruct { fields: [("services".to_owned(), list)].into_iter().collect() };
    let any = envoy_types::pb::google::protobuf::Any {
        type_url: "type.googleapis.com/google.protobuf.Struct".into(),
        value: prost::Message::encode_to_vec(&istio),
    };
    envoy_types::pb::envoy::config::core::v3::Metadata {
        typed_filter_metadata: [("istio".to_owned(), any)].into_iter().collect(),
        ..Default::default()
    }
}

/// The services whose endpoints are this proxy's workload (its WorkloadEntry) on `port`
/// (the port it receives on), in the mesh.
fn own_services<'a>(snapshot: &'a Snapshot, proxy: &ProxyIdentity, port: u32) -> Vec<&'a Service> {
    snapshot
        .registry
        .services
        .values()
        .filter(|s| s.location == Location::MeshInternal)
        .filter(|s| {
            s.endpoints.iter().any(|e| {
                // By workload, not address: an endpoint-only change (an address) must not
                // change clusters.
                let ours = e.workload.as_deref() == Some(proxy.workload.as_str()) && s.namespace == proxy.namespace;
                ours && s.ports.iter().any(|p| p.number == port || e.port_for(p) == port)
            })
        })
        .collect()
}

/// Istio's operation (span name) of requests to this proxy's workload on `port`: the
/// first of its services there, `reviews.default.svc.cluster.local:9080/*` (the
/// service's port, not the workload's).
pub(super) fn inbound_operation(snapshot: &Snapshot, proxy: &ProxyIdentity, port: u32) -> Option<String> {
    let mut services = own_services(snapshot, proxy, port);
    services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    let service = services.first()?;
    let service_port =
        service.ports.iter().find(|p| p.number == port || service.endpoints.iter().any(|e| e.port_for(p) == port))?;
    Some(format!("{}:{}/*", service.hostname, service_port.number))
}

fn outbound_cluster(service: &Service, port: &ServicePort, subset: &str, policy: &TrafficPolicy) -> Cluster {
    let name = cluster_name("outbound", port.number, subset, &service.hostname);
    let dns = matches!(service.resolution, Resolution::Dns | Resolution::DnsRoundRobin);
    let mut c = Cluster {
        name: name.clone(),
        metadata: (service.location == Location::MeshInternal).then(|| istio_metadata(&[service])),
        connect_timeout: Some(
            policy
                .connection_pool
                .as_ref()
                .and_then(|cp| cp.tcp.as_ref())
                .and_then(|t| duration_text(t.connect_timeout.as_deref()))
                .unwrap_or_else(|| duration(CONNECT_TIMEOUT)),
        ),
        ..Default::default()
    };
    if dns {
        let kind = if service.resolution == Resolution::Dns {
            cluster::DiscoveryType::StrictDns
        } else {
            cluster::DiscoveryType::LogicalDns
        };
        c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(kind as i32));
        c.load_assignment = Some(load_assignment(&name, service, port, None));
    } else {
        c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32));
        c.eds_cluster_config = Some(cluster::EdsClusterConfig { eds_config: Some(ads()), service_name: name.clone() });
    }
    // HTTP/2 ports speak HTTP/2 upstream; so do HTTP ports a DestinationRule upgrades.
    let upgrade = port.protocol == Protocol::Http
        && policy.connection_pool.as_ref().and_then(|cp| cp.http.as_ref()).and_then(|h| h.h2_upgrade_policy)
            == Some(weft_api::istio::H2UpgradePolicy::Upgrade);
    if matches!(port.protocol, Protocol::Http2 | Protocol::Grpc) || upgrade {
        let options = HttpProtocolOptions {
            upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            )),
            ..Default::default()
        };
        c.typed_extension_protocol_options
            .insert("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(), pack_any(options));
    }
    apply_load_balancer(&mut c, policy.load_balancer.as_ref());
    apply_connection_pool(&mut c, policy.connection_pool.as_ref());
    apply_outlier_detection(&mut c, policy.outlier_detection.as_ref());
    c
}

/// TLS origination to the upstream (DestinationRule `tls` SIMPLE and MUTUAL), with the
/// server's certificate checked unless `insecureSkipVerify`, as Istio checks it: against
/// `caCertificates`, or without them the operating system's roots (SDS
/// `file-root:system` for a proxy with an identity agent, the system bundle file for one
/// without); and against `subjectAltNames`, or without them the name the connection is
/// for (the SNI). ISTIO_MUTUAL and auto mTLS are the mesh's own
/// ([`super::security::apply_outbound`]); DISABLE sends plaintext.
fn apply_tls(c: &mut Cluster, tls: Option<&ClientTlsSettings>, hostname: &str, sds: bool) {
    use envoy_types::pb::envoy::config::core::v3::{DataSource, TransportSocket, data_source, transport_socket};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
        common_tls_context, subject_alt_name_matcher,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
    let Some(tls) = tls else { return };
    if !matches!(tls.mode, Some(ClientTlsMode::Simple | ClientTlsMode::Mutual)) {
        return;
    }
    let file = |path: &str| DataSource {
        specifier: Some(data_source::Specifier::Filename(path.to_owned())),
        ..Default::default()
    };
    let sni = tls.sni.clone().unwrap_or_else(|| hostname.to_owned());
    let mut common = CommonTlsContext::default();
    if tls.insecure_skip_verify != Some(true) {
        // A wildcard host has no one name to expect.
        let sans = match tls.subject_alt_names.as_slice() {
            [] if sni.contains('*') => Vec::new(),
            [] => vec![sni.clone()],
            given => given.to_vec(),
        };
        let mut validation = CertificateValidationContext {
            match_typed_subject_alt_names: sans
                .into_iter()
                .map(|san| SubjectAltNameMatcher {
                    san_type: subject_alt_name_matcher::SanType::Dns as i32,
                    matcher: Some(StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::Exact(san)),
                        ignore_case: false,
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        common.validation_context_type = Some(match tls.ca_certificates.as_deref() {
            Some(ca) => {
                validation.trusted_ca = Some(file(ca));
                common_tls_context::ValidationContextType::ValidationContext(validation)
            }
            None if sds => common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(validation),
                    validation_context_sds_secret_config: Some(super::security::sds(super::security::SYSTEM_ROOTS)),
                    ..Default::default()
                },
            ),
            None => {
                validation.trusted_ca = Some(file(SYSTEM_BUNDLE));
                common_tls_context::ValidationContextType::ValidationContext(validation)
            }
        });
    }
    if tls.mode == Some(ClientTlsMode::Mutual)
        && let (Some(cert), Some(key)) = (tls.client_certificate.as_deref(), tls.private_key.as_deref())
    {
        common.tls_certificates.push(TlsCertificate {
            certificate_chain: Some(file(cert)),
            private_key: Some(file(key)),
            ..Default::default()
        });
    }
    let context = UpstreamTlsContext { common_tls_context: Some(common), sni, ..Default::default() };
    c.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(context))),
    });
}

fn apply_load_balancer(c: &mut Cluster, lb: Option<&LoadBalancerSettings>) {
    let Some(lb) = lb else { return };
    let policy = match (lb.simple, &lb.consistent_hash) {
        (_, Some(ch)) if ch.maglev.is_some() => cluster::LbPolicy::Maglev,
        (_, Some(ch)) => {
            let min = ch.ring_hash.as_ref().and_then(|r| r.minimum_ring_size).or(ch.minimum_ring_size);
            if let Some(min) = min {
                c.lb_config = Some(cluster::LbConfig::RingHashLbConfig(cluster::RingHashLbConfig {
                    minimum_ring_size: Some(envoy_types::pb::google::protobuf::UInt64Value {
                        value: u64::try_from(min).unwrap_or(1024),
                    }),
                    ..Default::default()
                }));
            }
            cluster::LbPolicy::RingHash
        }
        (Some(SimpleLb::LeastConn | SimpleLb::LeastRequest), None) => cluster::LbPolicy::LeastRequest,
        (Some(SimpleLb::Random), None) => cluster::LbPolicy::Random,
        _ => cluster::LbPolicy::RoundRobin,
    };
    c.lb_policy = policy as i32;
}

fn apply_connection_pool(c: &mut Cluster, pool: Option<&ConnectionPoolSettings>) {
    let Some(pool) = pool else { return };
    let u32v = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok()).map(|value| UInt32Value { value });
    let tcp = pool.tcp.as_ref();
    let http = pool.http.as_ref();
    let thresholds = Thresholds {
        priority: RoutingPriority::Default as i32,
        max_connections: u32v(tcp.and_then(|t| t.max_connections)),
        max_pending_requests: u32v(http.and_then(|h| h.http1_max_pending_requests)),
        max_requests: u32v(http.and_then(|h| h.http2_max_requests)),
        max_retries: u32v(http.and_then(|h| h.max_retries)),
        ..Default::default()
    };
    if thresholds != (Thresholds { priority: RoutingPriority::Default as i32, ..Default::default() }) {
        c.circuit_breakers = Some(CircuitBreakers { thresholds: vec![thresholds], ..Default::default() });
    }
    // Istio: maxRequestsPerConnection 1 turns keep-alive off; 0 is no limit.
    let per_connection = http.and_then(|h| h.max_requests_per_connection).filter(|n| *n > 0);
    let common = envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions {
        idle_timeout: http.and_then(|h| duration_text(h.idle_timeout.as_deref())),
        max_requests_per_connection: u32v(per_connection),
        ..Default::default()
    };
    if common != Default::default() {
        let mut options: HttpProtocolOptions = c
            .typed_extension_protocol_options
            .get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
            .and_then(|any| prost::Message::decode(any.value.as_slice()).ok())
            .unwrap_or_default();
        options.common_http_protocol_options = Some(common);
        if options.upstream_protocol_options.is_none() {
            // Envoy requires a protocol choice beside common options: HTTP/1.1, as Istio's
            // default for HTTP ports.
            options.upstream_protocol_options =
                Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(
                            http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                                Default::default(),
                            ),
                        ),
                    },
                ));
        }
        c.typed_extension_protocol_options
            .insert("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(), pack_any(options));
    }
}

fn apply_outlier_detection(c: &mut Cluster, od: Option<&IstioOutlier>) {
    let Some(od) = od else { return };
    let u32v = |v: Option<u32>| v.map(|value| UInt32Value { value });
    let consecutive_5xx =
        od.consecutive5xx_errors.or_else(|| od.consecutive_errors.and_then(|e| u32::try_from(e).ok()));
    c.outlier_detection = Some(OutlierDetection {
        consecutive_5xx: u32v(Some(consecutive_5xx.unwrap_or(0))),
        enforcing_consecutive_5xx: u32v(Some(if consecutive_5xx.unwrap_or(0) > 0 { 100 } else { 0 })),
        consecutive_gateway_failure: u32v(od.consecutive_gateway_errors),
        enforcing_consecutive_gateway_failure: u32v(od.consecutive_gateway_errors.map(|g| if g > 0 { 100 } else { 0 })),
        interval: duration_text(od.interval.as_deref()),
        base_ejection_time: duration_text(od.base_ejection_time.as_deref()),
        max_ejection_percent: u32v(od.max_ejection_percent.and_then(|p| u32::try_from(p).ok())),
        // Istio turns success-rate ejection off.
        enforcing_success_rate: u32v(Some(0)),
        ..Default::default()
    });
    if let Some(min) = od.min_health_percent {
        let mut common = c.common_lb_config.take().unwrap_or_default();
        common.healthy_panic_threshold = Some(envoy_types::pb::envoy::r#type::v3::Percent { value: f64::from(min) });
        c.common_lb_config = Some(common);
    }
}

/// The endpoints of every EDS cluster in `clusters`.
pub fn endpoints_for(snapshot: &Snapshot, proxy: &ProxyIdentity, clusters: &[Cluster]) -> Vec<ClusterLoadAssignment> {
    clusters
        .iter()
        .filter(|c| c.eds_cluster_config.is_some())
        .filter_map(|c| endpoints_of_cluster(snapshot, proxy, &c.name))
        .collect()
}

/// The endpoints of one EDS cluster, by its Istio name.
pub fn endpoints_of_cluster(snapshot: &Snapshot, proxy: &ProxyIdentity, name: &str) -> Option<ClusterLoadAssignment> {
    let (port, subset, host) = parse_cluster_name(name)?;
    let service = snapshot.registry.services.get(host)?;
    let service_port = service.port(port)?;
    let labels = if subset.is_empty() {
        None
    } else {
        let dr = snapshot.destination_rule(host, &proxy.namespace, &service.namespace)?;
        Some(dr.subsets.iter().find(|s| s.name.as_deref() == Some(subset))?.labels.clone())
    };
    Some(load_assignment(name, service, service_port, labels.as_ref()))
}

/// `(port, subset, host)` of `outbound|port|subset|host`.
pub fn parse_cluster_name(name: &str) -> Option<(u32, &str, &str)> {
    let mut parts = name.splitn(4, '|');
    let (_, port, subset, host) = (parts.next()?, parts.next()?.parse::<u32>().ok()?, parts.next()?, parts.next()?);
    Some((port, subset, host))
}

/// Endpoints grouped by locality, each locality weighted by its endpoints (gRPC's xDS
/// client needs locality weights).
fn load_assignment(
    name: &str,
    service: &Service,
    port: &ServicePort,
    subset: Option<&BTreeMap<String, String>>,
) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<&str, Vec<&Endpoint>> = BTreeMap::new();
    for ep in &service.endpoints {
        if subset.is_none_or(|labels| labels.iter().all(|(k, v)| ep.labels.get(k) == Some(v))) {
            by_locality.entry(ep.locality.as_str()).or_default().push(ep);
        }
    }
    let endpoints = by_locality
        .into_iter()
        .map(|(locality, eps)| {
            let mut parts = locality.split('/');
            LocalityLbEndpoints {
                locality: Some(Locality {
                    region: parts.next().unwrap_or("").to_owned(),
                    zone: parts.next().unwrap_or("").to_owned(),
                    sub_zone: parts.next().unwrap_or("").to_owned(),
                }),
                load_balancing_weight: Some(UInt32Value { value: eps.iter().map(|e| e.weight.max(1)).sum() }),
                lb_endpoints: eps
                    .iter()
                    .map(|e| {
                        let mut lb = lb_endpoint_for(&e.address, e.port_for(port), e.weight);
                        lb.metadata = super::security::endpoint_metadata(e);
                        lb
                    })
                    .collect(),
                ..Default::default()
            }
        })
        .collect();
    ClusterLoadAssignment { cluster_name: name.to_owned(), endpoints, ..Default::default() }
}

pub(super) fn lb_endpoint_for(address: &str, port: u32, weight: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(socket(address, port)),
            ..Default::default()
        })),
        load_balancing_weight: (weight > 0).then_some(UInt32Value { value: weight }),
        ..Default::default()
    }
}
