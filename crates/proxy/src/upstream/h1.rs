//! HTTP/1.1 connections to one host, driven by the requests that use them.
//!
//! A pooled connection has no task of its own. The request that takes it polls it while
//! waiting for the response head, and the response body polls it while the client reads
//! the body. Both happen in the downstream connection's task, so a request costs that
//! task one wake-up per direction, rather than a hand-off to a connection task and back
//! for the request, and again for the response.
//!
//! An idle connection is polled by nobody but the pool's sweeper, a task that runs while
//! the pool has idle connections and drops, every [`SWEEP`], those the host has closed or
//! that have been idle for longer than the cluster's idle timeout. A connection is also
//! checked when taken.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::connect::{ConnectError, HostConnector, Stream};
use crate::body::Body;

type Driver = Pin<Box<http1::Connection<TokioIo<Stream>, Body>>>;

/// How often idle connections are checked.
pub const SWEEP: Duration = Duration::from_secs(1);

/// Why a request got no response.
#[derive(Debug)]
pub enum Error {
    /// No connection could be made.
    Connect(ConnectError),
    /// The connection failed or closed before the response head.
    Reset,
}

/// The idle connections to one host.
#[derive(Debug)]
pub struct Pool {
    connector: HostConnector,
    idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
    /// Whether the sweeper runs.
    sweeping: std::sync::atomic::AtomicBool,
}

/// A connection with no request on it.
#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

/// A connection: the handle requests are sent on and the future that does its I/O.
struct Conn {
    send: http1::SendRequest<Body>,
    driver: Driver,
    uses: u32,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("uses", &self.uses).finish_non_exhaustive()
    }
}

impl Conn {
    /// Polls the connection's I/O; false once the connection has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        self.driver.as_mut().poll(cx).is_pending()
    }

    /// Whether the connection is open and ready for its next request. It has to have been
    /// driven since its last response ended.
    fn ready(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop())) && self.send.is_ready()
    }
}

impl Pool {
    /// An empty pool of connections made by `connector`.
    pub fn new(connector: HostConnector, idle_timeout: Duration) -> Pool {
        Pool { connector, idle_timeout, idle: Mutex::new(Vec::new()), sweeping: Default::default() }
    }

    /// Connections waiting for a request.
    pub fn idle(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }

    /// Sends `req` on an idle connection, or a new one, and drives that connection until
    /// the response head arrives. The response body drives it on; once the body has been
    /// read the connection comes back to the pool, unless it has carried `max_uses`
    /// requests (0: no limit).
    pub async fn request(
        self: &Arc<Self>,
        mut req: Request<Body>,
        max_uses: u32,
    ) -> Result<Response<PooledBody>, Error> {
        origin_form(&mut req);
        let mut conn = match self.take() {
            Some(conn) => conn,
            None => Box::pin(self.connect()).await?,
        };
        conn.uses += 1;
        let mut pending = std::pin::pin!(conn.send.send_request(req));
        let mut open = true;
        let head = poll_fn(|cx| {
            if let Poll::Ready(r) = pending.as_mut().poll(cx) {
                return Poll::Ready(r.map_err(|_| Error::Reset));
            }
            if open && !conn.drive(cx) {
                open = false;
                // The connection ended: the response has come whole, or never will.
                return Poll::Ready(match pending.as_mut().poll(cx) {
                    Poll::Ready(r) => r.map_err(|_| Error::Reset),
                    Poll::Pending => Err(Error::Reset),
                });
            }
            Poll::Pending
        })
        .await?;
        let (parts, inner) = head.into_parts();
        let mut body = PooledBody { inner, conn: open.then_some(conn), pool: Arc::downgrade(self), max_uses };
        if body.inner.is_end_stream() {
            body.release();
        }
        Ok(Response::from_parts(parts, body))
    }

    fn take(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(mut candidate) = idle.pop() {
            if candidate.since.elapsed() < self.idle_timeout && candidate.conn.ready() {
                return Some(candidate.conn);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Conn, Error> {
        let stream = self.connector.connect().await.map_err(Error::Connect)?;
        let (send, driver) = http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(|_| Error::Reset)?;
        Ok(Conn { send, driver: Box::pin(driver), uses: 0 })
    }

    fn put(self: &Arc<Self>, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(Idle { conn, since: Instant::now() });
        }
        if !self.sweeping.swap(true, std::sync::atomic::Ordering::AcqRel)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// Drops the idle connections that are closed or have been idle too long; false once
    /// none is left.
    fn sweep(&self) -> bool {
        let Ok(mut idle) = self.idle.lock() else { return false };
        let timeout = self.idle_timeout;
        idle.retain_mut(|i| i.since.elapsed() < timeout && i.conn.ready());
        !idle.is_empty()
    }
}

/// Sweeps `pool` every [`SWEEP`] while it has idle connections and is not dropped.
async fn sweep(pool: Weak<Pool>) {
    loop {
        tokio::time::sleep(SWEEP).await;
        let Some(pool) = pool.upgrade() else { return };
        if !pool.sweep() {
            pool.sweeping.store(false, std::sync::atomic::Ordering::Release);
            // A connection put back between the sweep and now has no sweeper yet.
            if pool.idle() == 0 || pool.sweeping.swap(true, std::sync::atomic::Ordering::AcqRel) {
                return;
            }
        }
    }
}

/// HTTP/1.1 to an upstream takes the origin form (`/path?query`), as a client that is
/// not talking to a forward proxy sends it.
fn origin_form(req: &mut Request<Body>) {
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = path.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
}

/// A response body that drives its connection while it is read, and gives the
/// connection back to its pool once it has been read whole.
#[derive(Debug)]
pub struct PooledBody {
    inner: Incoming,
    conn: Option<Conn>,
    pool: Weak<Pool>,
    max_uses: u32,
}

impl PooledBody {
    /// Returns the connection to the pool if the response is over and the connection can
    /// carry another.
    fn release(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        let spent = self.max_uses > 0 && conn.uses >= self.max_uses;
        if !spent
            && conn.ready()
            && let Some(pool) = self.pool.upgrade()
        {
            pool.put(conn);
        }
    }

    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = &mut self.conn
            && !conn.drive(cx)
        {
            self.conn = None;
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let mut frame = Pin::new(&mut this.inner).poll_frame(cx);
        if frame.is_pending() && this.conn.is_some() {
            // The connection reads what the body is waiting for.
            this.drive(cx);
            frame = Pin::new(&mut this.inner).poll_frame(cx);
        }
        match &frame {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Err(_))) => this.conn = None,
            // Trailers come after the body's data: the message is over.
            Poll::Ready(Some(Ok(f))) if f.is_trailers() || this.inner.is_end_stream() => this.release(),
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body dropped after its end (or one that had none) leaves a reusable
        // connection; one dropped midway leaves a connection in an unknown state, closed.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use http_body_util::BodyExt;
    use hyper::service::service_fn;

    use super::*;
    use crate::body::{empty, full};

    /// An HTTP/1.1 server on loopback that answers `/close` with `Connection: close`,
    /// `/empty` with no body, and anything else with the request's target.
    async fn server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = service_fn(|req: Request<Incoming>| async move {
                        let path = req.uri().path().to_owned();
                        let mut response = Response::new(match path.as_str() {
                            "/empty" => empty(),
                            "/trailers" => {
                                let mut trailers = hyper::HeaderMap::new();
                                trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                                frames_body([Frame::data(Bytes::from("data")), Frame::trailers(trailers)])
                            }
                            _ => full(req.uri().to_string()),
                        });
                        if path == "/trailers" {
                            response
                                .headers_mut()
                                .insert("trailer", hyper::header::HeaderValue::from_static("grpc-status"));
                        }
                        if path == "/close" {
                            response
                                .headers_mut()
                                .insert("connection", hyper::header::HeaderValue::from_static("close"));
                        }
                        Ok::<_, std::convert::Infallible>(response)
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
                });
            }
        });
        addr
    }

    /// A body of these frames.
    fn frames_body(frames: [Frame<Bytes>; 2]) -> Body {
        http_body_util::StreamBody::new(tokio_stream::iter(frames.map(Ok))).boxed()
    }

    /// A pool for `addr`, with its counters of open connections and connections made.
    fn pool(addr: std::net::SocketAddr) -> (Arc<Pool>, Arc<AtomicU64>) {
        let (pool, _, total) = counted(addr);
        (pool, total)
    }

    fn counted(addr: std::net::SocketAddr) -> (Arc<Pool>, Arc<AtomicU64>, Arc<AtomicU64>) {
        let open = Arc::new(AtomicU64::new(0));
        let total = Arc::new(AtomicU64::new(0));
        let connector = HostConnector {
            target: addr.to_string().into(),
            host: "backend".into(),
            timeout: Duration::from_secs(5),
            tls: None,
            open: open.clone(),
            total: total.clone(),
        };
        (Arc::new(Pool::new(connector, Duration::from_secs(60))), open, total)
    }

    async fn get(pool: &Arc<Pool>, path: &str, max_uses: u32) -> String {
        let uri = format!("http://backend{path}");
        let req = Request::builder().uri(uri).header("host", "backend").body(empty()).unwrap_or_else(|e| panic!("{e}"));
        let response = pool.request(req, max_uses).await.unwrap_or_else(|e| panic!("{e:?}"));
        let body = response.into_body().collect().await.unwrap_or_else(|e| panic!("{e}")).to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn requests_in_turn_share_one_connection_sent_in_origin_form() {
        let (pool, open, total) = counted(server().await);
        for i in 0..5 {
            assert_eq!(get(&pool, &format!("/r{i}?q=1"), 0).await, format!("/r{i}?q=1"));
        }
        assert_eq!(get(&pool, "/empty", 0).await, "");
        assert_eq!(get(&pool, "/after-empty", 0).await, "/after-empty");
        assert_eq!(total.load(Ordering::Relaxed), 1);
        assert_eq!(open.load(Ordering::Relaxed), 1);
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn a_body_read_to_its_trailers_gives_its_connection_back() {
        let (pool, total) = pool(server().await);
        for _ in 0..2 {
            let req = Request::builder()
                .uri("/trailers")
                .header("te", "trailers")
                .body(empty())
                .unwrap_or_else(|e| panic!("{e}"));
            let mut body = pool.request(req, 0).await.unwrap_or_else(|e| panic!("{e:?}")).into_body();
            let mut trailers = false;
            // As a server does: frames until the trailers, and no poll after them.
            while let Some(frame) = body.frame().await {
                let frame = frame.unwrap_or_else(|e| panic!("{e}"));
                if frame.is_trailers() {
                    trailers = true;
                    break;
                }
            }
            assert!(trailers);
            drop(body);
            assert_eq!(pool.idle(), 1);
        }
        assert_eq!(total.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_connection_the_host_closes_is_not_reused() {
        let (pool, total) = pool(server().await);
        assert_eq!(get(&pool, "/close", 0).await, "/close");
        assert_eq!(pool.idle(), 0);
        assert_eq!(get(&pool, "/next", 0).await, "/next");
        assert_eq!(total.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn an_idle_connection_the_host_has_since_closed_is_replaced() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Answers one request per connection, then closes it a little later without
        // having said it would.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    drop(tcp);
                });
            }
        });
        let (pool, open, total) = counted(addr);
        assert_eq!(get(&pool, "/", 0).await, "ok");
        assert_eq!(pool.idle(), 1);
        // Until the host has closed it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(get(&pool, "/", 0).await, "ok");
        assert_eq!(total.load(Ordering::Relaxed), 2);
        // The sweeper drops the second once the host has closed it too, with no request
        // to notice.
        tokio::time::sleep(SWEEP * 2 + Duration::from_millis(500)).await;
        assert_eq!(pool.idle(), 0);
        assert_eq!(open.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_connection_carries_at_most_max_uses_requests() {
        let (pool, total) = pool(server().await);
        for i in 0..6 {
            get(&pool, &format!("/{i}"), 2).await;
        }
        assert_eq!(total.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn concurrent_requests_each_take_a_connection_and_all_come_back() {
        let (pool, total) = pool(server().await);
        let (a, b, c) = tokio::join!(get(&pool, "/a", 0), get(&pool, "/b", 0), get(&pool, "/c", 0));
        assert_eq!((a.as_str(), b.as_str(), c.as_str()), ("/a", "/b", "/c"));
        assert_eq!(total.load(Ordering::Relaxed), 3);
        assert_eq!(pool.idle(), 3);
        for i in 0..3 {
            get(&pool, &format!("/again{i}"), 0).await;
        }
        assert_eq!(total.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        drop(listener);
        let (pool, _) = pool(addr);
        let req = Request::builder().uri("/").body(empty()).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(pool.request(req, 0).await, Err(Error::Connect(_))));
    }
}
