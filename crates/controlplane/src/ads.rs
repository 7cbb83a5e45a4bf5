//! The Aggregated Discovery Service: Envoy v3 xDS over one gRPC stream per proxy, in
//! both protocols (state-of-the-world and delta), with ACK/NACK tracking.
//!
//! Each stream runs as one task that owns its state: it answers requests and, when a
//! new snapshot is published, pushes what changed (clusters, endpoints, listeners,
//! routes, in that order). A NACK is logged with the proxy and the reason, recorded in
//! the sync status, and not retried until the configuration changes.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use hyper::body::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tonic::Status;

use crate::cache::{Classes, Encoded, Translation, TranslationCache};
use crate::held::Held;
use crate::metrics::Metrics;
use crate::node::ProxyIdentity;
use crate::snapshot::Snapshot;
use crate::translate::{self, type_url};

/// What one connected proxy has been sent and has acknowledged, per type.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProxySync {
    /// The proxy's node id.
    pub proxy: String,
    /// `sotw` or `delta`.
    pub protocol: &'static str,
    /// The control-plane revision the proxy asked for (empty: the default).
    pub revision: String,
    /// Seconds since the epoch when the stream opened.
    pub connected_at: u64,
    /// Per type URL.
    pub types: BTreeMap<String, TypeSync>,
    /// The proxy's identity, once known.
    #[serde(skip)]
    pub identity: Option<ProxyIdentity>,
    /// Listener names a proxyless client asked for.
    #[serde(skip)]
    pub listener_names: Vec<String>,
}

/// Sync state of one resource type on one stream.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TypeSync {
    /// The version last sent.
    pub sent: String,
    /// The version last acknowledged.
    pub acked: String,
    /// The reason of the last NACK, if the last response was rejected.
    pub nack: Option<String>,
    /// How many resources the last response held.
    pub resources: usize,
}

/// Sync state of every connected proxy, for `/debug/syncz` and `weft proxy-status`.
#[derive(Debug, Default)]
pub struct SyncStatus {
    streams: Mutex<BTreeMap<u64, ProxySync>>,
    next_id: AtomicU64,
}

impl SyncStatus {
    /// Every connected proxy's sync state.
    pub fn all(&self) -> Vec<ProxySync> {
        self.streams.lock().map(|s| s.values().cloned().collect()).unwrap_or_default()
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut ProxySync)) {
        if let Ok(mut streams) = self.streams.lock() {
            f(streams.entry(id).or_default());
        }
    }

    fn remove(&self, id: u64) {
        if let Ok(mut streams) = self.streams.lock() {
            streams.remove(&id);
        }
    }
}

/// The ADS service.
#[derive(Debug, Clone)]
pub struct Ads {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    pushes: Arc<Semaphore>,
    /// How many push slots have been taken, for [`release_after_pushes`].
    slots_taken: Arc<AtomicU64>,
    status: Arc<SyncStatus>,
    metrics: Arc<Metrics>,
    cache: Arc<TranslationCache>,
    /// The revision this control plane serves (`None`: the default one).
    revision: Option<Arc<str>>,
    /// Who sends every response (Istio's `control_plane.identifier`), built once.
    control_plane: Arc<ControlPlane>,
}

impl Ads {
    /// An ADS serving the snapshots published on `snapshots`.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, status: Arc<SyncStatus>, metrics: Arc<Metrics>) -> Self {
        Ads {
            snapshots,
            status,
            metrics,
            cache: Arc::new(TranslationCache::default()),
            pushes: Arc::new(Semaphore::new(PUSH_BUDGET_KB)),
            slots_taken: Arc::default(),
            revision: None,
            control_plane: Arc::new(identifier(None)),
        }
    }

    /// Serves only the proxies of `revision` (Istio's `--revision`): those whose
    /// `istio.io/rev` label (or `REVISION` metadata) names it. Without one, the control
    /// plane is the default revision's, which serves proxies that name none or `default`.
    pub fn with_revision(mut self, revision: Option<String>) -> Self {
        self.revision = revision.filter(|r| !r.is_empty() && r != "default").map(Arc::from);
        self.control_plane = Arc::new(identifier(self.revision.as_deref()));
        self
    }

    /// The gRPC service, for a tonic server. Within a tokio runtime, it also starts the
    /// task that returns freed memory to the system after bursts of pushes
    /// ([`crate::memory`]), for as long as snapshots are published.
    pub fn into_service(self) -> AdsService {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(release_after_pushes(self.slots_taken.clone(), self.snapshots.clone()));
        }
        AdsService { ads: self }
    }

    /// Starts serving one stream of protocol `P`; its responses are the HTTP response.
    fn open<P: Protocol, B>(&self, request: hyper::Request<B>) -> hyper::Response<tonic::body::Body>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    {
        // Requests are read uncompressed, as tonic's generated server does by default.
        let encoding = request.headers().get("grpc-encoding").and_then(|v| v.to_str().ok());
        if encoding.is_some_and(|e| e != "identity") {
            return Status::unimplemented("compressed requests are not accepted").into_http();
        }
        let request = tonic::Request::from_http(request);
        let mut stream = Stream_::new(self, P::NAME);
        stream.peer = peer_identity(&request);
        let requests = crate::grpc::Requests::<P, B>::new(request.into_inner(), MAX_REQUEST_BYTES);
        // One response queued per stream: the next is built when gRPC has taken this one.
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(stream.run(requests, tx));
        crate::grpc::response(rx)
    }
}

/// The largest request a proxy may send (a delta request naming every endpoint set).
const MAX_REQUEST_BYTES: usize = 64 << 20;

/// `envoy.service.discovery.v3.AggregatedDiscoveryService` for a tonic server: requests
/// decoded by tonic, each response framed in a buffer of its own ([`crate::grpc`]).
#[derive(Debug, Clone)]
pub struct AdsService {
    ads: Ads,
}

impl tonic::server::NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl<B> tower_service::Service<hyper::Request<B>> for AdsService
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    type Response = hyper::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: hyper::Request<B>) -> Self::Future {
        let response = match request.uri().path().rsplit('/').next() {
            Some("StreamAggregatedResources") => self.ads.open::<DiscoveryRequest, B>(request),
            Some("DeltaAggregatedResources") => self.ads.open::<DeltaDiscoveryRequest, B>(request),
            _ => {
                Status::unimplemented("the ADS has StreamAggregatedResources and DeltaAggregatedResources").into_http()
            }
        };
        std::future::ready(Ok(response))
    }
}

/// How often [`release_after_pushes`] looks whether a burst has ended.
const RELEASE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// After each burst of work (a new snapshot, large pushes), once no large push has
/// started for a while, gives the memory the burst freed back to the system
/// ([`crate::memory`]): a thousand proxies' first pushes leave the allocator holding
/// gigabytes it no longer uses. `slots_taken` counts the push slots taken. Ends when
/// snapshots are no longer published.
async fn release_after_pushes(slots_taken: Arc<AtomicU64>, mut snapshots: watch::Receiver<Arc<Snapshot>>) {
    let mut tick = tokio::time::interval(RELEASE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The configuration was just loaded: that is a burst too.
    let mut busy = true;
    let mut seen = slots_taken.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                busy = true;
            }
            _ = tick.tick() => {
                let taken = slots_taken.load(Ordering::Relaxed);
                if taken != seen {
                    seen = taken;
                    busy = true;
                } else if busy {
                    busy = false;
                    let released = tokio::task::spawn_blocking(crate::memory::release_free_memory).await;
                    tracing::debug!(released = released.unwrap_or(false), "returned freed memory to the system");
                }
            }
        }
    }
}

/// Streams with an unacknowledged push at once. A stream takes a slot to push and gives
/// it back when the proxy has acknowledged everything, so a push to a thousand proxies
/// holds at most this many proxies' responses in memory, as Istio's push throttle does.
pub const PUSH_CONCURRENCY: usize = 100;

/// The configuration in flight at once, in kB: a stream's slot weighs its proxy's whole
/// configuration, so when each proxy gets megabytes (ten thousand services), fewer
/// pushes run at once than [`PUSH_CONCURRENCY`].
pub const PUSH_BUDGET_KB: usize = 64 << 10;

/// Responses at least this large count against the push throttle.
pub const THROTTLED_RESPONSE_BYTES: usize = 64 << 10;

/// Where a stream's framed responses go (see [`crate::wire`]).
type Tx = mpsc::Sender<Result<Bytes, Status>>;

/// One delta response's content.
struct Delta<'a> {
    /// Resources added or changed.
    resources: Vec<(&'a Arc<str>, &'a Encoded)>,
    /// Names removed.
    removed: Vec<String>,
    /// How many resources of the type the proxy has after it.
    count: usize,
}

/// The workload identity in a client certificate, when the stream is mTLS.
fn peer_identity<T>(request: &tonic::Request<T>) -> Option<weft_tls::ca::SpiffeId> {
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    weft_tls::ca::spiffe_ids_der(leaf.as_ref()).iter().find_map(|id| weft_tls::ca::SpiffeId::parse(id).ok())
}

/// One xDS protocol, named by its request type: how a request is answered and how a
/// change is pushed on a stream.
trait Protocol: prost::Message + Default + Sized + Send + 'static {
    type Response: prost::Message + Default + Unpin + Send + 'static;
    /// The protocol's name in the sync status.
    const NAME: &'static str;

    fn answer(stream: &mut Stream_, request: Self, tx: &Tx) -> impl Future<Output = Result<(), Status>> + Send;

    fn push(
        stream: &mut Stream_,
        snapshot: &Snapshot,
        translation: &Translation,
        type_url: &str,
        tx: &Tx,
    ) -> impl Future<Output = bool> + Send;
}

impl Protocol for DiscoveryRequest {
    type Response = DiscoveryResponse;
    const NAME: &'static str = "sotw";

    fn answer(stream: &mut Stream_, request: Self, tx: &Tx) -> impl Future<Output = Result<(), Status>> + Send {
        stream.on_sotw_request(request, tx)
    }

    fn push(
        stream: &mut Stream_,
        snapshot: &Snapshot,
        translation: &Translation,
        type_url: &str,
        tx: &Tx,
    ) -> impl Future<Output = bool> + Send {
        stream.send_sotw(snapshot, translation, type_url, false, tx)
    }
}

impl Protocol for DeltaDiscoveryRequest {
    type Response = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";

    fn answer(stream: &mut Stream_, request: Self, tx: &Tx) -> impl Future<Output = Result<(), Status>> + Send {
        stream.on_delta_request(request, tx)
    }

    fn push(
        stream: &mut Stream_,
        snapshot: &Snapshot,
        translation: &Translation,
        type_url: &str,
        tx: &Tx,
    ) -> impl Future<Output = bool> + Send {
        stream.send_delta(snapshot, translation, type_url, false, tx)
    }
}

/// Per-type state of one stream.
#[derive(Debug, Default)]
struct Watch {
    /// Requested names; empty with `wildcard` means everything. The set is held once
    /// across streams ([`crate::cache::Interner::names`]): a thousand proxies subscribe
    /// to the same endpoint sets.
    names: Arc<BTreeSet<Arc<str>>>,
    wildcard: bool,
    /// Nonce of the last response.
    nonce: String,
    /// What the proxy holds (delta).
    held: Held,
    /// The hash of the whole set last sent (state of the world).
    digest: Option<u64>,
    /// Snapshot version when the last response was sent, for convergence time.
    sent_at: Option<(u64, Instant)>,
    /// The version of the last response.
    version: String,
    /// Whether the last response awaits its ACK or NACK.
    pending: bool,
    /// The snapshot version this stream holds in full for this type (delta).
    synced: Option<u64>,
}

impl Watch {
    /// Whether the proxy subscribes to `name`.
    fn subscribes(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// The hash the proxy holds `name` at (delta).
    fn holds(&self, name: &str) -> Option<u64> {
        self.held.get(name, self.subscribes(name))
    }
}

/// One proxy's stream.
struct Stream_ {
    id: u64,
    protocol: &'static str,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    status: Arc<SyncStatus>,
    metrics: Arc<Metrics>,
    cache: Arc<TranslationCache>,
    pushes: Arc<Semaphore>,
    slots_taken: Arc<AtomicU64>,
    revision: Option<Arc<str>>,
    control_plane: Arc<ControlPlane>,
    /// This stream's push slot, held while a response is unacknowledged.
    slot: Option<OwnedSemaphorePermit>,
    proxy: Option<ProxyIdentity>,
    /// The proxy's translation classes, as of the last push.
    classes: Option<Arc<Classes>>,
    /// The workload identity of a client certificate (xDS over mTLS).
    peer: Option<weft_tls::ca::SpiffeId>,
    watches: BTreeMap<String, Watch>,
    nonce: u64,
}

/// Who answers, as Istio's control plane says it in every response
/// (`control_plane.identifier`): a proxy reads the revision it is served by from it.
fn identifier(revision: Option<&str>) -> ControlPlane {
    let identifier = serde_json::json!({
        "Component": "weft",
        "ID": "weft-control-plane",
        "Info": {"version": env!("CARGO_PKG_VERSION"), "revision": revision.unwrap_or("default")},
    });
    ControlPlane { identifier: identifier.to_string() }
}

impl Stream_ {
    fn new(ads: &Ads, protocol: &'static str) -> Self {
        Stream_ {
            id: ads.status.next_id.fetch_add(1, Ordering::Relaxed),
            protocol,
            snapshots: ads.snapshots.clone(),
            status: ads.status.clone(),
            metrics: ads.metrics.clone(),
            cache: ads.cache.clone(),
            pushes: ads.pushes.clone(),
            slots_taken: ads.slots_taken.clone(),
            revision: ads.revision.clone(),
            control_plane: ads.control_plane.clone(),
            slot: None,
            proxy: None,
            classes: None,
            peer: None,
            watches: BTreeMap::new(),
            nonce: 0,
        }
    }

    /// Before a response of `bytes` goes out: large ones wait for a push slot (unless this
    /// stream holds one), small ones pass, so a full push is throttled and an endpoint
    /// change is not. The slot weighs `configuration` (the proxy's whole translation),
    /// at least a [`PUSH_CONCURRENCY`]th of the budget. False if the server is closing.
    async fn take_push_slot(&mut self, bytes: usize, configuration: usize) -> bool {
        if self.slot.is_none() && bytes >= THROTTLED_RESPONSE_BYTES {
            let weight = (configuration >> 10).clamp(PUSH_BUDGET_KB / PUSH_CONCURRENCY, PUSH_BUDGET_KB);
            let weight = u32::try_from(weight).unwrap_or(u32::MAX);
            match self.pushes.clone().acquire_many_owned(weight).await {
                Ok(permit) => {
                    self.slot = Some(permit);
                    self.slots_taken.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// Gives the push slot back once nothing awaits an acknowledgement.
    fn release_if_idle(&mut self) {
        if self.watches.values().all(|w| !w.pending) {
            self.slot = None;
        }
    }

    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        format!("{}-{}", self.id, self.nonce)
    }

    /// Whether this control plane serves `proxy`: its revision (through a tag, when its
    /// `istio.io/rev` names one) and its namespace (the discovery selectors); the refusal
    /// says why.
    fn check_served(&self, snapshot: &Snapshot, proxy: &ProxyIdentity) -> Result<(), Status> {
        if !snapshot.sees_namespace(&proxy.namespace) {
            tracing::warn!(proxy = %proxy.id, namespace = %proxy.namespace, "a proxy of a namespace this control plane does not see");
            return Err(Status::failed_precondition(format!(
                "proxy {}: namespace {} is not among this control plane's discoverySelectors",
                proxy.id, proxy.namespace
            )));
        }
        let asked = if proxy.revision.is_empty() { "default" } else { proxy.revision.as_str() };
        let resolved = snapshot.resolve_revision(asked);
        let serves = self.revision.as_deref().unwrap_or("default");
        // A proxy that names this revision is its own (even `default` while the default
        // tag points elsewhere: a proxy moved back to the default revision); one that
        // names a tag, or nothing (the `default` tag), belongs where the tag points.
        if resolved == serves || proxy.revision == serves {
            return Ok(());
        }
        tracing::warn!(proxy = %proxy.id, revision = asked, resolved, serves, "a proxy of another revision");
        let through = if resolved == asked { String::new() } else { format!(" (tag {asked:?})") };
        Err(Status::failed_precondition(format!(
            "proxy {} belongs to revision {resolved:?}{through}; this control plane serves revision {serves:?}",
            proxy.id
        )))
    }

    /// Reads the proxy's identity from the first request's node.
    fn identify(&mut self, node: Option<&envoy_types::pb::envoy::config::core::v3::Node>) -> Result<(), Status> {
        if self.proxy.is_some() {
            return Ok(());
        }
        let mut proxy = ProxyIdentity::from_node(node).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // A proxy is served by its own revision's control plane only, and by one that
        // sees its namespace.
        let snapshot = self.snapshots.borrow().clone();
        self.check_served(&snapshot, &proxy)?;
        // Over mTLS the certificate, not the node, says who the workload is.
        if let Some(peer) = &self.peer {
            let sa_ok = proxy.service_account.is_empty() || proxy.service_account == peer.service_account;
            if proxy.namespace != peer.namespace || !sa_ok {
                tracing::warn!(proxy = %proxy.id, certificate = %peer, "a proxy claimed another workload's identity");
                return Err(Status::permission_denied(format!(
                    "node {} (namespace {}, service account {:?}) does not match its certificate {peer}",
                    proxy.id, proxy.namespace, proxy.service_account
                )));
            }
            proxy.service_account = peer.service_account.clone();
            // It holds a workload certificate: mutual TLS can be configured for it.
            proxy.sds = true;
        }
        tracing::info!(proxy = %proxy.id, protocol = self.protocol, "proxy connected");
        let connected_at = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let (id, protocol, identity) = (proxy.id.clone(), self.protocol, proxy.clone());
        let revision = proxy.revision.clone();
        self.status.update(self.id, |s| {
            s.proxy = id;
            s.revision = revision;
            s.identity = Some(identity);
            s.protocol = protocol;
            s.connected_at = connected_at;
        });
        self.metrics.connected(1);
        self.proxy = Some(proxy);
        Ok(())
    }

    /// Everything this proxy gets from the given snapshot (shared with its class).
    async fn translation(&mut self, snapshot: &Snapshot) -> Arc<Translation> {
        let Some(proxy) = &self.proxy else { return Arc::default() };
        let listener_names: Vec<String> = if translate::listeners_by_name(proxy) {
            self.watches
                .get(type_url::LISTENER)
                .map(|w| w.names.iter().map(|n| n.to_string()).collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let classes = TranslationCache::classes(snapshot, proxy, &listener_names, self.classes.take());
        self.classes = Some(classes.clone());
        self.cache.translation(snapshot, &classes).await
    }

    /// Records an ACK or NACK; returns whether the request was a response to our last push.
    fn acknowledge(&mut self, type_url: &str, nonce: &str, version: &str, error: Option<&str>) -> bool {
        let Some(w) = self.watches.get_mut(type_url) else { return false };
        if nonce.is_empty() || nonce != w.nonce {
            return false;
        }
        w.pending = false;
        self.release_if_idle();
        let Some(w) = self.watches.get(type_url) else { return false };
        let proxy = self.proxy.as_ref().map(|p| p.id.clone()).unwrap_or_default();
        match error {
            Some(reason) => {
                tracing::warn!(proxy = %proxy, type_url, version, reason, "proxy rejected configuration (NACK)");
                self.metrics.nack(type_url);
                self.status.update(self.id, |s| {
                    s.types.entry(type_url.to_owned()).or_default().nack = Some(reason.to_owned())
                });
            }
            None => {
                if let Some((_, at)) = w.sent_at {
                    self.metrics.converged(at.elapsed());
                }
                self.status.update(self.id, |s| {
                    let t = s.types.entry(type_url.to_owned()).or_default();
                    t.acked = version.to_owned();
                    t.nack = None;
                });
            }
        }
        true
    }

    fn record_sent(&mut self, type_url: &str, version: &str, nonce: String, count: usize, snapshot_version: u64) {
        if type_url == type_url::LISTENER {
            let names: Vec<String> =
                self.watches.get(type_url).map(|w| w.names.iter().map(|n| n.to_string()).collect()).unwrap_or_default();
            self.status.update(self.id, |s| s.listener_names = names);
        }
        if let Some(w) = self.watches.get_mut(type_url) {
            w.nonce = nonce;
            w.pending = true;
            w.version = version.to_owned();
            w.sent_at = Some((snapshot_version, Instant::now()));
        }
        self.metrics.pushed(type_url);
        self.status.update(self.id, |s| {
            let t = s.types.entry(type_url.to_owned()).or_default();
            t.sent = version.to_owned();
            t.resources = count;
        });
    }

    // ------------------------------------------------------------ state of the world

    /// Serves one stream until it ends: answers requests, pushes new snapshots. The two
    /// protocols differ only in how they answer and push ([`Protocol`]).
    async fn run<P: Protocol, B>(mut self, mut requests: crate::grpc::Requests<P, B>, tx: Tx)
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    {
        let mut snapshots = self.snapshots.clone();
        loop {
            tokio::select! {
                request = requests.next() => {
                    let request = match request {
                        Some(Ok(r)) => r,
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "stream ended");
                            // An undecodable request ends the stream with its reason.
                            let _ = tx.send(Err(e)).await;
                            break;
                        }
                        None => break,
                    };
                    if let Err(status) = P::answer(&mut self, request, &tx).await {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                    self.release_if_idle();
                }
                changed = snapshots.changed() => {
                    if changed.is_err() { break; }
                    let snapshot = snapshots.borrow_and_update().clone();
                    // A re-pointed tag moves its proxies to another revision: this stream
                    // ends, with the reason, and the proxy goes to its new control plane.
                    if let Some(proxy) = &self.proxy
                        && let Err(status) = self.check_served(&snapshot, proxy)
                    {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                    // One translation for the whole push: every type from the same one.
                    let translation = self.translation(&snapshot).await;
                    for t in type_url::PUSH_ORDER {
                        if self.watches.contains_key(*t) && !P::push(&mut self, &snapshot, &translation, t, &tx).await { break; }
                    }
                    self.release_if_idle();
                }
            }
        }
        self.close();
    }

    // ------------------------------------------------------------ state of the world

    async fn on_sotw_request(&mut self, req: DiscoveryRequest, tx: &Tx) -> Result<(), Status> {
        self.identify(req.node.as_ref())?;
        let error = req.error_detail.as_ref().map(|e| e.message.clone());
        let is_response = self.acknowledge(&req.type_url, &req.response_nonce, &req.version_info, error.as_deref());
        if !req.response_nonce.is_empty() && !is_response {
            return Ok(()); // a stale nonce: superseded by a later push
        }
        let interner = self.cache.interner();
        let names = interner.names(req.resource_names.iter().map(|n| interner.name(n)).collect());
        let first = !self.watches.contains_key(&req.type_url);
        let w = self.watches.entry(req.type_url.clone()).or_default();
        let wildcard = names.is_empty() && matches!(req.type_url.as_str(), type_url::LISTENER | type_url::CLUSTER)
            || names.contains("*");
        let changed = first || w.names != names || w.wildcard != wildcard;
        w.names = names;
        w.wildcard = wildcard;
        if changed && error.is_none() {
            let snapshot = self.snapshots.borrow().clone();
            let translation = self.translation(&snapshot).await;
            self.send_sotw(&snapshot, &translation, &req.type_url, true, tx).await;
        }
        Ok(())
    }

    /// Sends the full set of one type if it changed (or `force`); false if the stream is gone.
    async fn send_sotw(
        &mut self,
        snapshot: &Snapshot,
        translation: &Translation,
        type_url: &str,
        force: bool,
        tx: &Tx,
    ) -> bool {
        let all = translation.of(type_url);
        let Some(w) = self.watches.get(type_url) else { return true };
        let chosen: Vec<&Encoded> = all.iter().filter(|(name, _)| w.subscribes(name)).map(|(_, e)| e).collect();
        let digest = hash_all(&chosen);
        if !force && w.digest == Some(digest) {
            return true;
        }
        let bytes: usize = chosen.iter().map(|e| e.any.value.len()).sum();
        // The slot first, the encoding after: a stream waiting for its turn holds none.
        if !self.take_push_slot(bytes, translation.bytes()).await {
            return false;
        }
        let version = format!("{}-{digest:016x}", snapshot.version);
        let nonce = self.next_nonce();
        let count = chosen.len();
        if let Some(w) = self.watches.get_mut(type_url) {
            w.digest = Some(digest);
        }
        let fields = DiscoveryResponse {
            version_info: version.clone(),
            type_url: type_url.to_owned(),
            nonce: nonce.clone(),
            control_plane: Some((*self.control_plane).clone()),
            ..Default::default()
        };
        let response = crate::wire::sotw(&fields, &chosen);
        self.record_sent(type_url, &version, nonce, count, snapshot.version);
        tx.send(response).await.is_ok()
    }

    // ------------------------------------------------------------ delta

    async fn on_delta_request(&mut self, req: DeltaDiscoveryRequest, tx: &Tx) -> Result<(), Status> {
        self.identify(req.node.as_ref())?;
        let error = req.error_detail.as_ref().map(|e| e.message.clone());
        let version = self.watches.get(&req.type_url).map(|w| w.version.clone()).unwrap_or_default();
        self.acknowledge(&req.type_url, &req.response_nonce, &version, error.as_deref());
        let first = !self.watches.contains_key(&req.type_url);
        let interner = self.cache.interner();
        let w = self.watches.entry(req.type_url.clone()).or_default();
        if first {
            w.wildcard = req.resource_names_subscribe.is_empty()
                && matches!(req.type_url.as_str(), type_url::LISTENER | type_url::CLUSTER);
            // Resources the proxy already holds (after a reconnect) need not be resent.
            for (name, v) in &req.initial_resource_versions {
                if let Ok(h) = u64::from_str_radix(v, 16) {
                    w.held.set(interner.name(name), Some(h));
                }
            }
        }
        let mut changed = first;
        if !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty() {
            let wildcard = w.wildcard;
            let mut names = (*w.names).clone();
            let wildcard_on = req.resource_names_subscribe.iter().any(|n| n == "*");
            let wildcard_off = req.resource_names_unsubscribe.iter().any(|n| n == "*");
            if (wildcard_on && !wildcard) || (wildcard_off && wildcard) {
                // What counts as subscribed changes wholesale: hold what is held by name.
                w.held.detach(|n| wildcard || names.contains(n));
                w.wildcard = wildcard_on;
                changed |= wildcard_on;
            }
            for name in &req.resource_names_subscribe {
                if name == "*" || names.contains(name.as_str()) {
                    continue;
                }
                changed = true;
                let name = interner.name(name);
                if !w.wildcard {
                    w.held.subscribe(name.clone());
                }
                names.insert(name);
            }
            for name in req.resource_names_unsubscribe.iter().filter(|n| *n != "*") {
                let name = interner.name(name);
                names.remove(&name);
                w.held.set(name, None);
            }
            if *w.names != names {
                w.names = interner.names(names);
            }
        }
        // New subscriptions are answered from the full set, not from the changes (also
        // when they come with a NACK, and the answer waits for the next push).
        if changed && let Some(w) = self.watches.get_mut(&req.type_url) {
            w.synced = None;
        }
        if changed && error.is_none() {
            let snapshot = self.snapshots.borrow().clone();
            let translation = self.translation(&snapshot).await;
            self.send_delta(&snapshot, &translation, &req.type_url, first, tx).await;
        }
        Ok(())
    }

    /// Sends what changed in one type since the last response (or, with `force`, a
    /// response even if nothing did); false if the stream is gone.
    async fn send_delta(
        &mut self,
        snapshot: &Snapshot,
        translation: &Translation,
        type_url: &str,
        force: bool,
        tx: &Tx,
    ) -> bool {
        let all = translation.of(type_url);
        let Some(w) = self.watches.get(type_url) else { return true };
        // The common case: this stream is in sync with the version the class's changes are
        // relative to, so only the changed names need looking at.
        if !force
            && let Some(changes) = translation.changes(type_url)
            && w.synced == Some(changes.since)
            && changes.are_from(w.held.base())
        {
            let updated: Vec<(&Arc<str>, &Encoded)> =
                changes.updated().filter(|n| w.subscribes(n)).filter_map(|n| all.get_key_value(n.as_str())).collect();
            let removed: Vec<String> = changes.removed().filter(|n| w.holds(n).is_some()).cloned().collect();
            if let Some(w) = self.watches.get_mut(type_url) {
                w.synced = Some(snapshot.version);
                let changed = changes.updated().chain(changes.removed()).map(String::as_str);
                w.held.advance(translation.maps(type_url), changed);
            }
            if updated.is_empty() && removed.is_empty() {
                return true;
            }
            let delta = Delta { resources: updated, removed, count: all.len() };
            return self.send_delta_response(snapshot, translation, type_url, delta, tx).await;
        }
        // A large type is compared in full only once this stream holds its push slot: a
        // thousand streams waiting their turn hold no tables of what they will send.
        let size: usize = all.iter().map(|(_, e)| e.any.value.len()).sum();
        if !self.take_push_slot(size, translation.bytes()).await {
            return false;
        }
        let Some(w) = self.watches.get(type_url) else { return true };
        let wanted: BTreeMap<&str, (&Arc<str>, &Encoded)> =
            all.iter().filter(|(name, _)| w.subscribes(name)).map(|(name, e)| (&**name, (name, e))).collect();
        let updated: Vec<(&Arc<str>, &Encoded)> =
            wanted.values().filter(|(name, e)| w.holds(name) != Some(e.hash)).copied().collect();
        let removed: Vec<String> =
            w.held.names(|n| w.subscribes(n)).filter(|n| !wanted.contains_key(&***n)).map(|n| n.to_string()).collect();
        // A subscribed name that does not exist is reported as removed, so the proxy stops waiting for it.
        let missing: Vec<String> = if w.wildcard {
            Vec::new()
        } else {
            w.names
                .iter()
                .filter(|n| !wanted.contains_key(&***n) && w.holds(n).is_none())
                .map(|n| n.to_string())
                .collect()
        };
        // Either way the proxy ends up holding exactly the subscribed part of this
        // translation: that is all there is to record.
        if let Some(w) = self.watches.get_mut(type_url) {
            w.held.reset(translation.maps(type_url));
            w.synced = Some(snapshot.version);
        }
        if updated.is_empty() && removed.is_empty() && missing.is_empty() && !force {
            return true;
        }
        let delta =
            Delta { resources: updated, removed: removed.into_iter().chain(missing).collect(), count: wanted.len() };
        self.send_delta_response(snapshot, translation, type_url, delta, tx).await
    }

    async fn send_delta_response(
        &mut self,
        snapshot: &Snapshot,
        translation: &Translation,
        type_url: &str,
        delta: Delta<'_>,
        tx: &Tx,
    ) -> bool {
        let Delta { resources, removed, count } = delta;
        // The slot first, the encoding after: a stream waiting for its turn holds none.
        let bytes: usize = resources.iter().map(|(_, e)| e.any.value.len()).sum();
        if !self.take_push_slot(bytes, translation.bytes()).await {
            return false;
        }
        let version = format!("{}", snapshot.version);
        let nonce = self.next_nonce();
        let fields = DeltaDiscoveryResponse {
            system_version_info: version.clone(),
            type_url: type_url.to_owned(),
            removed_resources: removed,
            nonce: nonce.clone(),
            control_plane: Some((*self.control_plane).clone()),
            ..Default::default()
        };
        let response = crate::wire::delta(&fields, &resources);
        self.record_sent(type_url, &version, nonce, count, snapshot.version);
        tx.send(response).await.is_ok()
    }

    fn close(&mut self) {
        if let Some(p) = &self.proxy {
            tracing::info!(proxy = %p.id, "proxy disconnected");
            self.metrics.connected(-1);
        }
        self.status.remove(self.id);
    }
}

fn hash_all(items: &[&Encoded]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for e in items {
        e.hash.hash(&mut h);
    }
    h.finish()
}
