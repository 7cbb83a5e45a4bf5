//! HTTP/1.1 connections to one host, driven by the requests that use them.
//!
//! A pooled connection has no task of its own. The request that takes it writes the
//! request and reads the response head, and the response body reads the rest while the
//! client reads the body. Both happen in the downstream connection's task, so a request
//! costs that task one wake-up per direction, rather than a hand-off to a connection task
//! and back for the request, and again for the response.
//!
//! The requests that come here have their bodies whole (most have none), so a request is
//! one write; [`codec`] frames it and reads the response. This path carries most of a
//! sidecar's traffic, and a general-purpose client's machinery (a channel to a connection
//! task, a second copy of the message's state) cost more than the parsing itself.
//!
//! An idle connection is polled by nobody but the pool's sweeper, a task that runs while
//! the pool has idle connections and drops, every [`SWEEP`], those the host has closed or
//! that have been idle for longer than the cluster's idle timeout. A connection is also
//! checked when taken.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::{Method, Response};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::connect::{ConnectError, HostConnector, Stream};

pub mod codec;

pub use codec::Outbound;
use codec::{Decoded, Decoder};

/// How often idle connections are checked.
pub const SWEEP: Duration = Duration::from_secs(1);

/// The read buffer's size: a response head and a little body fit in one read.
const READ_BUFFER: usize = 8 * 1024;
/// Below this much free room, the read buffer grows before a read.
const MIN_READ_ROOM: usize = 1024;
/// A write buffer grown past this by a large request is not kept.
const MAX_KEPT_WRITE_BUFFER: usize = 64 * 1024;

/// Why a request got no response.
#[derive(Debug)]
pub enum Error {
    /// No connection could be made.
    Connect(ConnectError),
    /// The connection failed or closed before the response head, or the head was not
    /// valid HTTP/1.1.
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
    conn: Box<Conn>,
    since: Instant,
}

/// A connection and its buffers.
#[derive(Debug)]
struct Conn {
    io: Stream,
    /// Bytes read and not yet consumed.
    read: BytesMut,
    /// The request being written.
    write: Vec<u8>,
    /// Scratch space for parsing a response head.
    fields: Vec<codec::Field>,
    uses: u32,
}

impl Conn {
    /// Boxed: a connection moves in and out of the pool and with its response, and a box
    /// moves as one pointer.
    fn new(io: Stream) -> Box<Conn> {
        Box::new(Conn { io, read: BytesMut::new(), write: Vec::new(), fields: Vec::new(), uses: 0 })
    }

    /// Whether the connection is open and has nothing unasked for to read: the host has
    /// neither closed it nor sent anything since the last response.
    fn ready(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        Pin::new(&mut self.io).poll_read(&mut Context::from_waker(Waker::noop()), &mut probe).is_pending()
    }

    /// Reads more into the read buffer; 0 when the host has closed the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < MIN_READ_ROOM {
            self.read.reserve(READ_BUFFER);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// Writes `req` and reads its response head.
    async fn exchange(&mut self, req: Outbound<'_>) -> Result<codec::Head, Error> {
        let body_apart = codec::encode_request(&mut self.write, &req);
        let written = async {
            self.io.write_all(&self.write).await?;
            if body_apart {
                self.io.write_all(req.body).await?;
            }
            self.io.flush().await
        };
        written.await.map_err(|_| Error::Reset)?;
        if self.write.capacity() > MAX_KEPT_WRITE_BUFFER {
            self.write = Vec::new();
        }
        poll_fn(|cx| self.poll_head(cx, req.method, req.take_peer)).await
    }

    fn poll_head(&mut self, cx: &mut Context<'_>, method: &Method, peer: bool) -> Poll<Result<codec::Head, Error>> {
        loop {
            if !self.read.is_empty() {
                match codec::parse_head(&mut self.read, method, peer, &mut self.fields) {
                    Ok(Some(head)) => return Poll::Ready(Ok(head)),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!("upstream response refused: {e}");
                        return Poll::Ready(Err(Error::Reset));
                    }
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) | Err(_) => return Poll::Ready(Err(Error::Reset)),
                Ok(_) => {}
            }
        }
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

    /// Sends `req` on an idle connection, or a new one, and reads the response head. The
    /// response body reads on; once it has been read the connection comes back to the
    /// pool, unless it has carried `max_uses` requests (0: no limit) or the response said
    /// to close it. A request in absolute form goes out in origin form (`/path?query`),
    /// as a client that is not talking to a forward proxy sends it. With the response
    /// comes the peer metadata taken out of its headers, when `req` asked for that.
    pub async fn request(
        self: &Arc<Self>,
        req: Outbound<'_>,
        max_uses: u32,
    ) -> Result<(Response<PooledBody>, Option<Bytes>), Error> {
        let mut conn = match self.take() {
            Some(conn) => conn,
            None => Conn::new(self.connector.connect().await.map_err(Error::Connect)?),
        };
        conn.uses += 1;
        let head = conn.exchange(req).await?;
        let mut body = PooledBody {
            decoder: head.body,
            keep_alive: head.keep_alive,
            conn: Some(conn),
            pool: Arc::downgrade(self),
            max_uses,
        };
        if body.decoder.is_done() {
            body.release();
        }
        Ok((Response::from_parts(head.parts, body), head.peer))
    }

    fn take(&self) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(mut candidate) = idle.pop() {
            if candidate.since.elapsed() < self.idle_timeout && candidate.conn.ready() {
                return Some(candidate.conn);
            }
        }
        None
    }

    fn put(self: &Arc<Self>, conn: Box<Conn>) {
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

/// A response body that reads its connection as it is read, and gives the connection
/// back to its pool once it has been read whole.
#[derive(Debug)]
pub struct PooledBody {
    decoder: Decoder,
    keep_alive: bool,
    /// None once the body has ended or failed.
    conn: Option<Box<Conn>>,
    pool: Weak<Pool>,
    max_uses: u32,
}

impl PooledBody {
    /// Returns the connection to the pool if it can carry another request.
    fn release(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let spent = self.max_uses > 0 && conn.uses >= self.max_uses;
        // Bytes after the response are bytes nobody asked for: not a connection to reuse.
        if self.keep_alive
            && !spent
            && conn.read.is_empty()
            && let Some(pool) = self.pool.upgrade()
        {
            pool.put(conn);
        }
    }

    fn fail(&mut self, error: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.conn = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = &mut this.conn else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut conn.read) {
                Ok(Decoded::Frame(frame)) => {
                    if this.decoder.is_done() {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Decoded::End) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(e) => return this.fail(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => {
                    this.keep_alive = false;
                    if !this.decoder.closed() {
                        return this.fail(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder.remaining().map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use http_body_util::BodyExt;
    use hyper::Request;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::body::{Body, empty, full};

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
        let req =
            Request::builder().uri(uri).header("host", "backend").body(Bytes::new()).unwrap_or_else(|e| panic!("{e}"));
        let (response, _) = pool.request((&req).into(), max_uses).await.unwrap_or_else(|e| panic!("{e:?}"));
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
                .body(Bytes::new())
                .unwrap_or_else(|e| panic!("{e}"));
            let mut body = pool.request((&req).into(), 0).await.unwrap_or_else(|e| panic!("{e:?}")).0.into_body();
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
        let req = Request::builder().uri("/").body(Bytes::new()).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(pool.request((&req).into(), 0).await, Err(Error::Connect(_))));
    }
}
