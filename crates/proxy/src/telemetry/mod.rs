//! Istio's standard metrics, with Istio's names, types, buckets and labels, so Kiali and
//! the Istio dashboards read weft's proxies unchanged: `istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes`
//! and the `istio_tcp_*` family, served in the Prometheus (OpenMetrics) text format
//! beside the proxy's own counters.
//!
//! A proxy knows its own workload from its node metadata; the other side's crosses the
//! hop as Istio's sidecars carry it, in the `x-envoy-peer-metadata` (a base64 protobuf
//! `Struct`) and `x-envoy-peer-metadata-id` headers: the client's sidecar adds them to
//! requests to services in the mesh, the server's sidecar reads and removes them and
//! answers with its own, which the client's sidecar reads and removes in turn. The
//! application never sees them.
//!
//! Cardinality stays bounded: label values come from configuration (workloads,
//! services) or small sets (codes, flags); peers learnt from headers are interned up to
//! [`MAX_PEERS`], and later unknown ones are reported as `unknown`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine;
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, LabelSetEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use prost::Message;

pub mod overrides;

use crate::config::NodeInfo;
use crate::reply::Flags;

/// The header carrying a proxy's workload metadata.
pub const PEER_METADATA: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");
/// The header carrying a proxy's node id.
pub const PEER_METADATA_ID: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");
/// At most this many distinct peers are remembered; later ones count as `unknown`.
pub const MAX_PEERS: usize = 1024;
const UNKNOWN: &str = "unknown";

/// Istio's request duration buckets, in milliseconds.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// Which side of the call reports: Istio's `reporter` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Reporter {
    /// The client's proxy (outbound listeners and gateways).
    #[default]
    Source,
    /// The server's proxy (inbound listeners).
    Destination,
}

/// A workload as Istio's metric labels name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Workload {
    /// `source_workload` / `destination_workload`.
    pub name: String,
    /// `*_workload_namespace`.
    pub namespace: String,
    /// `*_app`.
    pub app: String,
    /// `*_version`.
    pub version: String,
    /// `*_canonical_service`.
    pub canonical_service: String,
    /// `*_canonical_revision`.
    pub canonical_revision: String,
    /// `*_cluster`.
    pub cluster: String,
}

impl Workload {
    /// The workload nobody knows.
    pub fn unknown() -> Arc<Workload> {
        static UNKNOWN_WORKLOAD: OnceLock<Arc<Workload>> = OnceLock::new();
        UNKNOWN_WORKLOAD
            .get_or_init(|| {
                Arc::new(Workload {
                    name: UNKNOWN.into(),
                    namespace: UNKNOWN.into(),
                    app: UNKNOWN.into(),
                    version: UNKNOWN.into(),
                    canonical_service: UNKNOWN.into(),
                    canonical_revision: UNKNOWN.into(),
                    cluster: UNKNOWN.into(),
                })
            })
            .clone()
    }

    /// A workload from its name, namespace, labels and cluster, with Istio's fallbacks
    /// for the canonical service (`service.istio.io/canonical-name`,
    /// `app.kubernetes.io/name`, `app`, the workload's name) and revision
    /// (`service.istio.io/canonical-revision`, `app.kubernetes.io/version`, `version`,
    /// `latest`).
    pub fn new(name: &str, namespace: &str, labels: &[(String, String)], cluster: &str) -> Workload {
        let label =
            |keys: &[&str]| keys.iter().find_map(|k| labels.iter().find(|(lk, _)| lk == k).map(|(_, v)| v.clone()));
        let or_unknown = |s: &str| if s.is_empty() { UNKNOWN.to_owned() } else { s.to_owned() };
        Workload {
            name: or_unknown(name),
            namespace: or_unknown(namespace),
            app: label(&["app"]).unwrap_or_else(|| UNKNOWN.into()),
            version: label(&["version"]).unwrap_or_else(|| UNKNOWN.into()),
            canonical_service: label(&["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"])
                .unwrap_or_else(|| or_unknown(name)),
            canonical_revision: label(&["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"])
                .unwrap_or_else(|| "latest".into()),
            cluster: or_unknown(cluster),
        }
    }
}

/// The service a request is for: `destination_service`, `_name`, `_namespace`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    /// `reviews.default.svc.cluster.local`.
    pub host: String,
    /// `reviews`.
    pub name: String,
    /// `default`.
    pub namespace: String,
}

impl Service {
    /// A service known only by a host name (a service outside the registry, or the
    /// request's `Host`): Istio reports the host as the name.
    pub fn from_host(host: &str) -> Service {
        let host = if host.is_empty() { UNKNOWN } else { host };
        Service { host: host.into(), name: host.into(), namespace: UNKNOWN.into() }
    }

    /// The service nobody knows.
    pub fn unknown() -> Arc<Service> {
        static UNKNOWN_SERVICE: OnceLock<Arc<Service>> = OnceLock::new();
        UNKNOWN_SERVICE.get_or_init(|| Arc::new(Service::from_host(UNKNOWN))).clone()
    }
}

/// The labels of one series of Istio's standard metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    /// `reporter`.
    pub reporter: Reporter,
    /// The client.
    pub source: Arc<Workload>,
    /// `source_principal`.
    pub source_principal: Arc<str>,
    /// The server.
    pub destination: Arc<Workload>,
    /// `destination_principal`.
    pub destination_principal: Arc<str>,
    /// `destination_service*`.
    pub service: Arc<Service>,
    /// `request_protocol`: `http`, `grpc` or `tcp`.
    pub protocol: &'static str,
    /// `response_code` (HTTP).
    pub code: u16,
    /// `grpc_response_status` (gRPC).
    pub grpc_status: Option<u16>,
    /// `response_flags`.
    pub flags: Flags,
    /// `connection_security_policy`: `mutual_tls`, `none` or `unknown`.
    pub security: &'static str,
}

/// Every request looks its series up by these labels: hashing each workload's and the
/// service's every string would cost more than the rest of the lookup. Equal labels have
/// equal names, so hashing the names alone keeps `Hash` consistent with `Eq`; labels
/// that differ only elsewhere share a bucket, which `Eq` then tells apart (the `Arc`s are
/// mostly the same ones, and those compare by address first).
impl std::hash::Hash for Labels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.reporter.hash(state);
        self.source.name.hash(state);
        self.destination.name.hash(state);
        self.service.host.hash(state);
        self.code.hash(state);
        self.grpc_status.hash(state);
        self.flags.hash(state);
    }
}

impl EncodeLabelSet for Labels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        self.each(|_, key, value| (key, value).encode(encoder.encode_label()))
    }
}

impl Labels {
    /// Calls `f` with each standard label (its index in Istio's order, its name, its
    /// value); TCP metrics have no `response_code` or `grpc_response_status`.
    pub(crate) fn each(
        &self,
        mut f: impl FnMut(usize, &'static str, &str) -> Result<(), std::fmt::Error>,
    ) -> Result<(), std::fmt::Error> {
        let reporter = match self.reporter {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        };
        let (s, d) = (&self.source, &self.destination);
        let code = if self.protocol == "tcp" { String::new() } else { self.code.to_string() };
        let grpc = self.grpc_status.map(|g| g.to_string());
        let flags = self.flags.text();
        let pairs: [(&str, &str); 25] = [
            ("reporter", reporter),
            ("source_workload", &s.name),
            ("source_canonical_service", &s.canonical_service),
            ("source_canonical_revision", &s.canonical_revision),
            ("source_workload_namespace", &s.namespace),
            ("source_principal", &self.source_principal),
            ("source_app", &s.app),
            ("source_version", &s.version),
            ("source_cluster", &s.cluster),
            ("destination_workload", &d.name),
            ("destination_workload_namespace", &d.namespace),
            ("destination_principal", &self.destination_principal),
            ("destination_app", &d.app),
            ("destination_version", &d.version),
            ("destination_service", &self.service.host),
            ("destination_canonical_service", &d.canonical_service),
            ("destination_canonical_revision", &d.canonical_revision),
            ("destination_service_name", &self.service.name),
            ("destination_service_namespace", &self.service.namespace),
            ("destination_cluster", &d.cluster),
            ("request_protocol", self.protocol),
            ("response_code", &code),
            ("grpc_response_status", grpc.as_deref().unwrap_or("")),
            ("response_flags", &flags),
            ("connection_security_policy", self.security),
        ];
        for (i, (key, value)) in pairs.into_iter().enumerate() {
            // Istio's TCP metrics have no response code or gRPC status.
            if self.protocol == "tcp" && matches!(key, "response_code" | "grpc_response_status") {
                continue;
            }
            f(i, key, value)?;
        }
        Ok(())
    }
}

fn size_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1.0, 10.0, 8))
}

/// `unknown`, shared.
pub fn unknown_principal() -> Arc<str> {
    static UNKNOWN_PRINCIPAL: OnceLock<Arc<str>> = OnceLock::new();
    UNKNOWN_PRINCIPAL.get_or_init(|| Arc::from(UNKNOWN)).clone()
}

/// The four request metrics of one label set, found with one lookup per request.
#[derive(Debug)]
struct Series {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
    /// The metrics that have counted something (bit `i`: `HTTP_METRICS[i]`); only those
    /// are written, so a metric an override drops shows no empty series.
    families: std::sync::atomic::AtomicU8,
}

impl Default for Series {
    fn default() -> Series {
        Series::new()
    }
}

impl Series {
    fn encode(&self, family: usize, encoder: prometheus_client::encoding::MetricEncoder<'_>) -> std::fmt::Result {
        match family {
            0 => self.requests.encode(encoder),
            1 => self.duration.encode(encoder),
            2 => self.request_bytes.encode(encoder),
            _ => self.response_bytes.encode(encoder),
        }
    }

    /// Counts a request in the metrics `families` (bit `i`: `HTTP_METRICS[i]`).
    fn observe(&self, r: &Request, families: u8) {
        if self.families.load(std::sync::atomic::Ordering::Relaxed) & families != families {
            self.families.fetch_or(families, std::sync::atomic::Ordering::Relaxed);
        }
        if families & 1 != 0 {
            self.requests.inc();
        }
        if families & 2 != 0 {
            self.duration.observe(r.duration.as_secs_f64() * 1000.0);
        }
        if families & 4 != 0 {
            self.request_bytes.observe(r.request_bytes as f64);
        }
        if families & 8 != 0 {
            self.response_bytes.observe(r.response_bytes as f64);
        }
    }

    fn new() -> Series {
        Series {
            requests: Counter::default(),
            duration: Histogram::new(DURATION_BUCKETS),
            request_bytes: size_histogram(),
            response_bytes: size_histogram(),
            families: std::sync::atomic::AtomicU8::new(0),
        }
    }

    fn counts(&self, family: usize) -> bool {
        self.families.load(std::sync::atomic::Ordering::Relaxed) & (1 << family) != 0
    }
}

type SeriesMap = std::sync::RwLock<HashMap<Labels, Arc<Series>, foldhash::fast::RandomState>>;
type OverriddenMap = std::sync::RwLock<HashMap<overrides::Key, Arc<Series>, foldhash::fast::RandomState>>;

/// Most series of overridden metrics kept: added labels can take many values (a path, a
/// header), and a proxy's memory must stay bounded. Requests of new series beyond it are
/// not counted (`istio_overridden_series_dropped_total` counts them).
const MAX_OVERRIDDEN_SERIES: usize = 10_000;

/// The series of `key` in `map`, created if new (unless the map holds `limit` already).
fn series_in<K, S>(
    map: &std::sync::RwLock<HashMap<K, Arc<S>, foldhash::fast::RandomState>>,
    key: &K,
    limit: Option<usize>,
) -> Option<Arc<S>>
where
    K: std::hash::Hash + Eq + Clone,
    S: Default,
{
    if let Some(found) = map.read().ok()?.get(key) {
        return Some(found.clone());
    }
    let mut map = map.write().ok()?;
    if let Some(found) = map.get(key) {
        return Some(found.clone());
    }
    if limit.is_some_and(|l| map.len() >= l) {
        return None;
    }
    Some(map.entry(key.clone()).or_default().clone())
}

/// The four TCP metrics of one label set.
#[derive(Debug, Default)]
struct TcpSeries {
    sent: Counter,
    received: Counter,
    opened: Counter,
    closed: Counter,
    /// The metrics that have counted something (bit `i`: `TCP_METRICS[i]`).
    families: std::sync::atomic::AtomicU8,
}

impl TcpSeries {
    fn mark(&self, families: u8) {
        if self.families.load(std::sync::atomic::Ordering::Relaxed) & families != families {
            self.families.fetch_or(families, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn counts(&self, family: usize) -> bool {
        self.families.load(std::sync::atomic::Ordering::Relaxed) & (1 << family) != 0
    }
}

type TcpMap = std::sync::RwLock<HashMap<Labels, Arc<TcpSeries>, foldhash::fast::RandomState>>;
type TcpOverriddenMap = std::sync::RwLock<HashMap<overrides::Key, Arc<TcpSeries>, foldhash::fast::RandomState>>;

/// Encodes the TCP metrics from their maps (plain and overridden), as four families.
#[derive(Debug)]
struct TcpMetrics(Arc<TcpMap>, Arc<TcpOverriddenMap>);

impl Collector for TcpMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(map) = self.0.read() else { return Ok(()) };
        let Ok(overridden) = self.1.read() else { return Ok(()) };
        let families: [(&str, &str); 4] = [
            ("istio_tcp_sent_bytes", "Bytes sent to the downstream during TCP connections"),
            ("istio_tcp_received_bytes", "Bytes received from the downstream during TCP connections"),
            ("istio_tcp_connections_opened", "TCP connections opened"),
            ("istio_tcp_connections_closed", "TCP connections closed"),
        ];
        for (i, (name, help)) in families.into_iter().enumerate() {
            let plain = map.iter().filter(|(_, s)| s.counts(i));
            let mine = overridden.iter().filter(|(_, s)| s.counts(i));
            if plain.clone().next().is_none() && mine.clone().next().is_none() {
                continue;
            }
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            let counter = |s: &TcpSeries| match i {
                0 => s.sent.get(),
                1 => s.received.get(),
                2 => s.opened.get(),
                _ => s.closed.get(),
            };
            for (labels, series) in plain {
                ConstCounter::new(counter(series)).encode(metric.encode_family(labels)?)?;
            }
            for (key, series) in mine {
                ConstCounter::new(counter(series)).encode(metric.encode_family(key)?)?;
            }
        }
        Ok(())
    }
}

/// Encodes the request metrics from their maps (plain and overridden), as four metric
/// families.
#[derive(Debug)]
struct RequestMetrics(Arc<SeriesMap>, Arc<OverriddenMap>);

impl Collector for RequestMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(map) = self.0.read() else { return Ok(()) };
        let Ok(overridden) = self.1.read() else { return Ok(()) };
        let families: [(&str, &str, MetricType); 4] = [
            ("istio_requests", "Requests, by Istio's standard labels", MetricType::Counter),
            ("istio_request_duration_milliseconds", "Request duration in milliseconds", MetricType::Histogram),
            ("istio_request_bytes", "Request size (headers and body) in bytes", MetricType::Histogram),
            ("istio_response_bytes", "Response size (headers and body) in bytes", MetricType::Histogram),
        ];
        for (i, (name, help, kind)) in families.into_iter().enumerate() {
            let plain = map.iter().filter(|(_, s)| s.counts(i));
            let mine = overridden.iter().filter(|(_, s)| s.counts(i));
            if plain.clone().next().is_none() && mine.clone().next().is_none() {
                continue;
            }
            let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
            for (labels, series) in plain {
                series.encode(i, metric.encode_family(labels)?)?;
            }
            for (key, series) in mine {
                series.encode(i, metric.encode_family(key)?)?;
            }
        }
        Ok(())
    }
}

/// One finished HTTP request, as the metrics count it.
#[derive(Debug)]
pub struct Request {
    /// Its labels.
    pub labels: Labels,
    /// From the first byte in to the last byte out.
    pub duration: std::time::Duration,
    /// Headers and body received.
    pub request_bytes: u64,
    /// Headers and body sent.
    pub response_bytes: u64,
}

/// The proxy's own workload, as its peers see it.
#[derive(Debug)]
struct Own {
    workload: Arc<Workload>,
    id: HeaderValue,
    metadata: HeaderValue,
}

/// Istio's standard metrics of one proxy, and its side of the peer metadata exchange.
#[derive(Debug)]
pub struct IstioMetrics {
    registry: Registry,
    series: Arc<SeriesMap>,
    overridden: Arc<OverriddenMap>,
    overridden_dropped: Counter,
    tcp: Arc<TcpMap>,
    tcp_overridden: Arc<TcpOverriddenMap>,
    own: Own,
    peers: Mutex<HashMap<bytes::Bytes, Arc<Workload>, foldhash::fast::RandomState>>,
    hosts: Mutex<HashMap<String, Arc<Service>>>,
}

impl IstioMetrics {
    /// The metrics of the proxy whose node is `node`.
    pub fn new(node: &NodeInfo) -> IstioMetrics {
        let cluster = if node.cluster_id.is_empty() { "Kubernetes" } else { &node.cluster_id };
        let workload = Workload::new(&node.workload_name, &node.namespace, &node.labels, cluster);
        let own = Own {
            id: HeaderValue::from_str(&node.id).unwrap_or_else(|_| HeaderValue::from_static(UNKNOWN)),
            metadata: HeaderValue::from_str(&encode_metadata(node, cluster))
                .unwrap_or_else(|_| HeaderValue::from_static("")),
            workload: Arc::new(workload),
        };
        let mut registry = Registry::default();
        let series = Arc::new(SeriesMap::default());
        let overridden = Arc::new(OverriddenMap::default());
        registry.register_collector(Box::new(RequestMetrics(series.clone(), overridden.clone())));
        let overridden_dropped = Counter::default();
        registry.register(
            "istio_overridden_series_dropped",
            "Requests not counted: their overridden metric series would pass the proxy's limit",
            overridden_dropped.clone(),
        );
        let (tcp, tcp_overridden) = (Arc::new(TcpMap::default()), Arc::new(TcpOverriddenMap::default()));
        registry.register_collector(Box::new(TcpMetrics(tcp.clone(), tcp_overridden.clone())));
        IstioMetrics {
            registry,
            series,
            overridden,
            overridden_dropped,
            tcp,
            tcp_overridden,
            own,
            peers: Mutex::new(HashMap::default()),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// This proxy's workload.
    pub fn own(&self) -> &Arc<Workload> {
        &self.own.workload
    }

    /// Adds this proxy's metadata to a request or response for the peer.
    pub fn offer(&self, headers: &mut HeaderMap) {
        headers.insert(PEER_METADATA_ID, self.own.id.clone());
        headers.insert(PEER_METADATA, self.own.metadata.clone());
    }

    /// Takes the peer's metadata out of `headers`: the workload it describes, if the
    /// peer sent any.
    pub fn take_peer(&self, headers: &mut HeaderMap) -> Option<Arc<Workload>> {
        headers.remove(PEER_METADATA_ID);
        let value = headers.remove(PEER_METADATA)?;
        Some(self.peer(value.as_bytes()))
    }

    /// The workload a peer-metadata value describes (`unknown` when it cannot be read).
    pub fn peer(&self, value: &[u8]) -> Arc<Workload> {
        let Ok(mut peers) = self.peers.lock() else { return Workload::unknown() };
        if let Some(known) = peers.get(value) {
            return known.clone();
        }
        let workload = decode_metadata(value).map_or_else(Workload::unknown, Arc::new);
        if peers.len() < MAX_PEERS {
            // A copy: the value is often a slice of the whole buffer the message was read
            // into (8 KB and more), which a kept slice would hold for good.
            peers.insert(bytes::Bytes::copy_from_slice(value), workload.clone());
            workload
        } else {
            Workload::unknown()
        }
    }

    /// The service a request names by its host alone (it reached no cluster), remembered
    /// up to [`MAX_PEERS`] hosts; later ones are `unknown`.
    pub fn service_for_host(&self, host: &str) -> Arc<Service> {
        let Ok(mut hosts) = self.hosts.lock() else { return Service::unknown() };
        if let Some(known) = hosts.get(host) {
            return known.clone();
        }
        if hosts.len() >= MAX_PEERS {
            return Service::unknown();
        }
        let service = Arc::new(Service::from_host(host));
        hosts.insert(host.to_owned(), service.clone());
        service
    }

    /// Counts a finished HTTP request.
    pub fn record(&self, r: Request) {
        if let Some(series) = series_in(&self.series, &r.labels, None) {
            series.observe(&r, 0b1111);
        }
    }

    /// Counts a finished HTTP request under metric overrides.
    pub fn record_overridden(&self, r: Request, o: &overrides::Overrides, finished: &overrides::Finished<'_>) {
        for group in o.groups() {
            // A group that keeps Istio's labels counts with the plain series, so that the
            // same labels never make two series.
            if group.is_plain() {
                if let Some(series) = series_in(&self.series, &r.labels, None) {
                    series.observe(&r, group.families);
                }
                continue;
            }
            let key = overrides::Key::new(group, &r.labels, finished);
            match series_in(&self.overridden, &key, Some(MAX_OVERRIDDEN_SERIES)) {
                Some(series) => series.observe(&r, group.families),
                None => {
                    self.overridden_dropped.inc();
                }
            }
        }
    }

    /// Counts a TCP connection opening, under `overrides` when its chain has them.
    pub fn tcp_opened(&self, labels: &Labels, overrides: Option<(&overrides::Overrides, &overrides::Finished<'_>)>) {
        self.tcp_each(labels, overrides, |series, families| {
            if families & 4 != 0 {
                series.opened.inc();
            }
        });
    }

    /// Counts a TCP connection closing, with the bytes it carried.
    pub fn tcp_closed(
        &self,
        labels: &Labels,
        sent: u64,
        received: u64,
        overrides: Option<(&overrides::Overrides, &overrides::Finished<'_>)>,
    ) {
        self.tcp_each(labels, overrides, |series, families| {
            if families & 1 != 0 {
                series.sent.inc_by(sent);
            }
            if families & 2 != 0 {
                series.received.inc_by(received);
            }
            if families & 8 != 0 {
                series.closed.inc();
            }
        });
    }

    /// Calls `f` with each series a TCP connection counts in, and the metrics it counts
    /// there (bit `i`: `TCP_METRICS[i]`).
    fn tcp_each(
        &self,
        labels: &Labels,
        overrides: Option<(&overrides::Overrides, &overrides::Finished<'_>)>,
        mut f: impl FnMut(&TcpSeries, u8),
    ) {
        let Some((o, finished)) = overrides else {
            if let Some(series) = series_in(&self.tcp, labels, None) {
                series.mark(0b1111);
                f(&series, 0b1111);
            }
            return;
        };
        for group in o.groups() {
            if group.is_plain() {
                if let Some(series) = series_in(&self.tcp, labels, None) {
                    series.mark(group.families);
                    f(&series, group.families);
                }
                continue;
            }
            let key = overrides::Key::new(group, labels, finished);
            match series_in(&self.tcp_overridden, &key, Some(MAX_OVERRIDDEN_SERIES)) {
                Some(series) => {
                    series.mark(group.families);
                    f(&series, group.families)
                }
                None => {
                    self.overridden_dropped.inc();
                }
            };
        }
    }

    /// The Prometheus text of Istio's metrics followed by the proxy's own counters
    /// (`counters`, Envoy's names), as `/stats/prometheus` serves it.
    pub fn prometheus(&self, counters: Vec<Stat>) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut own = Registry::default();
        own.register_collector(Box::new(EnvoyCounters(counters)));
        let mut out = String::new();
        let written =
            encode_registry(&mut out, &self.registry).and(encode_registry(&mut out, &own)).and(encode_eof(&mut out));
        if written.is_err() {
            tracing::warn!("encoding metrics failed");
        }
        out
    }
}

/// The node's metadata as Istio's sidecars exchange it: a base64 protobuf `Struct`.
fn encode_metadata(node: &NodeInfo, cluster: &str) -> String {
    let text = |s: &str| Value { kind: Some(value::Kind::StringValue(s.to_owned())) };
    let labels = node.labels.iter().map(|(k, v)| (k.clone(), text(v))).collect();
    let mut fields: BTreeMap<String, Value> = BTreeMap::new();
    fields.insert("NAME".into(), text(&node.workload_name));
    fields.insert("WORKLOAD_NAME".into(), text(&node.workload_name));
    fields.insert("NAMESPACE".into(), text(&node.namespace));
    fields.insert("CLUSTER_ID".into(), text(cluster));
    fields.insert("SERVICE_ACCOUNT".into(), text(&node.service_account));
    fields.insert("LABELS".into(), Value { kind: Some(value::Kind::StructValue(Struct { fields: labels })) });
    let s = Struct { fields: fields.into_iter().collect() };
    base64::engine::general_purpose::STANDARD.encode(s.encode_to_vec())
}

/// A peer's workload from its `x-envoy-peer-metadata`.
fn decode_metadata(value: &[u8]) -> Option<Workload> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(value).ok()?;
    let s = Struct::decode(bytes.as_slice()).ok()?;
    let text = |key: &str| match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(value::Kind::StringValue(v)) => v.clone(),
        _ => String::new(),
    };
    let labels: Vec<(String, String)> = match s.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        Some(value::Kind::StructValue(l)) => l
            .fields
            .iter()
            .filter_map(|(k, v)| match &v.kind {
                Some(value::Kind::StringValue(v)) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let name = Some(text("WORKLOAD_NAME")).filter(|n| !n.is_empty()).unwrap_or_else(|| text("NAME"));
    Some(Workload::new(&name, &text("NAMESPACE"), &labels, &text("CLUSTER_ID")))
}

/// One of the proxy's own counters or gauges in Prometheus form, named as Envoy's
/// `/stats/prometheus` names it: `http.<prefix>.downstream_rq_total` is
/// `envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="<prefix>"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    /// `envoy_http_downstream_rq_total`.
    pub name: String,
    /// Labels taken out of the dotted name.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: u64,
}

impl Stat {
    /// A stat by its dotted Envoy name.
    pub fn from_envoy(stat: &str, value: u64) -> Stat {
        let tagged = |kind: &str, rest: &str, tag: &'static str| match rest.rsplit_once('.') {
            Some((prefix, leaf)) => (format!("{kind}_{leaf}"), vec![(tag, prefix.to_owned())]),
            None => (format!("{kind}_{rest}"), Vec::new()),
        };
        let (name, labels) = match stat.split_once('.') {
            Some(("http", rest)) => tagged("http", rest, "envoy_http_conn_manager_prefix"),
            Some(("tcp", rest)) => tagged("tcp", rest, "envoy_tcp_prefix"),
            _ => (stat.to_owned(), Vec::new()),
        };
        Stat::new(&name, labels, value)
    }

    /// A stat of one cluster (`cluster.<name>.<leaf>`).
    pub fn cluster(cluster: &str, leaf: &str, value: u64) -> Stat {
        Stat::new(&format!("cluster_{leaf}"), vec![("envoy_cluster_name", cluster.to_owned())], value)
    }

    fn new(name: &str, labels: Vec<(&'static str, String)>, value: u64) -> Stat {
        let name = format!("envoy_{}", name.replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_"));
        Stat { name, labels, value }
    }
}

#[derive(Debug)]
struct EnvoyCounters(Vec<Stat>);

impl Collector for EnvoyCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut by_name: BTreeMap<&str, Vec<&Stat>> = BTreeMap::new();
        for stat in &self.0 {
            by_name.entry(&stat.name).or_default().push(stat);
        }
        for (name, series) in by_name {
            // Envoy's gauges: what is open, active or connected now.
            let gauge = name.ends_with("_active") || name.ends_with("connected_state") || name.ends_with("_info");
            let (name, kind) = if gauge {
                (name, MetricType::Gauge)
            } else {
                (name.strip_suffix("_total").unwrap_or(name), MetricType::Counter)
            };
            let mut metric = encoder.encode_descriptor(name, "", None, kind)?;
            for stat in series {
                let family = metric.encode_family(&stat.labels)?;
                if gauge {
                    ConstGauge::new(i64::try_from(stat.value).unwrap_or(i64::MAX)).encode(family)?;
                } else {
                    ConstCounter::new(stat.value).encode(family)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: &[(&str, &str)]) -> NodeInfo {
        NodeInfo {
            id: format!("sidecar~127.0.0.1~{name}.default~default.svc.cluster.local"),
            namespace: "default".into(),
            workload_name: name.into(),
            service_account: name.into(),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn metadata_crosses_the_hop_and_leaves_the_headers() {
        let client = IstioMetrics::new(&node("productpage-v1", &[("app", "productpage"), ("version", "v1")]));
        let server = IstioMetrics::new(&node("reviews-v2", &[("app", "reviews")]));
        let mut headers = HeaderMap::new();
        client.offer(&mut headers);
        let peer = server.take_peer(&mut headers).unwrap_or_else(Workload::unknown);
        assert!(headers.is_empty(), "the exchange headers are removed: {headers:?}");
        assert_eq!(
            (peer.name.as_str(), peer.namespace.as_str(), peer.app.as_str(), peer.version.as_str()),
            ("productpage-v1", "default", "productpage", "v1")
        );
        assert_eq!((peer.canonical_service.as_str(), peer.cluster.as_str()), ("productpage", "Kubernetes"));
        // A peer that sent nothing is not made up.
        assert!(server.take_peer(&mut HeaderMap::new()).is_none());
        // Garbage is an unknown peer, not an error.
        let mut bad = HeaderMap::new();
        bad.insert(PEER_METADATA, HeaderValue::from_static("!!not base64!!"));
        assert_eq!(server.take_peer(&mut bad).map(|w| w.name.clone()).as_deref(), Some("unknown"));
    }

    /// A remembered peer keeps none of the buffer its headers were read into: hyper's
    /// header values are slices of it, and one kept would hold the whole buffer.
    #[test]
    fn a_remembered_peer_holds_no_read_buffer() {
        let client = IstioMetrics::new(&node("productpage-v1", &[("app", "productpage")]));
        let server = IstioMetrics::new(&node("reviews-v2", &[]));
        let mut offered = HeaderMap::new();
        client.offer(&mut offered);
        let mut buffer = vec![b' '; 8192];
        let value = offered.get(PEER_METADATA).map(HeaderValue::as_bytes).unwrap_or_default();
        buffer[100..100 + value.len()].copy_from_slice(value);
        let buffer = bytes::Bytes::from(buffer);
        let mut headers = HeaderMap::new();
        let slice = HeaderValue::from_maybe_shared(buffer.slice(100..100 + value.len()));
        headers.insert(PEER_METADATA, slice.unwrap_or_else(|e| panic!("{e}")));
        let peer = server.take_peer(&mut headers).unwrap_or_else(Workload::unknown);
        assert_eq!(peer.name, "productpage-v1");
        drop(headers);
        assert!(buffer.is_unique(), "the peer cache still holds the read buffer");
    }

    #[test]
    fn peers_beyond_the_bound_are_unknown() {
        let server = IstioMetrics::new(&node("server", &[]));
        for i in 0..MAX_PEERS + 10 {
            let mut headers = HeaderMap::new();
            IstioMetrics::new(&node(&format!("w{i}"), &[])).offer(&mut headers);
            let peer = server.take_peer(&mut headers).unwrap_or_else(Workload::unknown);
            assert_eq!(peer.name == "unknown", i >= MAX_PEERS, "peer {i}");
        }
    }

    #[test]
    fn the_prometheus_text_has_istios_names_and_envoys() {
        let m = IstioMetrics::new(&node("reviews-v2", &[("app", "reviews"), ("version", "v2")]));
        let labels = Labels {
            reporter: Reporter::Destination,
            source: Workload::unknown(),
            source_principal: "spiffe://cluster.local/ns/default/sa/productpage".into(),
            destination: m.own().clone(),
            destination_principal: "spiffe://cluster.local/ns/default/sa/reviews".into(),
            service: Arc::new(Service {
                host: "reviews.default.svc.cluster.local".into(),
                name: "reviews".into(),
                namespace: "default".into(),
            }),
            protocol: "http",
            code: 503,
            grpc_status: None,
            flags: Flags::UPSTREAM_OVERFLOW,
            security: "mutual_tls",
        };
        for _ in 0..2 {
            m.record(Request {
                labels: labels.clone(),
                duration: std::time::Duration::from_millis(7),
                request_bytes: 120,
                response_bytes: 80,
            });
        }
        let text = m.prometheus(vec![
            Stat::from_envoy("http.inbound_0.0.0.0_9080.downstream_rq_total", 2),
            Stat::cluster("outbound|9080||reviews.default.svc.cluster.local", "upstream_rq_active", 1),
        ]);
        let line = text.lines().find(|l| l.starts_with("istio_requests_total{")).unwrap_or_else(|| panic!("{text}"));
        for part in [
            "reporter=\"destination\"",
            "destination_workload=\"reviews-v2\"",
            "destination_app=\"reviews\"",
            "destination_version=\"v2\"",
            "destination_service=\"reviews.default.svc.cluster.local\"",
            "destination_service_name=\"reviews\"",
            "response_code=\"503\"",
            "response_flags=\"UO\"",
            "connection_security_policy=\"mutual_tls\"",
            "source_workload=\"unknown\"",
        ] {
            assert!(line.contains(part), "{part} in {line}");
        }
        assert!(line.ends_with("} 2"), "{line}");
        assert!(text.contains("istio_request_duration_milliseconds_bucket{"), "{text}");
        let bucket = |le: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("istio_request_duration_milliseconds_bucket{") && l.contains(&format!("le=\"{le}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!((bucket("5.0").as_deref(), bucket("10.0").as_deref()), (Some("0"), Some("2")), "7 ms: {text}");
        assert!(
            text.contains("envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"inbound_0.0.0.0_9080\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "envoy_cluster_upstream_rq_active{envoy_cluster_name=\"outbound|9080||reviews.default.svc.cluster.local\"} 1"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
