//! The HTTP connection manager: serves HTTP/1.1 and HTTP/2 (h2c) connections and runs
//! each request through its phases — match route, local filters (CORS, fault),
//! then redirect, direct response or forward.

mod filters;
pub(crate) mod forward;
pub(crate) mod hpack;
pub(crate) mod maps;
pub(crate) mod names;
pub mod normalize;
mod observe;
mod server;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Shared;
use crate::body::{Body, Inbound};
use crate::model::listener::{Codec, HttpSpec, RouteSource};
use crate::model::route::{Action, RouteTable};
use crate::reply::{Flags, LocalReply};
use crate::stats::HttpStats;

/// What a request knows about its connection.
#[derive(Debug)]
pub struct Connection {
    /// The proxy.
    pub shared: Arc<Shared>,
    /// The connection manager's configuration.
    pub spec: Arc<HttpSpec>,
    /// The client.
    pub peer: SocketAddr,
    /// Where the client connected to (the original destination when captured).
    pub destination: SocketAddr,
    /// Counters.
    pub stats: Arc<HttpStats>,
    /// Requests in flight on this connection.
    pub active: std::sync::atomic::AtomicU32,
    /// When the last request ended (for the idle timeout).
    pub last_request_end: std::sync::Mutex<tokio::time::Instant>,
    /// The client's certificate, when the connection is TLS with a client certificate.
    pub peer_certificate: Option<crate::listeners::PeerCertificate>,
    /// Whether the downstream connection is TLS.
    pub tls: bool,
    /// The TLS server name the client asked for.
    pub sni: Option<String>,
}

impl Connection {
    /// A connection's request context.
    pub fn new(shared: Arc<Shared>, spec: Arc<HttpSpec>, peer: SocketAddr, destination: SocketAddr) -> Connection {
        let stats = shared.stats.http(&spec.stat_prefix);
        Connection {
            shared,
            spec,
            peer,
            destination,
            stats,
            active: std::sync::atomic::AtomicU32::new(0),
            last_request_end: std::sync::Mutex::new(tokio::time::Instant::now()),
            peer_certificate: None,
            tls: false,
            sni: None,
        }
    }

    /// When the connection becomes idle long enough to close, if it has no request now.
    fn idle_deadline(&self) -> Option<tokio::time::Instant> {
        let idle = self.spec.idle_timeout?;
        let last = *self.last_request_end.lock().ok()?;
        Some(last + idle)
    }
}

/// Serves one downstream connection until it closes or the proxy drains.
pub async fn serve<I>(conn: Arc<Connection>, mut io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    conn.stats.cx_total.fetch_add(1, Ordering::Relaxed);
    conn.stats.cx_active.fetch_add(1, Ordering::Relaxed);
    let stats = conn.stats.clone();
    // Held while the connection lives: the proxy's drain waits for every one to go.
    let mut drain = conn.shared.drain.subscribe();
    // A connection accepted while the proxy drains is closed at once.
    if !*drain.borrow_and_update() {
        if conn.spec.codec == Codec::Http2 {
            serve_hyper(conn, io, &mut drain).await;
        } else {
            let mut read = bytes::BytesMut::new();
            if let server::Ended::Handoff = server::serve(&conn, &mut io, &mut read, &drain).await {
                serve_hyper(conn, Rewind { read: read.freeze(), io }, &mut drain).await;
            }
        }
    }
    drop(drain);
    stats.cx_active.fetch_sub(1, Ordering::Relaxed);
}

/// Serves a connection with hyper's server: HTTP/2, and HTTP/1.1 from the first request
/// weft's own server hands over.
async fn serve_hyper<I>(conn: Arc<Connection>, io: I, drain: &mut tokio::sync::watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let spec = conn.spec.clone();
    let state = conn.clone();
    let service = service_fn(move |req: Request<Incoming>| handle(conn.clone(), req.map(Inbound::Streamed), None));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(spec.headers_timeout.unwrap_or(Duration::from_secs(60)))
        // No `max_headers`: hyper's default is Envoy's, 100 headers; set explicitly, the
        // same limit makes hyper fill room for 100 headers on every request.
        .max_buf_size(spec.max_headers_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(spec.max_headers_bytes).unwrap_or(u32::MAX));
    let builder = match spec.codec {
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
        Codec::Auto => builder,
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    // Once set, the connection finishes its requests and closes (HTTP/1: after the
    // current response; HTTP/2: GOAWAY, in-flight streams complete). A connection handed
    // over while the proxy drains, or after its connection manager was replaced, closes
    // after the request it was handed over for (which is already read, so not idle).
    let mut closing = *drain.borrow() || spec.retired.load(Ordering::Relaxed);
    if closing {
        connection.as_mut().graceful_shutdown();
    }
    let signals = Arc::new(Signals::default());
    let signal_waker = Waker::from(signals.clone());
    // When the idle deadline passed with requests in flight: the next look, an idle
    // period later (not at once, which would spin until they end).
    let mut look_again: Option<tokio::time::Instant> = None;
    loop {
        // Envoy's idle timeout: no request for this long closes the connection.
        let deadline = state.idle_deadline().map(|d| look_again.map_or(d, |later| d.max(later)));
        let retired = spec.retire_notify.notified();
        tokio::pin!(retired);
        retired.as_mut().enable();
        // A replaced connection manager's connections close, so that the client's
        // next request meets the new configuration: idle ones at once, busy ones
        // when their requests are done.
        if !closing && spec.retired.load(Ordering::Relaxed) {
            if state.active.load(Ordering::Relaxed) == 0 {
                break;
            }
            connection.as_mut().graceful_shutdown();
            closing = true;
        }
        let drained = drain.changed();
        let idle_timer = sleep_until_or_forever(deadline);
        tokio::pin!(drained, idle_timer);
        // The connection is polled on every wake-up; its signals only when one of
        // them woke the task (each new set once, so that it can register).
        signals.fired.store(true, Ordering::Release);
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                return Poll::Ready(Event::Done(result));
            }
            if !signals.woken(cx.waker()) {
                return Poll::Pending;
            }
            let mut own = Context::from_waker(&signal_waker);
            if !closing && drained.as_mut().poll(&mut own).is_ready() {
                return Poll::Ready(Event::Drain);
            }
            if !closing && retired.as_mut().poll(&mut own).is_ready() {
                return Poll::Ready(Event::Retired);
            }
            if idle_timer.as_mut().poll(&mut own).is_ready() {
                return Poll::Ready(Event::Idle);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Done(result) => {
                if let Err(e) = result {
                    tracing::debug!("downstream connection ended: {e}");
                }
                break;
            }
            Event::Drain => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            Event::Retired => continue,
            Event::Idle => {
                let idle = state.active.load(Ordering::Relaxed) == 0
                    && state.idle_deadline().is_some_and(|d| d <= tokio::time::Instant::now());
                if idle {
                    break;
                }
                look_again = if state.active.load(Ordering::Relaxed) > 0 {
                    spec.idle_timeout.map(|t| tokio::time::Instant::now() + t)
                } else {
                    None
                };
            }
        }
    }
}

/// A connection with bytes already read from it, which are read again first.
struct Rewind<I> {
    read: bytes::Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.read.is_empty() {
            return std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// What ended one wait of a connection's loop.
enum Event<E> {
    /// The connection is done.
    Done(Result<(), E>),
    /// The proxy drains.
    Drain,
    /// The connection manager was replaced.
    Retired,
    /// The idle deadline passed.
    Idle,
}

/// Wakes a connection's task for one of its signals (drain, retirement, idle deadline)
/// and notes it, so that the signals are polled only then rather than on each of the
/// several wake-ups every request brings.
#[derive(Default)]
struct Signals {
    fired: std::sync::atomic::AtomicBool,
    task: std::sync::Mutex<Option<Waker>>,
}

impl Signals {
    /// Keeps the task's waker; whether a signal fired since the last look.
    fn woken(&self, task: &Waker) -> bool {
        if let Ok(mut kept) = self.task.lock()
            && !kept.as_ref().is_some_and(|k| k.will_wake(task))
        {
            *kept = Some(task.clone());
        }
        self.fired.swap(false, Ordering::AcqRel)
    }
}

impl std::task::Wake for Signals {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        if let Ok(task) = self.task.lock()
            && let Some(task) = task.as_ref()
        {
            task.wake_by_ref();
        }
    }
}

async fn sleep_until_or_forever(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Whether the request is gRPC (local replies are then gRPC statuses).
fn is_grpc(req: &Request<Inbound>) -> bool {
    req.headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Runs a request through the connection manager. `received_peer` is the caller's peer
/// metadata when the server has already taken it out of the headers.
async fn handle(
    conn: Arc<Connection>,
    mut req: Request<Inbound>,
    received_peer: Option<bytes::Bytes>,
) -> Result<Response<Body>, Infallible> {
    conn.stats.rq_total.fetch_add(1, Ordering::Relaxed);
    conn.stats.rq_active.fetch_add(1, Ordering::Relaxed);
    conn.active.fetch_add(1, Ordering::Relaxed);
    let in_use = InUse(conn.clone());
    let grpc = is_grpc(&req);
    let http2 = req.version() == hyper::Version::HTTP_2;
    // The caller's peer metadata never reaches the application.
    let peer = match conn.spec.reporter {
        crate::telemetry::Reporter::Destination => match received_peer {
            Some(metadata) => Some(conn.shared.metrics.peer(&metadata)),
            None => conn.shared.metrics.take_peer(req.headers_mut()),
        },
        crate::telemetry::Reporter::Source => None,
    };
    let mut observed = observe::Observed::default();
    if let Some(tracer) = &conn.spec.tracing {
        // The request id is the span's `guid:x-request-id`.
        if !req.headers().contains_key(names::X_REQUEST_ID) {
            req.headers_mut().insert(names::X_REQUEST_ID, forward::request_id());
        }
        observed.span = tracer.begin(&mut req, conn.peer, conn.tls, &conn.shared.config.node);
    }
    // Metrics, access logs and spans, when the connection manager has them.
    let start =
        (conn.spec.metrics || !conn.spec.access_logs.is_empty() || observed.span.as_ref().is_some_and(|s| s.sampled()))
            .then(|| observe::Start::new(&conn, &req, grpc, peer));
    // Routing's future is large (it holds the upstream exchange, about 4 KB); boxed, the
    // request's own future stays small. HTTP/2 moves that one into each stream's task,
    // several times: unboxed, the copies cost an HTTP/2 request from 4 % to 100 % more
    // instructions, depending on how the compiler laid the futures out.
    let (response, flags) = match Box::pin(route(&conn, req, &mut observed)).await {
        Ok(r) => (r, observed.flags),
        Err(reply) => {
            if reply.flags == Flags::NO_ROUTE {
                conn.stats.no_route.fetch_add(1, Ordering::Relaxed);
            }
            let flags = reply.flags;
            (reply.response(grpc), flags)
        }
    };
    let mut response = match start {
        Some(start) => start.finish(&conn, observed, response, flags),
        None => response,
    };
    if http2 {
        hpack::detach_values(response.headers_mut());
    }
    let class = usize::from(response.status().as_u16() / 100).min(5);
    conn.stats.rq_by_class[class].fetch_add(1, Ordering::Relaxed);
    conn.stats.rq_active.fetch_sub(1, Ordering::Relaxed);
    Ok(response.map(|inner| http_body_util::BodyExt::boxed(Held { inner, http2, _in_use: in_use })))
}

/// A request counted on its connection until its response has been sent (or abandoned):
/// the idle timeout and a retired connection manager wait for responses still streaming.
struct InUse(Arc<Connection>);

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut last) = self.0.last_request_end.lock() {
            *last = tokio::time::Instant::now();
        }
    }
}

/// A response body that keeps its request counted on the connection while it is sent.
struct Held {
    inner: Body,
    /// Trailers going out on HTTP/2 have their values detached (see [`hpack`]).
    http2: bool,
    _in_use: InUse,
}

impl hyper::body::Body for Held {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, crate::body::BoxError>>> {
        let mut polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if self.http2
            && let Poll::Ready(Some(Ok(frame))) = &mut polled
            && let Some(trailers) = frame.trailers_mut()
        {
            hpack::detach_values(trailers);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// `HTTP/1.1`, `HTTP/2`, as Envoy names protocols.
pub fn protocol_name(version: hyper::Version) -> &'static str {
    match version {
        hyper::Version::HTTP_2 => "HTTP/2",
        hyper::Version::HTTP_10 => "HTTP/1.0",
        hyper::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The request's authority: `:authority` (HTTP/2) or `Host`.
pub fn authority(req: &Request<Inbound>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
}

async fn route(
    conn: &Connection,
    mut req: Request<Inbound>,
    observed: &mut observe::Observed,
) -> Result<Response<Body>, LocalReply> {
    // Request smuggling: a message with both framings is refused, not guessed at.
    if req.headers().contains_key(TRANSFER_ENCODING) && req.headers().contains_key(CONTENT_LENGTH) {
        return Err(LocalReply::BAD_REQUEST);
    }
    if conn.spec.normalize_path || conn.spec.merge_slashes {
        let original = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let normalized = normalize::normalize(original, conn.spec.normalize_path, conn.spec.merge_slashes)
            .ok_or(LocalReply::BAD_REQUEST)?;
        if let std::borrow::Cow::Owned(normalized) = normalized
            && normalized != original
        {
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = normalized.parse().ok();
            *req.uri_mut() = hyper::Uri::from_parts(parts).map_err(|_| LocalReply::BAD_REQUEST)?;
        }
    }
    // Read once: authorization, virtual-host matching, redirects and forwarding share it.
    let host = authority(&req);
    let mut auth = None;
    if let Some(jwt) = &conn.spec.jwt {
        let query = req.uri().query().map(str::to_owned);
        match jwt.verify(req.headers_mut(), query.as_deref()) {
            Ok(claims) => auth = claims,
            Err(refusal) => return Err(LocalReply::new(401, refusal, Flags::default())),
        }
    }
    if !conn.spec.rbac.is_empty() {
        authorize(conn, &req, host.as_deref().unwrap_or_default(), auth.as_ref())?;
    }
    let data = conn.shared.data.load_full();
    let table: Arc<RouteTable> = match &conn.spec.routes {
        RouteSource::Inline(t) => t.clone(),
        RouteSource::Rds(name) => data.routes.get(name).cloned().ok_or(LocalReply::NO_ROUTE)?,
    };
    let host = host.ok_or(LocalReply::BAD_REQUEST)?;
    let vhost = table.virtual_host(&host).ok_or(LocalReply::NO_ROUTE)?;
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let route = vhost.routes.iter().find(|r| r.matcher.matches(path, req.headers())).ok_or(LocalReply::NO_ROUTE)?;
    if let (Some(span), Some(decorator)) = (observed.span.as_mut(), &route.decorator) {
        span.decorate(&decorator.operation);
    }

    let cors = if conn.spec.cors { route.cors.as_ref().or(vhost.cors.as_ref()) } else { None };
    let origin = match cors {
        Some(policy) => match filters::cors(policy, &req) {
            filters::CorsOutcome::Preflight(response) => return Ok(response),
            filters::CorsOutcome::Allowed(origin) => Some((policy.clone(), origin)),
            filters::CorsOutcome::NotCors => None,
        },
        None => None,
    };
    let mut flags = Flags::default();
    if conn.spec.fault
        && let Some(fault) = &route.fault
    {
        // Boxed, as are the other waits few requests have (connecting, backing off), so
        // that the future every request carries stays small.
        Box::pin(filters::fault(fault, &mut flags)).await?;
    }
    let mut response = match &route.action {
        Action::Redirect(r) => filters::redirect(r, &req, &host, route.matcher.prefix_len()),
        Action::Direct { status, body } => filters::direct(*status, body),
        Action::Forward(fwd) => {
            forward::forward(
                conn,
                &data,
                req,
                forward::Matched { table: &table, vhost, route, fwd, authority: &host },
                flags,
                observed,
            )
            .await?
        }
    };
    if let Some((policy, origin)) = origin {
        filters::cors_response(&policy, origin, response.headers_mut());
    }
    Ok(response)
}

/// The connection manager's RBAC filters, in order: the first that refuses answers 403.
fn authorize(
    conn: &Connection,
    req: &Request<Inbound>,
    authority: &str,
    auth: Option<&crate::model::jwt::AuthMetadata>,
) -> Result<(), LocalReply> {
    let subject = crate::model::rbac::Subject {
        peer: Some(conn.peer),
        destination: Some(conn.destination),
        principal: conn.peer_certificate.as_ref().and_then(|c| c.uri.as_deref()),
        sni: conn.sni.as_deref(),
        http: Some(crate::model::rbac::HttpSubject {
            method: req.method().as_str(),
            authority,
            path: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            headers: req.headers(),
        }),
        metadata: auth,
    };
    for filter in &conn.spec.rbac {
        let (allowed, policy) = filter.allows(&subject);
        if !allowed {
            conn.shared.stats.rbac_denied.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(peer = %conn.peer, ?policy, "request denied by RBAC");
            return Err(LocalReply::new(403, "RBAC: access denied", Flags::default()));
        }
    }
    Ok(())
}
