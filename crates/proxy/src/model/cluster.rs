//! Clusters (CDS) and their endpoints (EDS), compiled into what the upstream layer needs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    HealthStatus, TransportSocket, address, socket_address, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};

use super::{ConfigError, duration, unpack};
use crate::secrets::Secrets;
use crate::telemetry::Service;
use crate::tls::UpstreamTls;

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const UPSTREAM_TLS: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const RAW_BUFFER: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
/// The endpoint metadata `transport_socket_matches` select on.
pub const SOCKET_MATCH_METADATA: &str = "envoy.transport_socket_match";

/// A transport socket: TLS, or None for plaintext.
fn transport_socket(ts: &TransportSocket, secrets: &Secrets) -> Result<Option<Arc<UpstreamTls>>, String> {
    let any = match &ts.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) => any,
        None => return Err(format!("transport socket {} has no typed_config", ts.name)),
    };
    if any.type_url.ends_with(RAW_BUFFER) {
        return Ok(None);
    }
    let ctx: UpstreamTlsContext =
        unpack(any, UPSTREAM_TLS).map_err(|e| format!("transport socket {}: {e}", ts.name))?;
    UpstreamTls::from_envoy(&ctx, secrets).map(|t| Some(Arc::new(t))).map_err(|e| format!("tls: {e}"))
}

/// The string values of a metadata struct.
fn struct_strings(s: &envoy_types::pb::google::protobuf::Struct) -> Vec<(String, String)> {
    use envoy_types::pb::google::protobuf::value::Kind;
    s.fields
        .iter()
        .filter_map(|(k, v)| match &v.kind {
            Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
            Some(Kind::BoolValue(b)) => Some((k.clone(), b.to_string())),
            _ => None,
        })
        .collect()
}

/// Envoy's defaults for a cluster's circuit breakers.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// Envoy's default maximum of requests waiting for a connection.
pub const DEFAULT_MAX_PENDING: u32 = 1024;
/// Envoy's default maximum of requests in flight.
pub const DEFAULT_MAX_REQUESTS: u32 = 1024;
/// Envoy's default maximum of retries in flight.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// How a cluster finds its endpoints.
#[derive(Debug, Clone, PartialEq)]
pub enum Discovery {
    /// Endpoints arrive by EDS under this name.
    Eds(String),
    /// Endpoints are in the cluster itself (STATIC, STRICT_DNS, LOGICAL_DNS).
    Inline(Arc<Endpoints>),
    /// The connection's original destination is the endpoint (capture mode passthrough).
    OriginalDst,
}

/// The load-balancing policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LbPolicy {
    /// Weighted round robin.
    RoundRobin,
    /// Least outstanding requests among two random choices.
    LeastRequest,
    /// Uniformly random.
    Random,
    /// Consistent hashing on a ring of at least this many entries.
    RingHash { min_ring_size: u64 },
    /// Maglev consistent hashing (table size 65537).
    Maglev,
}

/// Circuit-breaker limits (Envoy's default priority thresholds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Connections to all endpoints.
    pub max_connections: u32,
    /// Requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Requests in flight.
    pub max_requests: u32,
    /// Retries in flight.
    pub max_retries: u32,
    /// Requests per upstream connection (0: unlimited).
    pub max_requests_per_connection: u32,
}

/// Passive health checking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierDetection {
    /// Consecutive 5xx responses that eject a host (None: not enforced).
    pub consecutive_5xx: Option<u32>,
    /// Consecutive 502/503/504 or connect failures that eject a host.
    pub consecutive_gateway_failure: Option<u32>,
    /// Base ejection time, multiplied by the number of times a host was ejected.
    pub base_ejection_time: Duration,
    /// At most this share of hosts is ejected at once.
    pub max_ejection_percent: u32,
    /// How often ejections are reviewed.
    pub interval: Duration,
}

/// A cluster as the proxy uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    /// `outbound|9080|v1|reviews.default.svc.cluster.local`.
    pub name: String,
    /// Where the endpoints come from.
    pub discovery: Discovery,
    /// Load balancing.
    pub lb: LbPolicy,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Circuit breakers.
    pub limits: Limits,
    /// Outlier detection, if configured.
    pub outlier: Option<OutlierDetection>,
    /// Speak HTTP/2 to the upstream.
    pub http2: bool,
    /// Idle timeout of upstream connections.
    pub idle_timeout: Option<Duration>,
    /// TLS origination (the cluster's `transport_socket`).
    pub tls: Option<Arc<UpstreamTls>>,
    /// `transport_socket_matches`: the first whose match the endpoint's
    /// `envoy.transport_socket_match` metadata satisfies decides, else `tls`.
    pub tls_matches: Vec<TlsMatch>,
    /// The service behind the cluster, for Istio's metrics.
    pub service: Arc<Service>,
    /// Whether requests carry the peer metadata exchange (clusters of services in the
    /// mesh, as Istio's cluster metadata marks them).
    pub exchange: bool,
}

/// One of a cluster's `transport_socket_matches`.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsMatch {
    /// The match's name (`tlsMode-istio`).
    pub name: String,
    /// Metadata values the endpoint must carry.
    pub labels: Vec<(String, String)>,
    /// TLS, or None for plaintext (`raw_buffer`).
    pub tls: Option<Arc<UpstreamTls>>,
}

impl ClusterSpec {
    /// The transport an endpoint with this metadata is reached over.
    pub fn tls_for(&self, metadata: &[(String, String)]) -> Option<Arc<UpstreamTls>> {
        let matched = self.tls_matches.iter().find(|m| m.labels.iter().all(|l| metadata.contains(l)));
        match matched {
            Some(m) => m.tls.clone(),
            None => self.tls.clone(),
        }
    }
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Where to connect (host name for DNS clusters, else an IP).
    pub host: String,
    /// Port.
    pub port: u16,
    /// The parsed address, when `host` is an IP.
    pub addr: Option<SocketAddr>,
    /// Load-balancing weight (≥ 1).
    pub weight: u32,
    /// False when EDS says the endpoint is not healthy.
    pub healthy: bool,
    /// `envoy.transport_socket_match` metadata (`tlsMode: istio`).
    pub socket_match: Vec<(String, String)>,
}

/// A group of endpoints in one locality and priority.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalityGroup {
    /// `region/zone/subzone`.
    pub locality: String,
    /// Locality weight (0: not set).
    pub weight: u32,
    /// Priority (0 is preferred).
    pub priority: u32,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// A cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Endpoints {
    /// Locality groups as EDS sent them.
    pub groups: Vec<LocalityGroup>,
}

impl Endpoints {
    /// Every endpoint, in order.
    pub fn all(&self) -> impl Iterator<Item = &Endpoint> {
        self.groups.iter().flat_map(|g| &g.endpoints)
    }
}

/// Compiles a CDS resource.
pub fn compile_cluster(c: &Cluster, secrets: &Secrets) -> Result<ClusterSpec, ConfigError> {
    let err = |m: String| ConfigError::new(format!("cluster {}: {m}", c.name));
    if c.name.is_empty() {
        return Err(ConfigError::new("a cluster without a name"));
    }
    let discovery = match &c.cluster_discovery_type {
        None => Discovery::Inline(Arc::new(inline_endpoints(c).map_err(err)?)),
        Some(cluster::ClusterDiscoveryType::Type(t)) => match cluster::DiscoveryType::try_from(*t) {
            Ok(cluster::DiscoveryType::Eds) => {
                let name = c
                    .eds_cluster_config
                    .as_ref()
                    .map(|e| e.service_name.clone())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| c.name.clone());
                Discovery::Eds(name)
            }
            Ok(
                cluster::DiscoveryType::Static | cluster::DiscoveryType::StrictDns | cluster::DiscoveryType::LogicalDns,
            ) => Discovery::Inline(Arc::new(inline_endpoints(c).map_err(err)?)),
            Ok(cluster::DiscoveryType::OriginalDst) => Discovery::OriginalDst,
            Err(_) => return Err(err(format!("unknown discovery type {t}"))),
        },
        Some(cluster::ClusterDiscoveryType::ClusterType(t)) => {
            return Err(err(format!("custom cluster type {} is not supported", t.name)));
        }
    };
    let lb = match cluster::LbPolicy::try_from(c.lb_policy) {
        Ok(cluster::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        Ok(cluster::LbPolicy::LeastRequest) => LbPolicy::LeastRequest,
        Ok(cluster::LbPolicy::Random) => LbPolicy::Random,
        Ok(cluster::LbPolicy::Maglev) => LbPolicy::Maglev,
        Ok(cluster::LbPolicy::RingHash) => {
            let min_ring_size = match &c.lb_config {
                Some(cluster::LbConfig::RingHashLbConfig(r)) => r.minimum_ring_size.as_ref().map_or(1024, |v| v.value),
                _ => 1024,
            };
            if min_ring_size > 8 * 1024 * 1024 {
                return Err(err(format!("ring size {min_ring_size} exceeds 8M entries")));
            }
            LbPolicy::RingHash { min_ring_size }
        }
        Ok(cluster::LbPolicy::ClusterProvided) if discovery == Discovery::OriginalDst => LbPolicy::RoundRobin,
        Ok(other) => return Err(err(format!("lb_policy {} is not supported", other.as_str_name()))),
        Err(_) => return Err(err(format!("unknown lb_policy {}", c.lb_policy))),
    };
    let mut limits = Limits {
        max_connections: DEFAULT_MAX_CONNECTIONS,
        max_pending_requests: DEFAULT_MAX_PENDING,
        max_requests: DEFAULT_MAX_REQUESTS,
        max_retries: DEFAULT_MAX_RETRIES,
        max_requests_per_connection: 0,
    };
    // Only the DEFAULT priority's thresholds apply to regular traffic.
    if let Some(t) = c.circuit_breakers.as_ref().and_then(|cb| cb.thresholds.iter().find(|t| t.priority == 0)) {
        let value =
            |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, d: u32| v.as_ref().map_or(d, |v| v.value);
        limits.max_connections = value(&t.max_connections, limits.max_connections);
        limits.max_pending_requests = value(&t.max_pending_requests, limits.max_pending_requests);
        limits.max_requests = value(&t.max_requests, limits.max_requests);
        limits.max_retries = value(&t.max_retries, limits.max_retries);
    }
    let mut http2 = false;
    let mut idle_timeout = Some(Duration::from_secs(3600));
    if let Some(any) = c.typed_extension_protocol_options.get(HTTP_PROTOCOL_OPTIONS) {
        let options: HttpProtocolOptions = unpack(any, HTTP_PROTOCOL_OPTIONS).map_err(|e| err(e.to_string()))?;
        if let Some(common) = &options.common_http_protocol_options {
            if let Some(t) = &common.idle_timeout {
                idle_timeout = Some(duration(t)).filter(|d| !d.is_zero());
            }
            if let Some(m) = &common.max_requests_per_connection {
                limits.max_requests_per_connection = m.value;
            }
        }
        http2 = match &options.upstream_protocol_options {
            Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(e)) => matches!(
                e.protocol_config,
                Some(http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_))
            ),
            Some(http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => {
                return Err(err("use_downstream_protocol_config is not supported".into()));
            }
            Some(http_protocol_options::UpstreamProtocolOptions::AutoConfig(_)) => {
                return Err(err("auto_config (ALPN) is not supported".into()));
            }
            None => false,
        };
    }
    let outlier = c.outlier_detection.as_ref().map(|o| {
        let enforced = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, default: u32| {
            v.as_ref().map_or(default, |v| v.value) > 0
        };
        OutlierDetection {
            consecutive_5xx: enforced(&o.enforcing_consecutive_5xx, 100)
                .then(|| o.consecutive_5xx.as_ref().map_or(5, |v| v.value)),
            consecutive_gateway_failure: (enforced(&o.enforcing_consecutive_gateway_failure, 0)
                && o.consecutive_gateway_failure.is_some())
            .then(|| o.consecutive_gateway_failure.as_ref().map_or(5, |v| v.value)),
            base_ejection_time: o.base_ejection_time.as_ref().map_or(Duration::from_secs(30), duration),
            max_ejection_percent: o.max_ejection_percent.as_ref().map_or(10, |v| v.value.min(100)),
            interval: o.interval.as_ref().map_or(Duration::from_secs(10), duration),
        }
    });
    let tls = c.transport_socket.as_ref().map(|ts| transport_socket(ts, secrets)).transpose().map_err(err)?.flatten();
    let mut tls_matches = Vec::with_capacity(c.transport_socket_matches.len());
    for m in &c.transport_socket_matches {
        let ts = m
            .transport_socket
            .as_ref()
            .ok_or_else(|| err(format!("transport socket match {} has no socket", m.name)))?;
        tls_matches.push(TlsMatch {
            name: m.name.clone(),
            labels: m.r#match.as_ref().map(struct_strings).unwrap_or_default(),
            tls: transport_socket(ts, secrets).map_err(err)?,
        });
    }
    Ok(ClusterSpec {
        name: c.name.clone(),
        discovery,
        lb,
        connect_timeout: c.connect_timeout.as_ref().map_or(Duration::from_secs(5), duration),
        limits,
        outlier,
        http2,
        idle_timeout,
        tls,
        tls_matches,
        service: service_of(c),
        exchange: istio_services(c).is_some(),
    })
}

/// Istio's cluster metadata: `istio.services`, the services behind the cluster (set for
/// services in the mesh), under the typed or the untyped metadata key `istio`.
fn istio_services(c: &Cluster) -> Option<Vec<envoy_types::pb::google::protobuf::Value>> {
    use envoy_types::pb::google::protobuf::Struct;
    use envoy_types::pb::google::protobuf::value::Kind;
    let metadata = c.metadata.as_ref()?;
    let istio = match metadata.typed_filter_metadata.get("istio") {
        Some(any) if any.type_url.ends_with("/google.protobuf.Struct") => {
            <Struct as prost::Message>::decode(any.value.as_slice()).ok()?
        }
        _ => metadata.filter_metadata.get("istio")?.clone(),
    };
    match istio.fields.get("services")?.kind.as_ref()? {
        Kind::ListValue(l) => Some(l.values.clone()),
        _ => None,
    }
}

/// The service a cluster is for, as Istio's metrics name it: from Istio's cluster
/// metadata, else the host in the cluster's name (`outbound|9080|v1|<host>`).
fn service_of(c: &Cluster) -> Arc<Service> {
    use envoy_types::pb::google::protobuf::value::Kind;
    let services = istio_services(c).unwrap_or_default();
    let first = services.first().and_then(|v| match &v.kind {
        Some(Kind::StructValue(s)) => Some(s),
        _ => None,
    });
    if let Some(s) = first {
        let text = |key: &str| match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(v)) => v.clone(),
            _ => String::new(),
        };
        let host = text("host");
        let name = Some(text("name")).filter(|n| !n.is_empty()).unwrap_or_else(|| host.clone());
        let namespace = Some(text("namespace")).filter(|n| !n.is_empty()).unwrap_or_else(|| "unknown".into());
        return Arc::new(Service { host, name, namespace });
    }
    match c.name.rsplit('|').next() {
        Some(host) if c.name.contains('|') && !host.is_empty() => Arc::new(Service::from_host(host)),
        _ => Service::unknown(),
    }
}

fn inline_endpoints(c: &Cluster) -> Result<Endpoints, String> {
    match &c.load_assignment {
        Some(cla) => compile_endpoints(cla).map_err(|e| e.to_string()),
        None => Ok(Endpoints::default()),
    }
}

/// Compiles an EDS resource (or a cluster's inline load assignment).
pub fn compile_endpoints(cla: &ClusterLoadAssignment) -> Result<Endpoints, ConfigError> {
    let err = |m: String| ConfigError::new(format!("endpoints {}: {m}", cla.cluster_name));
    let mut groups = Vec::with_capacity(cla.endpoints.len());
    for group in &cla.endpoints {
        let locality = group
            .locality
            .as_ref()
            .map(|l| format!("{}/{}/{}", l.region, l.zone, l.sub_zone))
            .unwrap_or_else(|| "//".into());
        let mut endpoints = Vec::with_capacity(group.lb_endpoints.len());
        for lb in &group.lb_endpoints {
            let endpoint = match &lb.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(e)) => e,
                _ => return Err(err("an lb_endpoint without an endpoint".into())),
            };
            let sock = match endpoint.address.as_ref().and_then(|a| a.address.as_ref()) {
                Some(address::Address::SocketAddress(s)) => s,
                Some(_) => return Err(err("only socket addresses are supported".into())),
                None => return Err(err("an endpoint without an address".into())),
            };
            let port = match sock.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => {
                    u16::try_from(p).map_err(|_| err(format!("port {p} out of range")))?
                }
                _ => return Err(err(format!("endpoint {} has no port value", sock.address))),
            };
            let addr = sock.address.parse().ok().map(|ip| SocketAddr::new(ip, port));
            let health = HealthStatus::try_from(lb.health_status).unwrap_or(HealthStatus::Unknown);
            let socket_match = lb
                .metadata
                .as_ref()
                .and_then(|m| m.filter_metadata.get(SOCKET_MATCH_METADATA))
                .map(struct_strings)
                .unwrap_or_default();
            endpoints.push(Endpoint {
                host: sock.address.clone(),
                port,
                addr,
                weight: lb.load_balancing_weight.as_ref().map_or(1, |w| w.value.max(1)),
                healthy: matches!(health, HealthStatus::Unknown | HealthStatus::Healthy | HealthStatus::Degraded),
                socket_match,
            });
        }
        groups.push(LocalityGroup {
            locality,
            weight: group.load_balancing_weight.as_ref().map_or(0, |w| w.value),
            priority: group.priority,
            endpoints,
        });
    }
    Ok(Endpoints { groups })
}
