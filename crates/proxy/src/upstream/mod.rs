//! Upstream clusters at run time: hosts with their connection pools, load balancing,
//! circuit breakers and outlier detection.
//!
//! An [`Upstream`] outlives configuration updates that do not change its cluster: new
//! endpoints replace its host set, and hosts that stay keep their pools and their
//! outlier state.

pub mod connect;
pub mod h1;
pub mod lb;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::Body;
use crate::model::cluster::{ClusterSpec, Endpoint, Endpoints};
use connect::HostConnector;
use lb::Balancer;

/// One upstream host.
#[derive(Debug)]
pub struct Host {
    /// The endpoint as EDS described it.
    pub endpoint: Endpoint,
    /// `ip:port`.
    pub address: Arc<str>,
    /// Requests in flight to this host (least-request balancing).
    pub active: AtomicU32,
    /// hyper's pool of connections to this host (HTTP/2, upgrades, streamed request
    /// bodies and mirrors); send with [`Host::send`].
    pub client: Client<HostConnector, Body>,
    /// HTTP/1.1 connections driven by the requests that use them, through weft's own
    /// codec (requests with whole bodies, to clusters that do not speak HTTP/2 upstream).
    pub h1: Option<Arc<h1::Pool>>,
    connector: HostConnector,
    /// Open connections.
    pub open_connections: Arc<AtomicU64>,
    /// Connections made.
    pub total_connections: Arc<AtomicU64>,
    /// Requests sent.
    pub requests: AtomicU64,
    /// Responses that count as errors (5xx or a failed connection).
    pub errors: AtomicU64,
    outlier: Mutex<OutlierState>,
    /// Milliseconds since [`epoch`] until which the host is ejected (0: never).
    ejected_until_ms: AtomicU64,
}

/// The instant ejection deadlines count from.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis_since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_millis() as u64
}

#[derive(Debug, Default)]
struct OutlierState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

/// What an attempt to a host came to, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    /// No connection could be made, or it was reset before a response.
    ConnectFailure,
    /// No response within the per-try timeout.
    Timeout,
}

/// The hosts of a cluster, arranged for balancing.
#[derive(Debug)]
pub struct HostSet {
    /// Every host.
    pub hosts: Vec<Arc<Host>>,
    /// The balancer over them.
    pub balancer: Balancer,
}

/// Counters of one cluster, named as Envoy names them in `/stats`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// `upstream_rq_total`.
    pub rq_total: AtomicU64,
    /// `upstream_rq_active`.
    pub rq_active: AtomicU64,
    /// `upstream_rq_pending_active`.
    pub rq_pending_active: AtomicU64,
    /// `upstream_rq_pending_overflow`.
    pub rq_pending_overflow: AtomicU64,
    /// `upstream_rq_retry`.
    pub rq_retry: AtomicU64,
    /// `upstream_rq_retry_overflow`.
    pub rq_retry_overflow: AtomicU64,
    /// `upstream_rq_timeout`.
    pub rq_timeout: AtomicU64,
    /// `upstream_cx_connect_fail`.
    pub cx_connect_fail: AtomicU64,
    /// `upstream_rq_2xx` … `upstream_rq_5xx`.
    pub rq_by_class: [AtomicU64; 6],
    /// `outlier_detection.ejections_enforced_total`.
    pub ejections: AtomicU64,
    /// `upstream_cx_none_healthy`.
    pub none_healthy: AtomicU64,
}

/// A cluster at run time.
#[derive(Debug)]
pub struct Upstream {
    /// The configuration it was built from.
    pub spec: Arc<ClusterSpec>,
    hosts: ArcSwap<HostSet>,
    /// Counters.
    pub stats: ClusterStats,
    /// Request slots: connections (HTTP/1) or streams (HTTP/2).
    slots: Arc<Semaphore>,
    retries_active: AtomicU32,
    applied: Mutex<Option<Arc<Endpoints>>>,
    /// The latest ejection deadline of any host: before it, some host may be ejected.
    ejections_until_ms: AtomicU64,
    /// ORIGINAL_DST clusters: a host per original destination seen.
    original: Mutex<HashMap<std::net::SocketAddr, Arc<Host>>>,
}

/// Most original destinations an ORIGINAL_DST cluster keeps pools for.
const MAX_ORIGINAL_DST_HOSTS: usize = 1024;

/// Why a request could not get a slot (the `UO` response flag).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overflow;

/// A request's hold on its cluster's capacity.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// A retry's hold on the cluster's retry budget.
#[derive(Debug)]
pub struct RetrySlot<'a>(&'a Upstream);

impl Drop for RetrySlot<'_> {
    fn drop(&mut self) {
        self.0.retries_active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    /// A cluster with no hosts yet.
    pub fn new(spec: Arc<ClusterSpec>) -> Upstream {
        let limit = if spec.http2 { spec.limits.max_requests } else { spec.limits.max_connections };
        let limit = (limit as usize).min(spec.limits.max_requests as usize).clamp(1, Semaphore::MAX_PERMITS);
        Upstream {
            hosts: ArcSwap::from_pointee(HostSet { hosts: Vec::new(), balancer: Balancer::empty() }),
            stats: ClusterStats::default(),
            slots: Arc::new(Semaphore::new(limit)),
            retries_active: AtomicU32::new(0),
            applied: Mutex::new(None),
            ejections_until_ms: AtomicU64::new(0),
            original: Mutex::new(HashMap::new()),
            spec,
        }
    }

    /// The current hosts.
    pub fn hosts(&self) -> arc_swap::Guard<Arc<HostSet>> {
        self.hosts.load()
    }

    /// Picks a host of `set` (see [`Balancer::pick`]).
    pub fn pick(&self, set: &HostSet, hash: Option<u64>, avoid: &[usize]) -> Option<usize> {
        let any_ejected = self.ejections_until_ms.load(Ordering::Relaxed) > millis_since_epoch(Instant::now());
        set.balancer.pick(&set.hosts, hash, avoid, any_ejected)
    }

    /// The host for a connection's original destination (ORIGINAL_DST clusters).
    pub fn original_dst_host(&self, destination: std::net::SocketAddr) -> Option<Arc<Host>> {
        let mut hosts = self.original.lock().ok()?;
        if hosts.len() >= MAX_ORIGINAL_DST_HOSTS && !hosts.contains_key(&destination) {
            hosts.clear();
        }
        let host = hosts.entry(destination).or_insert_with(|| {
            let endpoint = Endpoint {
                host: destination.ip().to_string(),
                port: destination.port(),
                addr: Some(destination),
                weight: 1,
                healthy: true,
                socket_match: Vec::new(),
            };
            Arc::new(self.host(&endpoint, destination.to_string()))
        });
        Some(host.clone())
    }

    /// The hosts an ORIGINAL_DST cluster has connected to.
    pub fn original_hosts(&self) -> Vec<Arc<Host>> {
        self.original.lock().map(|h| h.values().cloned().collect()).unwrap_or_default()
    }

    /// The current hosts, to hold across awaits.
    pub fn hosts_full(&self) -> Arc<HostSet> {
        self.hosts.load_full()
    }

    /// Replaces the endpoints unless these very endpoints are already in place.
    pub fn set_endpoints_if_changed(&self, endpoints: &Arc<Endpoints>) {
        let Ok(mut applied) = self.applied.lock() else { return };
        if applied.as_ref().is_some_and(|a| Arc::ptr_eq(a, endpoints)) {
            return;
        }
        self.set_endpoints(endpoints);
        *applied = Some(endpoints.clone());
    }

    /// Replaces the endpoints, keeping hosts (pools, outlier state) that stay.
    pub fn set_endpoints(&self, endpoints: &Endpoints) {
        let old = self.hosts.load();
        let mut by_address: HashMap<&str, &Arc<Host>> = old.hosts.iter().map(|h| (&*h.address, h)).collect();
        let mut hosts = Vec::new();
        let mut groups = Vec::new();
        for group in &endpoints.groups {
            let mut members = Vec::with_capacity(group.endpoints.len());
            for e in &group.endpoints {
                let address = format!("{}:{}", e.host, e.port);
                let host = match by_address.remove(address.as_str()) {
                    Some(h) if h.endpoint == *e => h.clone(),
                    _ => Arc::new(self.host(e, address)),
                };
                members.push(hosts.len());
                hosts.push(host);
            }
            groups.push(lb::Group { priority: group.priority, weight: group.weight, members });
        }
        let balancer = Balancer::new(self.spec.lb, &hosts, groups);
        self.hosts.store(Arc::new(HostSet { hosts, balancer }));
    }

    fn host(&self, e: &Endpoint, address: String) -> Host {
        let idle_timeout = self.spec.idle_timeout.unwrap_or(Duration::from_secs(3600));
        let open = Arc::new(AtomicU64::new(0));
        let total = Arc::new(AtomicU64::new(0));
        let connector = HostConnector {
            target: address.clone().into(),
            host: e.host.clone().into(),
            timeout: self.spec.connect_timeout,
            tls: self.spec.tls_for(&e.socket_match),
            open: open.clone(),
            total: total.clone(),
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(idle_timeout)
            .retry_canceled_requests(false)
            .set_host(false)
            .http2_only(self.spec.http2);
        // A server that may choose HTTP/2 by ALPN is left to the pool that follows it.
        let may_choose_h2 = connector.tls.as_ref().is_some_and(|t| t.config.alpn_protocols.iter().any(|p| p == b"h2"));
        let h1 = (!self.spec.http2 && !may_choose_h2).then(|| Arc::new(h1::Pool::new(connector.clone(), idle_timeout)));
        Host {
            endpoint: e.clone(),
            address: address.into(),
            active: AtomicU32::new(0),
            client: builder.build(connector.clone()),
            h1,
            connector,
            open_connections: open,
            total_connections: total,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            outlier: Mutex::new(OutlierState::default()),
            ejected_until_ms: AtomicU64::new(0),
        }
    }

    /// Takes a request slot: at once when one is free, else waiting as a pending request
    /// when the pending queue has room; otherwise the circuit is open.
    pub async fn slot(&self) -> Result<Slot, Overflow> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(Slot { _permit: permit });
        }
        let pending = self.stats.rq_pending_active.fetch_add(1, Ordering::Relaxed);
        if pending >= u64::from(self.spec.limits.max_pending_requests) {
            self.stats.rq_pending_active.fetch_sub(1, Ordering::Relaxed);
            self.stats.rq_pending_overflow.fetch_add(1, Ordering::Relaxed);
            return Err(Overflow);
        }
        let permit = self.slots.clone().acquire_owned().await;
        self.stats.rq_pending_active.fetch_sub(1, Ordering::Relaxed);
        permit.map(|p| Slot { _permit: p }).map_err(|_| Overflow)
    }

    /// Takes a place in the retry budget (`max_retries` retries in flight).
    pub fn retry_slot(&self) -> Option<RetrySlot<'_>> {
        let active = self.retries_active.fetch_add(1, Ordering::Relaxed);
        if active >= self.spec.limits.max_retries {
            self.retries_active.fetch_sub(1, Ordering::Relaxed);
            self.stats.rq_retry_overflow.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(RetrySlot(self))
    }

    /// Records an attempt's outcome; ejects the host when outlier detection says so.
    pub fn record(&self, host: &Host, outcome: Outcome) {
        let class = match outcome {
            Outcome::Status(s) => usize::from(s / 100).min(5),
            Outcome::ConnectFailure | Outcome::Timeout => 5,
        };
        self.stats.rq_by_class[class].fetch_add(1, Ordering::Relaxed);
        let is_5xx = class == 5;
        let is_gateway = matches!(outcome, Outcome::Status(502..=504) | Outcome::ConnectFailure | Outcome::Timeout);
        if is_5xx {
            host.errors.fetch_add(1, Ordering::Relaxed);
        }
        let Some(od) = &self.spec.outlier else { return };
        let Ok(mut state) = host.outlier.lock() else { return };
        if is_5xx {
            state.consecutive_5xx += 1;
        } else {
            state.consecutive_5xx = 0;
        }
        if is_gateway {
            state.consecutive_gateway += 1;
        } else {
            state.consecutive_gateway = 0;
        }
        let trip = od.consecutive_5xx.is_some_and(|n| state.consecutive_5xx >= n)
            || od.consecutive_gateway_failure.is_some_and(|n| state.consecutive_gateway >= n);
        let now = Instant::now();
        if !trip || state.ejected_until.is_some_and(|t| t > now) {
            return;
        }
        drop(state);
        // Respect max_ejection_percent (at least one host may always be ejected).
        let set = self.hosts.load();
        let ejected = set.hosts.iter().filter(|h| h.is_ejected(now)).count();
        let allowed = (set.hosts.len() * od.max_ejection_percent as usize / 100).max(1);
        if ejected >= allowed {
            return;
        }
        let Ok(mut state) = host.outlier.lock() else { return };
        state.times_ejected += 1;
        let until = now + od.base_ejection_time * state.times_ejected;
        state.ejected_until = Some(until);
        host.ejected_until_ms.store(millis_since_epoch(until), Ordering::Relaxed);
        self.ejections_until_ms.fetch_max(millis_since_epoch(until), Ordering::Relaxed);
        state.consecutive_5xx = 0;
        state.consecutive_gateway = 0;
        self.stats.ejections.fetch_add(1, Ordering::Relaxed);
        tracing::info!(cluster = %self.spec.name, host = %host.address, "outlier detection ejected a host");
    }
}

impl Host {
    /// Sends `req` through [`Host::client`]. A request going out on HTTP/2 first has its
    /// header values detached from the buffer they were read into, which the connection's
    /// HPACK table would otherwise keep (see `http/hpack.rs`).
    pub fn send(&self, mut req: hyper::Request<Body>) -> hyper_util::client::legacy::ResponseFuture {
        if req.version() == hyper::Version::HTTP_2 {
            crate::http::hpack::detach_values(req.headers_mut());
        }
        self.client.request(req)
    }

    /// A connector to this host, for connections outside the HTTP pool (TCP proxy).
    pub fn client_connector(&self) -> HostConnector {
        self.connector.clone()
    }

    /// Whether outlier detection has this host ejected now.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > millis_since_epoch(now)
    }

    /// Whether the host may take traffic (EDS health and outlier detection).
    pub fn is_available(&self, now: Instant) -> bool {
        self.endpoint.healthy && !self.is_ejected(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cluster::{Discovery, LbPolicy, Limits, LocalityGroup, OutlierDetection};

    fn spec(lb: LbPolicy, outlier: Option<OutlierDetection>) -> Arc<ClusterSpec> {
        Arc::new(ClusterSpec {
            name: "test".into(),
            discovery: Discovery::Eds("test".into()),
            lb,
            connect_timeout: Duration::from_secs(1),
            limits: Limits {
                max_connections: 1024,
                max_pending_requests: 1024,
                max_requests: 1024,
                max_retries: 3,
                max_requests_per_connection: 0,
            },
            outlier,
            http2: false,
            idle_timeout: None,
            tls: None,
            tls_matches: Vec::new(),
            service: crate::telemetry::Service::unknown(),
            exchange: false,
        })
    }

    fn endpoint(last: u8, weight: u32, healthy: bool) -> Endpoint {
        let host = format!("127.0.0.{last}");
        Endpoint { addr: format!("{host}:80").parse().ok(), host, port: 80, weight, healthy, socket_match: Vec::new() }
    }

    fn group(priority: u32, weight: u32, endpoints: Vec<Endpoint>) -> LocalityGroup {
        LocalityGroup { locality: format!("r/z{priority}{weight}/"), weight, priority, endpoints }
    }

    fn upstream(lb: LbPolicy, groups: Vec<LocalityGroup>) -> Upstream {
        let u = Upstream::new(spec(lb, None));
        u.set_endpoints(&Endpoints { groups });
        u
    }

    /// How many of `n` picks each host got, by its address.
    fn picks(u: &Upstream, n: usize, hash: impl Fn(usize) -> Option<u64>) -> HashMap<String, usize> {
        let set = u.hosts_full();
        let mut out = HashMap::new();
        for i in 0..n {
            let Some(index) = u.pick(&set, hash(i), &[]) else { continue };
            *out.entry(set.hosts[index].address.to_string()).or_default() += 1;
        }
        out
    }

    #[test]
    fn weighted_round_robin_follows_the_weights_exactly() {
        let u = upstream(LbPolicy::RoundRobin, vec![group(0, 0, vec![endpoint(1, 1, true), endpoint(2, 3, true)])]);
        let p = picks(&u, 400, |_| None);
        assert_eq!((p["127.0.0.1:80"], p["127.0.0.2:80"]), (100, 300));
    }

    #[test]
    fn consistent_hashing_is_sticky_and_spreads() {
        for lb in [LbPolicy::RingHash { min_ring_size: 1024 }, LbPolicy::Maglev] {
            let endpoints = (1..=4).map(|i| endpoint(i, 1, true)).collect();
            let u = upstream(lb, vec![group(0, 0, endpoints)]);
            let same = picks(&u, 50, |_| Some(42));
            assert_eq!(same.len(), 1, "{lb:?}: one key, one host: {same:?}");
            let spread = picks(&u, 4000, |i| Some(crate::upstream::lb::hash_of(i)));
            assert_eq!(spread.len(), 4, "{lb:?}: {spread:?}");
            assert!(spread.values().all(|n| *n > 500), "{lb:?}: {spread:?}");
        }
    }

    #[test]
    fn an_unhealthy_priority_fails_over_to_the_next() {
        let u = upstream(
            LbPolicy::RoundRobin,
            vec![group(0, 0, vec![endpoint(1, 1, false)]), group(1, 0, vec![endpoint(2, 1, true)])],
        );
        assert_eq!(picks(&u, 20, |_| None).get("127.0.0.2:80"), Some(&20));
        // Healthy again: priority 0 takes everything back.
        u.set_endpoints(&Endpoints {
            groups: vec![group(0, 0, vec![endpoint(1, 1, true)]), group(1, 0, vec![endpoint(2, 1, true)])],
        });
        assert_eq!(picks(&u, 20, |_| None).get("127.0.0.1:80"), Some(&20));
    }

    #[test]
    fn locality_weights_split_the_traffic() {
        let u = upstream(
            LbPolicy::RoundRobin,
            vec![group(0, 1, vec![endpoint(1, 1, true)]), group(0, 4, vec![endpoint(2, 1, true)])],
        );
        let p = picks(&u, 5000, |_| None);
        let share = p["127.0.0.2:80"] as f64 / 5000.0;
        assert!((0.75..0.85).contains(&share), "{p:?}");
    }

    #[test]
    fn outlier_detection_ejects_after_consecutive_errors_within_the_limit() {
        let od = OutlierDetection {
            consecutive_5xx: Some(2),
            consecutive_gateway_failure: None,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 50,
            interval: Duration::from_secs(1),
        };
        let u = Upstream::new(spec(LbPolicy::RoundRobin, Some(od)));
        u.set_endpoints(&Endpoints { groups: vec![group(0, 0, (1..=4).map(|i| endpoint(i, 1, true)).collect())] });
        let set = u.hosts_full();
        let now = Instant::now();
        u.record(&set.hosts[0], Outcome::Status(503));
        assert!(!set.hosts[0].is_ejected(now), "one error is not enough");
        u.record(&set.hosts[0], Outcome::Status(503));
        assert!(set.hosts[0].is_ejected(Instant::now()));
        assert!(!picks(&u, 40, |_| None).contains_key("127.0.0.1:80"));
        // A success in between resets the count.
        u.record(&set.hosts[1], Outcome::Status(503));
        u.record(&set.hosts[1], Outcome::Status(200));
        u.record(&set.hosts[1], Outcome::Status(503));
        assert!(!set.hosts[1].is_ejected(Instant::now()));
        // At most half the hosts: a second ejection is allowed, a third is not.
        for host in [2, 3] {
            u.record(&set.hosts[host], Outcome::ConnectFailure);
            u.record(&set.hosts[host], Outcome::ConnectFailure);
        }
        let ejected = set.hosts.iter().filter(|h| h.is_ejected(Instant::now())).count();
        assert_eq!(ejected, 2);
        // Hosts that stay across an endpoint update keep their state.
        u.set_endpoints(&Endpoints { groups: vec![group(0, 0, (1..=5).map(|i| endpoint(i, 1, true)).collect())] });
        assert!(u.hosts_full().hosts[0].is_ejected(Instant::now()));
    }

    #[test]
    fn circuit_breakers_queue_then_overflow() {
        let mut s = (*spec(LbPolicy::RoundRobin, None)).clone();
        s.limits.max_connections = 1;
        s.limits.max_pending_requests = 1;
        let u = Arc::new(Upstream::new(Arc::new(s)));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            let first = u.slot().await;
            assert!(first.is_ok());
            let waiting = tokio::spawn({
                let u = u.clone();
                async move { u.slot().await.is_ok() }
            });
            tokio::task::yield_now().await;
            assert_eq!(u.slot().await.err(), Some(Overflow), "one pending request at most");
            drop(first);
            assert!(waiting.await.unwrap_or(false), "the pending request gets the freed slot");
            assert_eq!(u.stats.rq_pending_overflow.load(Ordering::Relaxed), 1);
        });
    }
}
