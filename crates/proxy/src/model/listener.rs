//! Listeners (LDS): where to accept, and what to run on each connection.

use crate::telemetry::Reporter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;

use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;

use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;

use super::jwt::{JwtFilter, compile_jwt};
use super::rbac::{RbacFilter, compile_rbac};
use super::route::{RouteTable, compile_route_table};
use super::{ConfigError, duration, unpack};
use crate::secrets::Secrets;
use crate::tls::DownstreamTls;

const HCM: &str = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const NETWORK_RBAC: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";
const HTTP_RBAC: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
const JWT_AUTHN: &str = "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
const DOWNSTREAM_TLS: &str = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const RAW_BUFFER: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// Envoy's default limit on request headers, in KiB.
pub const DEFAULT_MAX_HEADERS_KB: u32 = 60;
/// Envoy's default timeout for an idle TCP proxy connection.
pub const DEFAULT_TCP_IDLE: Duration = Duration::from_secs(3600);

/// A listener as the proxy runs it.
#[derive(Debug)]
pub struct ListenerSpec {
    /// `127.0.0.1_9080`.
    pub name: String,
    /// Where to accept.
    pub address: SocketAddr,
    /// Hand connections to the listener of their original destination (capture mode).
    pub use_original_dst: bool,
    /// Recover the original destination (iptables REDIRECT) for filter chain matching.
    pub original_dst_filter: bool,
    /// False for listeners that only receive connections handed over by another.
    pub bind_to_port: bool,
    /// Filter chains; the first whose match holds serves the connection.
    pub chains: Vec<Chain>,
    /// The chain for connections no other chain matches.
    pub default_chain: Option<Chain>,
    /// The resource as received, for `/config_dump`.
    pub source: Listener,
}

/// One filter chain.
#[derive(Debug)]
pub struct Chain {
    /// Destination port condition.
    pub destination_port: Option<u16>,
    /// TLS server names condition (SNI).
    pub server_names: Vec<String>,
    /// Transport condition: `tls` or `raw_buffer` (plaintext).
    pub transport_protocol: Option<Transport>,
    /// ALPN condition (any of these offered in the ClientHello).
    pub application_protocols: Vec<String>,
    /// TLS termination (the chain's transport socket).
    pub tls: Option<Arc<DownstreamTls>>,
    /// Network RBAC filters, checked when the connection is accepted.
    pub rbac: Vec<RbacFilter>,
    /// What runs on the connection.
    pub kind: ChainKind,
}

/// Which of a chain's conditions are set: port, server names, transport, ALPN.
type Specificity = (bool, bool, bool, bool);

/// How a connection starts, as Envoy's TLS inspector tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A TLS ClientHello.
    Tls,
    /// Anything else.
    RawBuffer,
}

/// What the TLS inspector read from a connection's first bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hello {
    /// Whether the connection starts with a TLS ClientHello.
    pub tls: bool,
    /// The server name asked for.
    pub sni: Option<String>,
    /// The ALPN protocols offered.
    pub alpn: Vec<String>,
}

impl Chain {
    /// Whether the chain's conditions hold, and how specific they are (Envoy prefers
    /// the most specific match: port, then server name, transport, ALPN).
    fn matches(&self, destination_port: u16, hello: &Hello) -> Option<Specificity> {
        if self.destination_port.is_some_and(|p| p != destination_port) {
            return None;
        }
        if !self.server_names.is_empty()
            && !hello.sni.as_deref().is_some_and(|sn| self.server_names.iter().any(|n| server_name_matches(n, sn)))
        {
            return None;
        }
        let transport = if hello.tls { Transport::Tls } else { Transport::RawBuffer };
        if self.transport_protocol.is_some_and(|t| t != transport) {
            return None;
        }
        if !self.application_protocols.is_empty() && !hello.alpn.iter().any(|p| self.application_protocols.contains(p))
        {
            return None;
        }
        Some((
            self.destination_port.is_some(),
            !self.server_names.is_empty(),
            self.transport_protocol.is_some(),
            !self.application_protocols.is_empty(),
        ))
    }
}

/// The terminal network filter.
#[derive(Debug)]
pub enum ChainKind {
    /// HTTP connection manager.
    Http(Arc<HttpSpec>),
    /// TCP proxy.
    Tcp(Arc<TcpSpec>),
}

/// An HTTP connection manager.
#[derive(Debug)]
pub struct HttpSpec {
    /// `outbound_9080`.
    pub stat_prefix: String,
    /// Which side of a call this connection manager reports as, in Istio's metrics.
    pub reporter: Reporter,
    /// Its access logs.
    pub access_logs: crate::access_log::AccessLogs,
    /// Whether it reports Istio's metrics (the `istio.stats` filter).
    pub metrics: bool,
    /// The stats filter's overrides of those metrics, when it has any.
    pub metric_overrides: Option<Arc<crate::telemetry::overrides::Overrides>>,
    /// Its tracing, if configured.
    pub tracing: Option<Arc<crate::trace::Tracer>>,
    /// Where routes come from.
    pub routes: RouteSource,
    /// Whether the fault filter runs.
    pub fault: bool,
    /// Whether the CORS filter runs.
    pub cors: bool,
    /// HTTP/1 only, HTTP/2 only, or detect (h2c prior knowledge or HTTP/1.1).
    pub codec: Codec,
    /// Limit on request headers, in bytes.
    pub max_headers_bytes: usize,
    /// Close a connection idle this long.
    pub idle_timeout: Option<Duration>,
    /// Limit on the time to receive request headers.
    pub headers_timeout: Option<Duration>,
    /// Limit on the time a stream may be idle.
    pub stream_idle_timeout: Option<Duration>,
    /// Upgrade types allowed through (`websocket`), lower-cased.
    pub upgrades: Vec<String>,
    /// What happens to `x-forwarded-client-cert`.
    pub forward_client_cert: ForwardClientCert,
    /// HTTP RBAC filters, in filter order.
    pub rbac: Vec<RbacFilter>,
    /// Normalize the path (RFC 3986) before routing and filters.
    pub normalize_path: bool,
    /// Merge runs of slashes in the path.
    pub merge_slashes: bool,
    /// The JWT filter, which runs before them.
    pub jwt: Option<JwtFilter>,
    /// Set when a new version of the listener replaces this one: its HTTP/1 connections
    /// close after their current request, so that clients reconnect to the new version
    /// (Envoy drains a replaced filter chain's connections the same way).
    pub retired: std::sync::atomic::AtomicBool,
    /// Wakes the connections of a retired connection manager, so idle ones close.
    pub retire_notify: tokio::sync::Notify,
}

/// Envoy's `forward_client_cert_details`: what `x-forwarded-client-cert` carries on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardClientCert {
    /// Remove it (Envoy's default).
    Sanitize,
    /// Pass it on unchanged when the client connected with mutual TLS.
    ForwardOnly,
    /// Pass it on, with the client's certificate appended, over mutual TLS.
    AppendForward,
    /// Replace it with the client's certificate over mutual TLS.
    SanitizeSet,
    /// Pass it on unchanged, whatever the connection.
    AlwaysForwardOnly,
}

/// Downstream codec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Codec {
    /// HTTP/1.1 or HTTP/2 by the connection preface.
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only.
    Http2,
}

/// Where an HTTP connection manager's routes come from.
#[derive(Debug)]
pub enum RouteSource {
    /// RDS, by name.
    Rds(String),
    /// Inline.
    Inline(Arc<RouteTable>),
}

/// A TCP proxy.
#[derive(Debug)]
pub struct TcpSpec {
    /// `outbound_9100`.
    pub stat_prefix: String,
    /// Which side of a call this proxy reports as, in Istio's metrics.
    pub reporter: Reporter,
    /// Clusters and weights (one with weight 1 when not weighted).
    pub clusters: Vec<(String, u32)>,
    /// Close after this long without data either way.
    pub idle_timeout: Option<Duration>,
    /// Overrides of Istio's TCP metrics, when the chain has any.
    pub metric_overrides: Option<Arc<crate::telemetry::overrides::Overrides>>,
}

impl ListenerSpec {
    /// Marks the listener's connection managers as replaced.
    pub fn retire(&self) {
        for c in self.chains.iter().chain(&self.default_chain) {
            if let ChainKind::Http(h) = &c.kind {
                h.retired.store(true, std::sync::atomic::Ordering::Relaxed);
                h.retire_notify.notify_waiters();
            }
        }
    }

    /// The RDS names this listener needs.
    pub fn rds_names(&self) -> impl Iterator<Item = &str> {
        self.chains.iter().chain(&self.default_chain).filter_map(|c| match &c.kind {
            ChainKind::Http(h) => match &h.routes {
                RouteSource::Rds(n) => Some(n.as_str()),
                RouteSource::Inline(_) => None,
            },
            ChainKind::Tcp(_) => None,
        })
    }

    /// Whether choosing a chain needs the connection's first bytes (a ClientHello).
    pub fn needs_hello(&self) -> bool {
        self.chains.iter().any(|c| {
            !c.server_names.is_empty() || c.transport_protocol.is_some() || !c.application_protocols.is_empty()
        })
    }

    /// The chain that serves a connection: the most specific whose conditions hold
    /// (the first of equals), else the default chain.
    pub fn chain_for(&self, destination_port: u16, hello: &Hello) -> Option<&Chain> {
        let mut best: Option<(Specificity, &Chain)> = None;
        for c in &self.chains {
            if let Some(rank) = c.matches(destination_port, hello)
                && best.as_ref().is_none_or(|(b, _)| rank > *b)
            {
                best = Some((rank, c));
            }
        }
        best.map(|(_, c)| c).or(self.default_chain.as_ref())
    }
}

fn server_name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// Compiles an LDS resource. Listeners that only carry an `api_listener` (for
/// proxyless gRPC clients) yield `None`: a proxy has nothing to bind for them.
pub fn compile_listener(l: &Listener, secrets: &Secrets) -> Result<Option<ListenerSpec>, ConfigError> {
    let ctx = |e: ConfigError| e.context(format!("listener {}", l.name));
    if l.api_listener.is_some() {
        return Ok(None);
    }
    let sock = match l.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => s,
        _ => return Err(ctx(ConfigError::new("only socket addresses are supported"))),
    };
    let port = match sock.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p).ok(),
        _ => None,
    }
    .ok_or_else(|| ctx(ConfigError::new("a listener needs a port value")))?;
    let ip =
        sock.address.parse().map_err(|_| ctx(ConfigError::new(format!("{:?} is not an IP address", sock.address))))?;
    let mut original_dst_filter = false;
    for f in &l.listener_filters {
        // As Envoy: a listener filter is identified by its typed config's type.
        let type_url = match &f.config_type {
            Some(envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType::TypedConfig(any)) => {
                any.type_url.rsplit('/').next().unwrap_or_default()
            }
            _ => "",
        };
        match type_url {
            "envoy.extensions.filters.listener.original_dst.v3.OriginalDst" => original_dst_filter = true,
            // SNI is read by weft when a chain matches on server names; nothing to configure.
            "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
            | "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector" => {}
            other => {
                return Err(ctx(ConfigError::new(format!("listener filter {} ({other:?}) is not supported", f.name))));
            }
        }
    }
    // Inbound listeners report as the destination of a call; the rest as its source.
    let reporter = if l.traffic_direction == envoy_types::pb::envoy::config::core::v3::TrafficDirection::Inbound as i32
    {
        Reporter::Destination
    } else {
        Reporter::Source
    };
    let chains =
        l.filter_chains.iter().map(|c| compile_chain(c, secrets, reporter)).collect::<Result<_, _>>().map_err(ctx)?;
    let default_chain =
        l.default_filter_chain.as_ref().map(|c| compile_chain(c, secrets, reporter)).transpose().map_err(ctx)?;
    Ok(Some(ListenerSpec {
        name: l.name.clone(),
        address: SocketAddr::new(ip, port),
        use_original_dst: l.use_original_dst.as_ref().is_some_and(|b| b.value),
        original_dst_filter,
        bind_to_port: l.bind_to_port.as_ref().is_none_or(|b| b.value),
        chains,
        default_chain,
        source: l.clone(),
    }))
}

fn compile_chain(c: &FilterChain, secrets: &Secrets, reporter: Reporter) -> Result<Chain, ConfigError> {
    let m = c.filter_chain_match.clone().unwrap_or_default();
    let transport_protocol = match m.transport_protocol.as_str() {
        "" => None,
        "tls" => Some(Transport::Tls),
        "raw_buffer" => Some(Transport::RawBuffer),
        other => return Err(ConfigError::new(format!("transport protocol {other:?} is not supported"))),
    };
    let tls = match &c.transport_socket {
        None => None,
        Some(ts) => {
            let any = match &ts.config_type {
                Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) => any,
                None => return Err(ConfigError::new(format!("transport socket {} has no typed_config", ts.name))),
            };
            if any.type_url.ends_with(RAW_BUFFER) {
                None
            } else {
                let ctx: DownstreamTlsContext = unpack(any, DOWNSTREAM_TLS)?;
                let tls = DownstreamTls::from_envoy(&ctx, secrets)
                    .map_err(|e| ConfigError::new(format!("filter chain {}: tls: {e}", c.name)))?;
                Some(Arc::new(tls))
            }
        }
    };
    let Some((last, before)) = c.filters.split_last() else {
        return Err(ConfigError::new("a filter chain without filters"));
    };
    let mut rbac = Vec::new();
    for f in before {
        let any = match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) if any.type_url.ends_with(NETWORK_RBAC) => any,
            _ => {
                return Err(ConfigError::new(format!(
                    "network filter {} before {} is not supported",
                    f.name, last.name
                )));
            }
        };
        let config: NetworkRbac = unpack(any, NETWORK_RBAC)?;
        rbac.extend(compile_rbac(config.rules.as_ref()).map_err(|e| e.context(format!("network filter {}", f.name)))?);
    }
    let any = match &last.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => any,
        _ => return Err(ConfigError::new(format!("network filter {} has no typed_config", last.name))),
    };
    let kind = if any.type_url.ends_with(HCM) {
        ChainKind::Http(Arc::new(compile_hcm(&unpack(any, HCM)?, reporter)?))
    } else if any.type_url.ends_with(TCP_PROXY) {
        let mut tcp = compile_tcp(&unpack(any, TCP_PROXY)?, reporter)?;
        // Istio's stats filter has no place in a TCP chain Envoy would accept: its
        // configuration rides in the chain's metadata.
        if let Some(any) = c.metadata.as_ref().and_then(|m| m.typed_filter_metadata.get("istio.stats")) {
            let error = |e: String| ConfigError::new(format!("filter chain {}: istio.stats: {e}", c.name));
            tcp.metric_overrides = match stats_config(any).map_err(error)? {
                Some(config) => {
                    crate::telemetry::overrides::Overrides::compile(&config, &weft_envoy::stats::TCP_METRICS)
                        .map_err(error)?
                        .map(Arc::new)
                }
                None => None,
            };
        }
        ChainKind::Tcp(Arc::new(tcp))
    } else {
        return Err(ConfigError::new(format!("network filter {} ({}) is not supported", last.name, any.type_url)));
    };
    Ok(Chain {
        destination_port: m.destination_port.and_then(|p| u16::try_from(p.value).ok()),
        server_names: m.server_names,
        transport_protocol,
        application_protocols: m.application_protocols,
        tls,
        rbac,
        kind,
    })
}

fn compile_hcm(h: &HttpConnectionManager, reporter: Reporter) -> Result<HttpSpec, ConfigError> {
    let ctx = |e: ConfigError| e.context(format!("http connection manager {}", h.stat_prefix));
    let routes = match &h.route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(r)) => RouteSource::Rds(r.route_config_name.clone()),
        Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => {
            RouteSource::Inline(Arc::new(compile_route_table(rc).map_err(ctx)?))
        }
        _ => return Err(ctx(ConfigError::new("only RDS and inline route configurations are supported"))),
    };
    let (mut fault, mut cors, mut router, mut metrics) = (false, false, false, false);
    let mut rbac = Vec::new();
    let mut jwt = None;
    let mut metric_overrides = None;
    for (i, f) in h.http_filters.iter().enumerate() {
        let type_url = match &f.config_type {
            Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(a)) => a.type_url.as_str(),
            _ => "",
        };
        match (f.name.as_str(), type_url.rsplit('/').next().unwrap_or("")) {
            (_, "envoy.extensions.filters.http.router.v3.Router") | ("envoy.filters.http.router", "") => {
                if i + 1 != h.http_filters.len() {
                    return Err(ctx(ConfigError::new("the router filter must be the last HTTP filter")));
                }
                router = true;
            }
            (_, "envoy.extensions.filters.http.fault.v3.HTTPFault") => fault = true,
            // Istio's stats filter: this connection manager reports Istio's metrics.
            ("istio.stats", _) => {
                metrics = true;
                if let Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(any)) = &f.config_type {
                    metric_overrides = stats_overrides(any).map_err(|e| ctx(ConfigError::new(format!("HTTP filter istio.stats: {e}"))))?.map(Arc::new);
                }
            }
            (_, "envoy.extensions.filters.http.cors.v3.Cors") => cors = true,
            (name, JWT_AUTHN) => {
                let Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(any)) = &f.config_type else { continue };
                let config: JwtAuthentication = unpack(any, JWT_AUTHN)?;
                jwt = Some(compile_jwt(&config).map_err(|e| ctx(e.context(format!("HTTP filter {name}"))))?);
            }
            (name, HTTP_RBAC) => {
                let Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(any)) = &f.config_type else { continue };
                let config: HttpRbac = unpack(any, HTTP_RBAC)?;
                rbac.extend(
                    compile_rbac(config.rules.as_ref()).map_err(|e| ctx(e.context(format!("HTTP filter {name}"))))?,
                );
            }
            _ if f.is_optional => {}
            (name, t) => return Err(ctx(ConfigError::new(format!("HTTP filter {name} ({t}) is not supported")))),
        }
    }
    if !router {
        return Err(ctx(ConfigError::new("the HTTP filter chain must end with the router filter")));
    }
    let codec = match http_connection_manager::CodecType::try_from(h.codec_type) {
        Ok(http_connection_manager::CodecType::Http1) => Codec::Http1,
        Ok(http_connection_manager::CodecType::Http2) => Codec::Http2,
        Ok(http_connection_manager::CodecType::Auto) => Codec::Auto,
        _ => return Err(ctx(ConfigError::new(format!("codec type {} is not supported", h.codec_type)))),
    };
    let common = h.common_http_protocol_options.unwrap_or_default();
    Ok(HttpSpec {
        stat_prefix: h.stat_prefix.clone(),
        reporter,
        access_logs: crate::access_log::AccessLogs::from_envoy(&h.access_log).map_err(ctx)?,
        metrics,
        metric_overrides,
        tracing: match &h.tracing {
            Some(t) => crate::trace::Tracer::from_envoy(t, reporter == Reporter::Destination)
                .map_err(|e| ctx(e.context("tracing")))?
                .map(Arc::new),
            None => None,
        },
        routes,
        fault,
        cors,
        codec,
        max_headers_bytes: h.max_request_headers_kb.as_ref().map_or(DEFAULT_MAX_HEADERS_KB, |v| v.value.clamp(1, 8192))
            as usize
            * 1024,
        idle_timeout: common
            .idle_timeout
            .as_ref()
            .map_or(Some(Duration::from_secs(3600)), |d| Some(duration(d)).filter(|d| !d.is_zero())),
        headers_timeout: h.request_headers_timeout.as_ref().map(duration).filter(|d| !d.is_zero()),
        upgrades: h
            .upgrade_configs
            .iter()
            .filter(|u| u.enabled.as_ref().is_none_or(|e| e.value))
            .map(|u| u.upgrade_type.to_ascii_lowercase())
            .collect(),
        rbac,
        jwt,
        normalize_path: h.normalize_path.as_ref().is_some_and(|b| b.value),
        merge_slashes: h.merge_slashes,
        retired: std::sync::atomic::AtomicBool::new(false),
        retire_notify: tokio::sync::Notify::new(),
        forward_client_cert: {
            use http_connection_manager::ForwardClientCertDetails as F;
            match F::try_from(h.forward_client_cert_details).unwrap_or(F::Sanitize) {
                F::Sanitize => ForwardClientCert::Sanitize,
                F::ForwardOnly => ForwardClientCert::ForwardOnly,
                F::AppendForward => ForwardClientCert::AppendForward,
                F::SanitizeSet => ForwardClientCert::SanitizeSet,
                F::AlwaysForwardOnly => ForwardClientCert::AlwaysForwardOnly,
            }
        },
        stream_idle_timeout: h
            .stream_idle_timeout
            .as_ref()
            .map_or(Some(Duration::from_secs(300)), |d| Some(duration(d)).filter(|d| !d.is_zero())),
    })
}

/// The stats filter's overrides of the request metrics.
fn stats_overrides(
    any: &envoy_types::pb::google::protobuf::Any,
) -> Result<Option<crate::telemetry::overrides::Overrides>, String> {
    match stats_config(any)? {
        Some(config) => crate::telemetry::overrides::Overrides::compile(&config, &weft_envoy::stats::HTTP_METRICS),
        None => Ok(None),
    }
}

/// The stats filter's configuration: a `Struct` shaped as Istio's `stats.PluginConfig`.
fn stats_config(
    any: &envoy_types::pb::google::protobuf::Any,
) -> Result<Option<weft_envoy::stats::StatsConfig>, String> {
    use envoy_types::pb::google::protobuf::Struct;
    use prost::Message;
    if !any.type_url.ends_with("google.protobuf.Struct") {
        // Another control plane's typed form (`stats.PluginConfig`): Istio's metrics,
        // without overrides.
        tracing::debug!("istio.stats configuration {} is not read; metrics keep Istio's defaults", any.type_url);
        return Ok(None);
    }
    let config = Struct::decode(any.value.as_slice()).map_err(|e| e.to_string())?;
    weft_envoy::stats::StatsConfig::from_struct(&config).map(Some)
}

fn compile_tcp(t: &TcpProxy, reporter: Reporter) -> Result<TcpSpec, ConfigError> {
    let clusters = match &t.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => vec![(c.clone(), 1)],
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
            let list: Vec<(String, u32)> = w.clusters.iter().map(|c| (c.name.clone(), c.weight)).collect();
            if list.iter().all(|(_, w)| *w == 0) {
                return Err(ConfigError::new("weighted clusters must have a positive total weight"));
            }
            list
        }
        None => return Err(ConfigError::new(format!("tcp proxy {} names no cluster", t.stat_prefix))),
    };
    Ok(TcpSpec {
        stat_prefix: t.stat_prefix.clone(),
        reporter,
        clusters,
        idle_timeout: t
            .idle_timeout
            .as_ref()
            .map_or(Some(DEFAULT_TCP_IDLE), |d| Some(duration(d)).filter(|d| !d.is_zero())),
        metric_overrides: None,
    })
}
