//! Counters, named as Envoy names them, so `/stats` reads the way users expect.
//! Counters are looked up once per connection, never per request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters of one HTTP connection manager (`http.<stat_prefix>.*`).
#[derive(Debug, Default)]
pub struct HttpStats {
    /// `downstream_cx_total`.
    pub cx_total: AtomicU64,
    /// `downstream_cx_active`.
    pub cx_active: AtomicU64,
    /// `downstream_rq_total`.
    pub rq_total: AtomicU64,
    /// `downstream_rq_active`.
    pub rq_active: AtomicU64,
    /// `downstream_rq_1xx` … `downstream_rq_5xx` (index 1 to 5).
    pub rq_by_class: [AtomicU64; 6],
    /// `no_route`.
    pub no_route: AtomicU64,
}

/// Counters of one TCP proxy (`tcp.<stat_prefix>.*`).
#[derive(Debug, Default)]
pub struct TcpStats {
    /// `downstream_cx_total`.
    pub cx_total: AtomicU64,
    /// `downstream_cx_active`.
    pub cx_active: AtomicU64,
    /// `downstream_cx_tx_bytes_total`.
    pub tx_bytes: AtomicU64,
    /// `downstream_cx_rx_bytes_total`.
    pub rx_bytes: AtomicU64,
    /// `upstream_flush_total` is not kept; `downstream_cx_no_route`.
    pub no_route: AtomicU64,
}

/// Counters of the xDS client (`control_plane.*` and per type `update_*`).
#[derive(Debug, Default)]
pub struct XdsStats {
    /// `control_plane.connected_state`.
    pub connected: AtomicU64,
    /// Updates accepted.
    pub update_success: AtomicU64,
    /// Updates rejected (NACKed).
    pub update_rejected: AtomicU64,
    /// Streams opened.
    pub streams: AtomicU64,
}

/// Every counter of the proxy.
#[derive(Debug, Default)]
pub struct Stats {
    http: Mutex<BTreeMap<String, Arc<HttpStats>>>,
    tcp: Mutex<BTreeMap<String, Arc<TcpStats>>>,
    /// xDS.
    pub xds: XdsStats,
    /// `listener_manager.listener_create_failure`.
    pub listener_create_failure: AtomicU64,
    /// Downstream TLS handshakes that failed (Envoy's `ssl.connection_error`).
    pub ssl_handshake_error: AtomicU64,
    /// Requests and connections refused by RBAC (Envoy's `rbac.denied`).
    pub rbac_denied: AtomicU64,
}

impl Stats {
    /// The counters of an HTTP connection manager.
    pub fn http(&self, prefix: &str) -> Arc<HttpStats> {
        let Ok(mut map) = self.http.lock() else { return Arc::default() };
        map.entry(prefix.to_owned()).or_default().clone()
    }

    /// The counters of a TCP proxy.
    pub fn tcp(&self, prefix: &str) -> Arc<TcpStats> {
        let Ok(mut map) = self.tcp.lock() else { return Arc::default() };
        map.entry(prefix.to_owned()).or_default().clone()
    }

    /// Every HTTP and TCP counter as `name: value` pairs.
    pub fn lines(&self) -> Vec<(String, u64)> {
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = Vec::new();
        if let Ok(map) = self.http.lock() {
            for (p, s) in map.iter() {
                out.push((format!("http.{p}.downstream_cx_total"), v(&s.cx_total)));
                out.push((format!("http.{p}.downstream_cx_active"), v(&s.cx_active)));
                out.push((format!("http.{p}.downstream_rq_total"), v(&s.rq_total)));
                out.push((format!("http.{p}.downstream_rq_active"), v(&s.rq_active)));
                for class in 1..6 {
                    out.push((format!("http.{p}.downstream_rq_{class}xx"), v(&s.rq_by_class[class])));
                }
                out.push((format!("http.{p}.no_route"), v(&s.no_route)));
            }
        }
        if let Ok(map) = self.tcp.lock() {
            for (p, s) in map.iter() {
                out.push((format!("tcp.{p}.downstream_cx_total"), v(&s.cx_total)));
                out.push((format!("tcp.{p}.downstream_cx_active"), v(&s.cx_active)));
                out.push((format!("tcp.{p}.downstream_cx_tx_bytes_total"), v(&s.tx_bytes)));
                out.push((format!("tcp.{p}.downstream_cx_rx_bytes_total"), v(&s.rx_bytes)));
                out.push((format!("tcp.{p}.downstream_cx_no_route"), v(&s.no_route)));
            }
        }
        out.push(("control_plane.connected_state".into(), v(&self.xds.connected)));
        out.push(("weft.xds.update_success".into(), v(&self.xds.update_success)));
        out.push(("weft.xds.update_rejected".into(), v(&self.xds.update_rejected)));
        out.push(("weft.xds.streams_opened".into(), v(&self.xds.streams)));
        out.push(("listener_manager.listener_create_failure".into(), v(&self.listener_create_failure)));
        out.push(("listener.ssl.connection_error".into(), v(&self.ssl_handshake_error)));
        out.push(("rbac.denied".into(), v(&self.rbac_denied)));
        out
    }
}
