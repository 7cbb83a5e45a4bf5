//! The router: forwards a request to its route's cluster — cluster choice, header and
//! path changes, mirrors, then attempts with retries, timeouts and circuit breakers.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_LENGTH, HOST, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::connect::capture_connection;

use super::{Connection, names};
use crate::body::{Body, BoxError, Inbound, full};
use crate::model::cluster::Discovery;
use crate::model::route::{
    Clusters, Forward, HashPolicy, RetryPolicy, Route, RouteTable, VirtualHost, WeightedCluster,
};
use crate::model::route::{chance, form_pairs};
use crate::reply::{Flags, LocalReply};
use crate::state::DataPlane;
use crate::telemetry::Reporter;
use crate::upstream::connect::Uses;
use crate::upstream::lb::hash_of;
use crate::upstream::{Host, Outcome, Upstream, h1};

/// Bodies up to this size are buffered so that a request can be retried or mirrored.
const MAX_BUFFERED_BODY: u64 = 1024 * 1024;

/// A count of milliseconds as a header value; the common small ones made once.
fn millis(n: u64) -> HeaderValue {
    static SMALL: std::sync::LazyLock<Vec<HeaderValue>> =
        std::sync::LazyLock::new(|| (0..100u64).map(HeaderValue::from).collect());
    usize::try_from(n).ok().and_then(|n| SMALL.get(n)).cloned().unwrap_or_else(|| HeaderValue::from(n))
}

/// Headers that belong to one connection, never forwarded. A static, not a constant: a
/// constant array is built and dropped again at each use.
static HOP_BY_HOP: [HeaderName; 6] = [
    hyper::header::CONNECTION,
    names::KEEP_ALIVE,
    names::PROXY_CONNECTION,
    hyper::header::TRANSFER_ENCODING,
    hyper::header::TE,
    hyper::header::UPGRADE,
];

/// A retry's attempt count, as a static so that requests can borrow it.
static ATTEMPT_COUNT: HeaderName = names::X_ENVOY_ATTEMPT_COUNT;

/// The route a request matched, with its enclosing virtual host and table.
pub struct Matched<'a> {
    /// The route table.
    pub table: &'a RouteTable,
    /// The virtual host.
    pub vhost: &'a VirtualHost,
    /// The route.
    pub route: &'a Route,
    /// Its forwarding action.
    pub fwd: &'a Forward,
    /// The request's authority, as routing read it.
    pub authority: &'a str,
}

/// The request body, kept for replay when it is small enough.
enum Replay {
    /// Read whole before the first attempt (mirrored requests, empty bodies).
    Buffered(Bytes),
    /// Streamed to the first attempt while a copy is kept for retries.
    Recorded { first: Option<Received>, copy: Arc<Mutex<Recording>> },
    /// Streamed once; no retry is possible.
    Streaming(Option<Received>),
}

/// The frames of a request body as they went upstream.
#[derive(Default)]
struct Recording {
    frames: Vec<Frame<Bytes>>,
    size: usize,
    complete: bool,
    overflow: bool,
}

impl Replay {
    fn for_attempt(&mut self) -> Option<Body> {
        match self {
            Replay::Buffered(b) => Some(full(b.clone())),
            Replay::Streaming(s) => s.take().map(|r| r.map_err(BoxError::from).boxed()),
            Replay::Recorded { first, copy } => {
                if let Some(incoming) = first.take() {
                    return Some(Tee { inner: incoming, copy: copy.clone() }.map_err(BoxError::from).boxed());
                }
                let recording = copy.lock().ok()?;
                if !recording.complete || recording.overflow {
                    return None;
                }
                let frames: Vec<Result<Frame<Bytes>, BoxError>> = recording
                    .frames
                    .iter()
                    .map(|f| match f.data_ref() {
                        Some(d) => Ok(Frame::data(d.clone())),
                        None => Ok(Frame::trailers(f.trailers_ref().cloned().unwrap_or_default())),
                    })
                    .collect();
                Some(StreamBody::new(futures_stream(frames)).boxed())
            }
        }
    }

    /// The body, when it has been read whole.
    fn whole(&self) -> Option<Bytes> {
        match self {
            Replay::Buffered(b) => Some(b.clone()),
            _ => None,
        }
    }

    fn replayable(&self) -> bool {
        match self {
            Replay::Buffered(_) => true,
            Replay::Streaming(_) => false,
            Replay::Recorded { first: Some(_), .. } => true,
            Replay::Recorded { first: None, copy } => copy.lock().is_ok_and(|r| r.complete && !r.overflow),
        }
    }
}

fn futures_stream(
    frames: Vec<Result<Frame<Bytes>, BoxError>>,
) -> impl tokio_stream::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + Sync + 'static {
    tokio_stream::iter(frames)
}

/// Forwards a body while keeping a copy, up to [`MAX_BUFFERED_BODY`].
struct Tee {
    inner: Received,
    copy: Arc<Mutex<Recording>>,
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Ok(mut recording) = self.copy.lock() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) if !recording.overflow => {
                    let copy = match frame.data_ref() {
                        Some(d) => Frame::data(d.clone()),
                        None => Frame::trailers(frame.trailers_ref().cloned().unwrap_or_default()),
                    };
                    recording.size += copy.data_ref().map_or(0, Bytes::len);
                    if recording.size as u64 > MAX_BUFFERED_BODY {
                        recording.overflow = true;
                        recording.frames.clear();
                    } else {
                        recording.frames.push(copy);
                    }
                    // Senders stop polling once the body says it has ended.
                    recording.complete = self.inner.is_end_stream();
                }
                Poll::Ready(None) => recording.complete = true,
                _ if self.inner.is_end_stream() => recording.complete = true,
                Poll::Ready(Some(Err(_))) => recording.overflow = true,
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Forwards a matched request.
pub async fn forward(
    conn: &Connection,
    data: &DataPlane,
    mut req: Request<Inbound>,
    m: Matched<'_>,
    mut flags: Flags,
    observed: &mut super::observe::Observed,
) -> Result<Response<Body>, LocalReply> {
    let start = Instant::now();
    let fwd = m.fwd;
    let (cluster, weighted) = choose_cluster(&fwd.clusters);
    let upstream = data.clusters.get(cluster).cloned().ok_or(LocalReply::NO_CLUSTER)?;
    observed.cluster = Some(upstream.spec.clone());
    observed.route = Some(m.route.name.clone());
    // Istio's peer metadata exchange, with services in the mesh.
    let exchange = upstream.spec.exchange && conn.spec.metrics && conn.spec.reporter == Reporter::Source;
    let hash = request_hash(&fwd.hash_policy, &req, conn.peer);
    let upgrade = upgrade_of(req.headers());
    if let Some(u) = &upgrade
        && !u.to_str().is_ok_and(|u| conn.spec.upgrades.iter().any(|allowed| allowed.eq_ignore_ascii_case(u)))
    {
        // Envoy refuses upgrades its connection manager is not configured for.
        return Err(LocalReply::UPGRADE_FAILED);
    }
    let downstream_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    forward_client_cert(conn, &mut parts.headers);
    if exchange {
        conn.shared.metrics.offer(&mut parts.headers);
    }
    // Request headers: the most specific level first, as Envoy applies them.
    if let Some(w) = weighted {
        w.request_headers.apply(&mut parts.headers);
    }
    m.route.request_headers.apply(&mut parts.headers);
    m.vhost.request_headers.apply(&mut parts.headers);
    m.table.request_headers.apply(&mut parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    if let Some(u) = &upgrade {
        parts.headers.insert(hyper::header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(hyper::header::UPGRADE, u.clone());
    }
    if !parts.headers.contains_key(names::X_FORWARDED_PROTO) {
        let proto = if conn.tls { "https" } else { "http" };
        parts.headers.insert(names::X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !parts.headers.contains_key(names::X_REQUEST_ID) {
        parts.headers.insert(names::X_REQUEST_ID, request_id());
    }
    if let Some(span) = &observed.span {
        let decorator = m.route.decorator.as_ref().filter(|d| d.propagate).map(|d| d.operation.as_str());
        crate::trace::inject(span, decorator, &mut parts.headers);
    }
    if let Some(t) = fwd.timeout {
        parts.headers.insert(names::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, HeaderValue::from(t.as_millis() as u64));
    }
    let authority = match &fwd.host_rewrite {
        Some(h) => h.to_str().unwrap_or(m.authority),
        None => m.authority,
    };
    let uri = upstream_uri(&parts.uri, authority, fwd, m.route).ok_or(LocalReply::BAD_REQUEST)?;
    if upstream.spec.http2 {
        parts.headers.remove(HOST);
    } else if !is_only_host(&parts.headers, authority) {
        parts.headers.insert(HOST, HeaderValue::from_str(authority).map_err(|_| LocalReply::BAD_REQUEST)?);
    }

    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    observed.request_body = Some(received.clone());
    let mut body = prepare_body(body, &parts.headers, fwd, received).await?;
    if let Replay::Buffered(bytes) = &body {
        for (mirror, share) in &fwd.mirrors {
            if chance(*share)
                && let Some(target) = data.clusters.get(mirror)
            {
                shadow(target.clone(), &parts, &uri, bytes.clone());
            }
        }
    }

    let attempts = attempts(
        &upstream,
        conn.destination,
        &mut parts,
        &uri,
        &mut body,
        fwd.retry.as_ref(),
        hash,
        exchange,
        &mut flags,
    );
    let result = match fwd.timeout {
        Some(t) => match tokio::time::timeout(t, attempts).await {
            Ok(r) => r,
            Err(_) => {
                upstream.stats.rq_timeout.fetch_add(1, Ordering::Relaxed);
                Err(LocalReply::TIMEOUT)
            }
        },
        None => attempts.await,
    };
    let (mut response, answered, peer) = result?;
    observed.upstream = Some(answered);
    if exchange {
        observed.peer = match peer {
            Some(metadata) => Some(conn.shared.metrics.peer(&metadata)),
            None => conn.shared.metrics.take_peer(response.headers_mut()),
        };
    }
    if let Some(span) = observed.span.as_mut() {
        let operation = m.route.decorator.as_ref().filter(|d| d.propagate).map(|d| d.operation.as_str());
        span.on_response(operation, response.headers_mut());
    }

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(down) = downstream_upgrade {
            let up = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(down, up));
        }
    } else {
        strip_hop_by_hop(response.headers_mut());
    }
    let headers = response.headers_mut();
    if let Some(w) = weighted {
        w.response_headers.apply(headers);
    }
    m.route.response_headers.apply(headers);
    m.vhost.response_headers.apply(headers);
    m.table.response_headers.apply(headers);
    headers.insert(names::X_ENVOY_UPSTREAM_SERVICE_TIME, millis(start.elapsed().as_millis() as u64));
    observed.flags = flags;
    super::maps::recycle(parts.headers);
    Ok(response)
}

fn choose_cluster(clusters: &Clusters) -> (&str, Option<&WeightedCluster>) {
    match clusters {
        Clusters::One(name) => (name, None),
        Clusters::Weighted(list, total) => {
            let mut roll = fastrand::u64(..*total);
            for c in list {
                if roll < u64::from(c.weight) {
                    return (&c.name, Some(c));
                }
                roll -= u64::from(c.weight);
            }
            // Unreachable while the weights sum to `total`; the last cluster is a safe answer.
            list.last().map_or(("", None), |c| (&c.name, Some(c)))
        }
    }
}

fn request_hash(policies: &[HashPolicy], req: &Request<Inbound>, peer: SocketAddr) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for p in policies {
        let value = match p {
            HashPolicy::Header(name) => req.headers().get(name).map(|v| hash_of(v.as_bytes())),
            HashPolicy::Cookie { name, .. } => cookie(req.headers(), name).map(hash_of),
            HashPolicy::SourceIp => Some(hash_of(peer.ip())),
            HashPolicy::Query(name) => req
                .uri()
                .query()
                .and_then(|q| form_pairs(q).into_iter().find(|(k, _)| k == name))
                .map(|(_, v)| hash_of(v)),
        };
        if let Some(v) = value {
            hash = Some(hash.map_or(v, |h| h.rotate_left(1) ^ v));
        }
    }
    hash
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The upgrade a request asks for (`Connection: upgrade` with `Upgrade: websocket`).
fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_upgrade = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    if connection_upgrade { headers.get(hyper::header::UPGRADE).cloned() } else { None }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: one look at each name is cheaper than six removals.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let te_trailers =
        headers.get(hyper::header::TE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("trailers"));
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(hyper::header::TE, HeaderValue::from_static("trailers"));
    }
}

pub(crate) fn request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_bytes(id.hyphenated().encode_lower(&mut buf).as_bytes()).unwrap_or(HeaderValue::from_static("-"))
}

/// Whether the request's one `Host` header already names `authority`.
fn is_only_host(headers: &HeaderMap, authority: &str) -> bool {
    let mut hosts = headers.get_all(HOST).iter();
    hosts.next().is_some_and(|h| h.as_bytes() == authority.as_bytes()) && hosts.next().is_none()
}

/// The URI the request goes upstream with: the authority it is routed by, and its path
/// and query (rewritten if the route says so; otherwise the request's own, not copied).
fn upstream_uri(downstream: &Uri, authority: &str, fwd: &Forward, route: &Route) -> Option<Uri> {
    let original = downstream.path_and_query();
    let path_and_query = match rewrite_path(original.map_or("/", |p| p.as_str()), fwd, route) {
        Some(rewritten) => PathAndQuery::from_maybe_shared(Bytes::from(rewritten)).ok()?,
        None => original.cloned().unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    let mut parts = hyper::http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(Authority::from_maybe_shared(Bytes::copy_from_slice(authority.as_bytes())).ok()?);
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).ok()
}

/// The path and query after the route's rewrite, if it has one.
fn rewrite_path(original: &str, fwd: &Forward, route: &Route) -> Option<String> {
    let (path, query) = original.split_once('?').map_or((original, None), |(p, q)| (p, Some(q)));
    let new_path = if let Some(prefix) = &fwd.prefix_rewrite {
        let rest = route.matcher.prefix_len().and_then(|n| path.get(n..)).unwrap_or("");
        let joined = format!("{prefix}{rest}");
        // A rewrite to "/" of "/v1/" + "x" must not produce "//x".
        if prefix.ends_with('/') && rest.starts_with('/') { format!("{prefix}{}", &rest[1..]) } else { joined }
    } else if let Some((re, sub)) = &fwd.regex_rewrite {
        re.replace_all(path, sub.as_str()).into_owned()
    } else {
        return None;
    };
    Some(match query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    })
}

/// The request body as it arrives from the client, counted (for metrics and logs).
pub(crate) struct Received {
    inner: Inbound,
    count: Arc<std::sync::atomic::AtomicU64>,
}

impl HttpBody for Received {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn prepare_body(
    body: Inbound,
    headers: &HeaderMap,
    fwd: &Forward,
    count: Arc<std::sync::atomic::AtomicU64>,
) -> Result<Replay, LocalReply> {
    if body.is_end_stream() {
        return Ok(Replay::Buffered(Bytes::new()));
    }
    // A body weft's own HTTP/1.1 server read whole can be replayed as it is.
    if let Some(whole) = body.whole() {
        count.fetch_add(whole.len() as u64, Ordering::Relaxed);
        return Ok(Replay::Buffered(whole));
    }
    let body = Received { inner: body, count };
    let length = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match length {
        // A mirror needs the body before the first attempt starts.
        Some(n) if !fwd.mirrors.is_empty() && n <= MAX_BUFFERED_BODY => {
            let collected =
                Limited::new(body, MAX_BUFFERED_BODY as usize).collect().await.map_err(|_| LocalReply::BAD_REQUEST)?;
            Ok(Replay::Buffered(collected.to_bytes()))
        }
        _ if fwd.retry.is_some() => {
            Ok(Replay::Recorded { first: Some(body), copy: Arc::new(Mutex::new(Recording::default())) })
        }
        _ => Ok(Replay::Streaming(Some(body))),
    }
}

/// Sends a copy of the request to a mirror cluster and forgets the answer; the
/// authority gets Envoy's `-shadow` suffix.
fn shadow(target: Arc<Upstream>, parts: &Parts, uri: &Uri, body: Bytes) {
    let mut headers = parts.headers.clone();
    let authority = uri.authority().map_or(String::new(), |a| {
        let s = a.as_str();
        match s.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => format!("{h}-shadow:{p}"),
            _ => format!("{s}-shadow"),
        }
    });
    let Ok(uri) = Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
    else {
        return;
    };
    if let Ok(v) = HeaderValue::from_str(&authority)
        && !target.spec.http2
    {
        headers.insert(HOST, v);
    }
    let method = parts.method.clone();
    tokio::spawn(async move {
        let set = target.hosts_full();
        let Some(i) = target.pick(&set, None, &[]) else { return };
        let host = set.hosts[i].clone();
        let mut req = Request::new(full(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        *req.version_mut() = if target.spec.http2 { Version::HTTP_2 } else { Version::HTTP_11 };
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(30), host.send(req)).await {
            let _ = resp.into_body().collect().await;
        }
    });
}

/// Why an attempt failed before a response.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Failure {
    Connect,
    Reset,
    PerTryTimeout,
}

impl Failure {
    fn reply(self) -> LocalReply {
        match self {
            Failure::Connect => LocalReply::CONNECT_FAILURE,
            Failure::Reset => LocalReply::RESET,
            Failure::PerTryTimeout => LocalReply::TIMEOUT,
        }
    }

    fn retriable(self, p: &RetryPolicy) -> bool {
        let on = &p.on;
        match self {
            Failure::Connect => on.connect_failure || on.any_5xx || on.gateway_error || on.reset,
            Failure::Reset => on.reset || on.any_5xx || on.gateway_error || on.refused_stream,
            Failure::PerTryTimeout => on.any_5xx || on.gateway_error || on.reset,
        }
    }
}

fn retriable_response(p: &RetryPolicy, status: u16, headers: &HeaderMap) -> bool {
    let on = &p.on;
    if (on.any_5xx && status >= 500)
        || (on.gateway_error && (502..=504).contains(&status))
        || (on.retriable_4xx && status == 409)
        || (on.status_codes && p.status_codes.contains(&status))
    {
        return true;
    }
    let grpc = headers.get(names::GRPC_STATUS).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u32>().ok());
    match grpc {
        Some(1) => on.grpc_cancelled,
        Some(4) => on.grpc_deadline_exceeded,
        Some(8) => on.grpc_resource_exhausted,
        Some(13) => on.grpc_internal,
        Some(14) => on.grpc_unavailable,
        _ => false,
    }
}

/// Envoy's jittered exponential back-off before retry `n` (1-based).
fn backoff(p: &RetryPolicy, n: u32) -> Duration {
    let ceiling = p.backoff_base.saturating_mul(1 << n.min(16)).min(p.backoff_max);
    let millis = ceiling.as_millis().max(1) as u64;
    Duration::from_millis(fastrand::u64(..millis))
}

#[allow(clippy::too_many_arguments)]
async fn attempts(
    upstream: &Arc<Upstream>,
    destination: SocketAddr,
    parts: &mut Parts,
    uri: &Uri,
    body: &mut Replay,
    retry: Option<&RetryPolicy>,
    hash: Option<u64>,
    take_peer: bool,
    flags: &mut Flags,
) -> Result<(Response<Body>, Arc<str>, Option<Bytes>), LocalReply> {
    let mut tried: Vec<usize> = Vec::new();
    let mut retries = 0u32;
    let mut _retry_slot = None;
    // HTTP/1.1 requests whose body is whole go on connections they drive themselves.
    // A streamed body goes through the pool that runs each connection as a task, as do
    // HTTP/2 and upgrades (whose connections outlive the response): its upload must go
    // on even while nobody reads the response. `forward` has already kept `Upgrade` only
    // on upgrades, so its presence is enough to tell.
    let upgrading = parts.headers.contains_key(hyper::header::UPGRADE) || parts.method == Method::CONNECT;
    loop {
        let host = if upstream.spec.discovery == Discovery::OriginalDst {
            upstream.original_dst_host(destination).ok_or(LocalReply::NO_HEALTHY_UPSTREAM)?
        } else {
            let set = upstream.hosts_full();
            let avoid: &[usize] = if retry.is_some_and(|r| r.other_hosts) { &tried } else { &[] };
            let Some(index) = upstream.pick(&set, hash, avoid) else {
                upstream.stats.none_healthy.fetch_add(1, Ordering::Relaxed);
                return Err(LocalReply::NO_HEALTHY_UPSTREAM);
            };
            tried.push(index);
            set.hosts[index].clone()
        };
        let slot = upstream.slot().await.map_err(|_| LocalReply::OVERFLOW)?;
        // A whole body to an HTTP/1.1 host goes on a connection the request drives itself.
        let outgoing = match host.h1.as_ref().filter(|_| !upgrading).zip(body.whole()) {
            Some((pool, whole)) => Outgoing::Driven(pool.clone(), whole),
            None => Outgoing::Pooled(body.for_attempt().ok_or(LocalReply::RESET)?),
        };
        let attempt = (retries > 0).then(|| HeaderValue::from(retries + 1));
        let guard = InFlight::new(upstream.clone(), host.clone(), slot);
        let per_connection = upstream.spec.limits.max_requests_per_connection;
        let sent = async {
            let attempt_body = match outgoing {
                // Written from the request as it is: nothing is copied for the attempt.
                Outgoing::Driven(pool, whole) => {
                    let request = h1::Outbound {
                        method: &parts.method,
                        uri,
                        headers: &parts.headers,
                        extra: attempt.as_ref().map(|v| (&ATTEMPT_COUNT, v)),
                        body: &whole,
                        take_peer,
                    };
                    let (response, peer) = pool.request(request, per_connection).await.map_err(|e| match e {
                        h1::Error::Connect(_) => Failure::Connect,
                        h1::Error::Reset => Failure::Reset,
                    })?;
                    return Ok((response.map(UpstreamBody::Driven), peer));
                }
                Outgoing::Pooled(attempt_body) => attempt_body,
            };
            let mut req = Request::new(attempt_body);
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = uri.clone();
            // Without a retry policy there is only this attempt: it takes the headers.
            // With one, a copy stays for the next attempt and the attempt takes the
            // original, so that its spare room goes on: hyper parses the response into
            // the map it sent.
            *req.headers_mut() = if retry.is_some() {
                let copy = parts.headers.clone();
                std::mem::replace(&mut parts.headers, copy)
            } else {
                std::mem::take(&mut parts.headers)
            };
            *req.version_mut() = if upstream.spec.http2 { Version::HTTP_2 } else { Version::HTTP_11 };
            if let Some(attempt) = attempt {
                req.headers_mut().insert(names::X_ENVOY_ATTEMPT_COUNT, attempt);
            }
            let connection = (per_connection > 0).then(|| capture_connection(&mut req));
            let response =
                host.send(req).await.map_err(|e| if e.is_connect() { Failure::Connect } else { Failure::Reset })?;
            // A connection that has carried its share is not reused.
            if let (Some(connection), Some(uses)) = (&connection, response.extensions().get::<Uses>())
                && uses.0.fetch_add(1, Ordering::Relaxed) + 1 >= per_connection
                && let Some(connected) = connection.connection_metadata().as_ref()
            {
                connected.poison();
            }
            Ok((response.map(UpstreamBody::Pooled), None))
        };
        let result = match retry.and_then(|r| r.per_try_timeout) {
            Some(t) => tokio::time::timeout(t, sent).await.unwrap_or(Err(Failure::PerTryTimeout)),
            None => sent.await,
        };
        // Whether another attempt is possible: retries left and the body can be replayed.
        let retry_left = retry.filter(|r| retries < r.num_retries && body.replayable());
        match result {
            Ok((response, peer)) => {
                let status = response.status().as_u16();
                upstream.record(&host, Outcome::Status(status));
                if let Some(r) = retry
                    && retriable_response(r, status, response.headers())
                {
                    match retry_left.and_then(|_| upstream.retry_slot()) {
                        Some(s) => {
                            _retry_slot = Some(s);
                            drop(response);
                            drop(guard);
                            retries += 1;
                            upstream.stats.rq_retry.fetch_add(1, Ordering::Relaxed);
                            Box::pin(tokio::time::sleep(backoff(r, retries))).await;
                            continue;
                        }
                        None if retries > 0 => *flags |= Flags::RETRY_LIMIT,
                        None => {}
                    }
                }
                let address = host.address.clone();
                let response = response.map(|inner| Tracked { inner, _guard: guard }.boxed());
                return Ok((response, address, peer));
            }
            Err(failure) => {
                drop(guard);
                let outcome =
                    if failure == Failure::PerTryTimeout { Outcome::Timeout } else { Outcome::ConnectFailure };
                upstream.record(&host, outcome);
                if failure == Failure::Connect {
                    upstream.stats.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                }
                if failure == Failure::PerTryTimeout {
                    upstream.stats.rq_timeout.fetch_add(1, Ordering::Relaxed);
                }
                let mut reply = failure.reply();
                if let Some(r) = retry
                    && failure.retriable(r)
                {
                    if let Some(s) = retry_left.and_then(|_| upstream.retry_slot()) {
                        _retry_slot = Some(s);
                        retries += 1;
                        upstream.stats.rq_retry.fetch_add(1, Ordering::Relaxed);
                        Box::pin(tokio::time::sleep(backoff(r, retries))).await;
                        continue;
                    }
                    if retries > 0 {
                        reply.flags |= Flags::RETRY_LIMIT;
                    }
                }
                return Err(reply);
            }
        }
    }
}

/// Holds a request's cluster slot and counts it as active until its response body ends.
struct InFlight {
    upstream: Arc<Upstream>,
    host: Arc<Host>,
    _slot: crate::upstream::Slot,
}

impl InFlight {
    fn new(upstream: Arc<Upstream>, host: Arc<Host>, slot: crate::upstream::Slot) -> InFlight {
        upstream.stats.rq_total.fetch_add(1, Ordering::Relaxed);
        upstream.stats.rq_active.fetch_add(1, Ordering::Relaxed);
        host.active.fetch_add(1, Ordering::Relaxed);
        host.requests.fetch_add(1, Ordering::Relaxed);
        InFlight { upstream, host, _slot: slot }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.upstream.stats.rq_active.fetch_sub(1, Ordering::Relaxed);
        self.host.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How an attempt's request goes upstream.
enum Outgoing {
    /// Whole, on an HTTP/1.1 connection the request drives itself.
    Driven(Arc<h1::Pool>, Bytes),
    /// Through hyper's pool, which runs each connection as a task.
    Pooled(Body),
}

/// An upstream response's body, from either kind of connection pool.
enum UpstreamBody {
    /// From a connection the request drives itself (HTTP/1.1).
    Driven(h1::PooledBody),
    /// From a connection run as a task of its own (HTTP/2, upgrades).
    Pooled(Incoming),
}

/// A response body that keeps its request in flight until it is done.
struct Tracked {
    inner: UpstreamBody,
    _guard: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.inner {
            UpstreamBody::Driven(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            UpstreamBody::Pooled(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            UpstreamBody::Driven(b) => b.is_end_stream(),
            UpstreamBody::Pooled(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            UpstreamBody::Driven(b) => b.size_hint(),
            UpstreamBody::Pooled(b) => b.size_hint(),
        }
    }
}

async fn tunnel(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) {
    let (Ok(down), Ok(up)) = (down.await, up.await) else { return };
    let mut down = hyper_util::rt::TokioIo::new(down);
    let mut up = hyper_util::rt::TokioIo::new(up);
    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
}

/// `x-forwarded-client-cert`, as the connection manager's `forward_client_cert_details`
/// says: the client's certificate as `By=<our SPIFFE id>;Hash=<sha256>;Subject="";URI=<its
/// SPIFFE id>`, the form Istio's sidecars forward to applications.
fn forward_client_cert(conn: &Connection, headers: &mut HeaderMap) {
    use crate::model::listener::ForwardClientCert as F;
    const XFCC: HeaderName = names::X_FORWARDED_CLIENT_CERT;
    let mode = conn.spec.forward_client_cert;
    let Some(cert) = &conn.peer_certificate else {
        if mode != F::AlwaysForwardOnly {
            headers.remove(XFCC);
        }
        return;
    };
    let current = || {
        let by = conn.shared.identity.current().map(|w| w.spiffe_id.clone()).unwrap_or_default();
        let mut value = format!("By={by};Hash={};Subject=\"\"", cert.hash);
        if let Some(uri) = &cert.uri {
            value.push_str(";URI=");
            value.push_str(uri);
        }
        HeaderValue::from_str(&value).ok()
    };
    match mode {
        F::Sanitize => {
            headers.remove(XFCC);
        }
        F::ForwardOnly | F::AlwaysForwardOnly => {}
        F::SanitizeSet => {
            headers.remove(XFCC);
            if let Some(v) = current() {
                headers.insert(XFCC, v);
            }
        }
        F::AppendForward => {
            let previous: Vec<String> =
                headers.get_all(XFCC).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect();
            headers.remove(XFCC);
            let mut all = previous.join(",");
            if let Some(v) = current().and_then(|v| v.to_str().ok().map(str::to_owned)) {
                if !all.is_empty() {
                    all.push(',');
                }
                all.push_str(&v);
            }
            if let Ok(v) = HeaderValue::from_str(&all)
                && !all.is_empty()
            {
                headers.insert(XFCC, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn names(map: &HeaderMap) -> Vec<&str> {
        map.keys().map(HeaderName::as_str).collect()
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_do_not_go_on() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers, deflate"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut map);
        assert_eq!(names(&map), ["x-kept", "te"]);
        assert_eq!(map.get("te").map(HeaderValue::as_bytes), Some(&b"trailers"[..]), "only TE: trailers stays");

        let mut plain = headers(&[("host", "a"), ("x-kept", "1")]);
        strip_hop_by_hop(&mut plain);
        assert_eq!(names(&plain), ["host", "x-kept"]);
        let mut deflate = headers(&[("te", "deflate")]);
        strip_hop_by_hop(&mut deflate);
        assert!(deflate.is_empty());
    }
}
