//! weft's own HTTP/1.1 server for downstream connections.
//!
//! A request head is parsed by httparse, once and in place; its header values are slices
//! of the buffer it was read into. A body of known length, up to [`MAX_WHOLE_BODY`], is
//! read whole before the request is routed (so it can be retried and mirrored as it is).
//! The response is written as RFC 9112 frames it: `Content-Length` when the length is
//! known, else chunked; its head and a small body go out in one write.
//!
//! What this server does not serve itself it hands over, with the connection and every
//! byte read so far, to hyper's server, which then serves the connection to its end: the
//! HTTP/2 preface, upgrades and `CONNECT` (tunnels), `Expect`, `Transfer-Encoding`
//! (streamed bodies), larger bodies, and HTTP/1.0.

use std::io::Write as _;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::Body as HttpBody;
use hyper::header::{self, HeaderName};
use hyper::http::response;
use hyper::{Method, Request, Response, Uri, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::{Connection, names};
use crate::body::{Body, Inbound};
use crate::telemetry::{PEER_METADATA, PEER_METADATA_ID};
use crate::upstream::h1::codec::{Field, content_length, field};

/// A request body of known length up to this size is read whole before routing; a
/// larger one is streamed, by hyper's server.
pub const MAX_WHOLE_BODY: usize = 64 * 1024;
/// The most header fields a request head may have (Envoy's default).
const MAX_HEADERS: usize = 100;
/// Response data up to this size is copied after the head, to go out in the same write;
/// a larger frame goes out in a write of its own.
const COPY_LIMIT: usize = 16 * 1024;
/// Without `request_headers_timeout`, a request head must arrive within this long.
const DEFAULT_HEADERS_TIMEOUT: Duration = Duration::from_secs(60);
/// How an HTTP/2 connection with prior knowledge starts.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Names one weft proxy sends the next, taken from here rather than copied per request.
static KNOWN_NAMES: [HeaderName; 7] = [
    names::X_REQUEST_ID,
    names::X_FORWARDED_PROTO,
    PEER_METADATA,
    PEER_METADATA_ID,
    names::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS,
    names::X_ENVOY_ATTEMPT_COUNT,
    names::X_FORWARDED_CLIENT_CERT,
];
static KNOWN: std::sync::LazyLock<names::Known> = std::sync::LazyLock::new(|| names::Known::new(&KNOWN_NAMES));

/// How a connection left this server.
pub enum Ended {
    /// It is done; the caller closes it.
    Closed,
    /// hyper's server is to serve it from here, starting with the bytes in the read
    /// buffer, which begin at a request.
    Handoff,
}

/// What the bytes at the start of the read buffer are.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// Not a whole head yet.
    Partial,
    /// A request this server serves.
    Serve(Pending),
    /// A request for hyper's server.
    Handoff,
    /// A request refused with this status; the connection closes after the answer.
    Refuse(u16),
}

/// A parsed request head, waiting for its body.
#[derive(Debug, PartialEq, Eq)]
struct Pending {
    /// The head's length in bytes.
    head: usize,
    /// The body's.
    body: usize,
    /// The method's span in the head.
    method: (usize, usize),
    /// The request target's.
    target: (usize, usize),
    /// Whether the client asked to close the connection after this request.
    close: bool,
    /// Whether the client accepts trailers (`TE: trailers`).
    trailers: bool,
}

/// What the wait for the next request came to. Returned once per request and taken apart
/// at once: boxing the request would cost an allocation each time to save a move.
#[allow(clippy::large_enum_variant)]
enum Next {
    /// A request, with the peer metadata taken out of its headers.
    Request(Request<Inbound>, Pending, Option<Bytes>),
    Closed,
    Handoff,
    Refuse(u16),
}

/// A signal's wait, kept for the connection's life: registered once, not per request.
type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One downstream HTTP/1.1 connection.
struct Server<'a, I> {
    conn: &'a Arc<Connection>,
    io: &'a mut I,
    read: &'a mut BytesMut,
    drain: &'a watch::Receiver<bool>,
    /// The proxy drains: the connection closes after the current request.
    draining: bool,
    /// The connection manager was replaced: likewise.
    retired: bool,
    /// Whether an HTTP/2 preface may still come (only as the connection's first bytes).
    h2: bool,
    fields: Vec<Field>,
    write: Vec<u8>,
    /// Ends when the proxy drains.
    drained: Signal,
    /// Ends when the connection manager is replaced.
    replaced: Signal,
    /// Notes that a signal woke the task, so that they are polled only then.
    signals: Arc<super::Signals>,
    signal_waker: std::task::Waker,
    /// The idle or header-read deadline, moved only when it must be earlier, or when it
    /// passes early: an idle deadline that moves later with every request costs nothing
    /// until the timer fires.
    timer: Pin<Box<tokio::time::Sleep>>,
    timer_at: tokio::time::Instant,
}

/// Serves HTTP/1.1 requests on `io` until the connection closes, the proxy drains, or a
/// request needs hyper's server. `read` holds what was read and not yet served.
pub async fn serve<I>(conn: &Arc<Connection>, io: &mut I, read: &mut BytesMut, drain: &watch::Receiver<bool>) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut changes = drain.clone();
    let drained: Signal = Box::pin(async move {
        while changes.changed().await.is_ok() {
            if *changes.borrow() {
                return;
            }
        }
    });
    let spec = conn.spec.clone();
    let replaced: Signal = Box::pin(async move { spec.retire_notify.notified().await });
    let signals = Arc::new(super::Signals::default());
    let timer_at = far_future();
    let mut server = Server {
        conn,
        io,
        read,
        drain,
        draining: false,
        retired: false,
        h2: conn.spec.codec == crate::model::listener::Codec::Auto,
        fields: Vec::new(),
        write: Vec::new(),
        drained,
        replaced,
        signal_waker: std::task::Waker::from(signals.clone()),
        signals,
        timer: Box::pin(tokio::time::sleep_until(timer_at)),
        timer_at,
    };
    // Registered before the first look at the flags, so that no signal falls between.
    server.poll_signals();
    let ended = server.run().await;
    if matches!(ended, Ended::Closed) {
        let _ = server.io.shutdown().await;
    }
    ended
}

/// What ended a wait for more of a request.
enum Wait {
    Read,
    Closed,
    Timer,
    Signal,
}

impl<I> Server<'_, I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    async fn run(&mut self) -> Ended {
        loop {
            let (request, pending, peer) = match self.next_request().await {
                Next::Request(request, pending, peer) => (request, pending, peer),
                Next::Closed => return Ended::Closed,
                Next::Handoff => return Ended::Handoff,
                Next::Refuse(status) => {
                    self.write.clear();
                    status_line(&mut self.write, status);
                    self.write.extend_from_slice(b"content-length: 0\r\nconnection: close\r\n");
                    date(&mut self.write);
                    self.write.extend_from_slice(b"\r\n");
                    let _ = self.io.write_all(&self.write).await;
                    return Ended::Closed;
                }
            };
            self.h2 = false;
            let head_request = request.method() == Method::HEAD;
            let Some(response) = self.dispatch(request, peer).await else { return Ended::Closed };
            let keep_alive = !pending.close
                && !self.draining
                && !self.retired
                && !*self.drain.borrow()
                && !self.conn.spec.retired.load(Ordering::Relaxed);
            let sent = self.respond(response, head_request, keep_alive, pending.trailers).await;
            if !sent || !keep_alive {
                return Ended::Closed;
            }
        }
    }

    /// Reads until a whole request (head and body) is in the buffer, closing an idle
    /// connection at its idle timeout, when the proxy drains, or when its connection
    /// manager is replaced, and one whose head is late at the header-read timeout.
    async fn next_request(&mut self) -> Next {
        let spec = &self.conn.spec;
        let mut pending: Option<Pending> = None;
        let mut head_deadline = None;
        // How much of the buffer has been looked at for the end of a head: a head that
        // arrives a few bytes at a time is parsed once it can be whole, not once per read.
        let mut scanned = 0;
        loop {
            match &pending {
                Some(p) if self.read.len() >= p.head + p.body => {
                    let Some(p) = pending.take() else { return Next::Closed };
                    return match self.build(&p) {
                        Some((request, peer)) => Next::Request(request, p, peer),
                        None => Next::Refuse(400),
                    };
                }
                Some(_) => {}
                None if self.read.is_empty() => {}
                None if self.read.len() <= spec.max_headers_bytes && !may_end_a_head(self.read, scanned) => {
                    scanned = self.read.len();
                }
                None => match inspect(self.read, spec.max_headers_bytes, self.h2, &mut self.fields) {
                    Head::Partial => scanned = self.read.len(),
                    Head::Serve(p) => {
                        self.read.reserve((p.head + p.body).saturating_sub(self.read.len()));
                        pending = Some(p);
                        continue;
                    }
                    Head::Handoff => return Next::Handoff,
                    Head::Refuse(status) => return Next::Refuse(status),
                },
            }
            let started = !self.read.is_empty();
            if !started && (self.draining || self.retired || spec.retired.load(Ordering::Relaxed)) {
                return Next::Closed;
            }
            let wanted = if started {
                Some(*head_deadline.get_or_insert_with(|| {
                    tokio::time::Instant::now() + spec.headers_timeout.unwrap_or(DEFAULT_HEADERS_TIMEOUT)
                }))
            } else {
                self.conn.idle_deadline()
            };
            if let Some(wanted) = wanted
                && wanted < self.timer_at
            {
                self.set_timer(wanted);
            }
            if self.read.capacity() - self.read.len() < 1024 {
                self.read.reserve(4096);
            }
            let wait = std::future::poll_fn(|cx| {
                match tokio_util::io::poll_read_buf(Pin::new(&mut *self.io), cx, self.read) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Wait::Closed),
                    Poll::Ready(Ok(_)) => return Poll::Ready(Wait::Read),
                    Poll::Pending => {}
                }
                if wanted.is_some() && self.timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wait::Timer);
                }
                if self.signals.woken(cx.waker()) && self.poll_signals() {
                    return Poll::Ready(Wait::Signal);
                }
                Poll::Pending
            })
            .await;
            match wait {
                Wait::Read | Wait::Signal => {}
                Wait::Closed => return Next::Closed,
                // The head's deadline passed (Envoy's request_headers_timeout), or the idle
                // one; or the timer was set for a deadline that has since moved on.
                Wait::Timer => match wanted {
                    Some(wanted) if wanted > tokio::time::Instant::now() => self.set_timer(wanted),
                    _ => return Next::Closed,
                },
            }
        }
    }

    fn set_timer(&mut self, at: tokio::time::Instant) {
        self.timer.as_mut().reset(at);
        self.timer_at = at;
    }

    /// Polls the signals not yet seen; whether one fired.
    fn poll_signals(&mut self) -> bool {
        let mut cx = std::task::Context::from_waker(&self.signal_waker);
        let mut fired = false;
        if !self.draining && self.drained.as_mut().poll(&mut cx).is_ready() {
            self.draining = true;
            fired = true;
        }
        if !self.retired && self.replaced.as_mut().poll(&mut cx).is_ready() {
            self.retired = true;
            fired = true;
        }
        fired
    }

    /// The request `p` describes, taking its head and body off the buffer. A sidecar's
    /// inbound side takes the caller's peer metadata out of the headers (unchecked: it is
    /// only decoded, never forwarded).
    fn build(&mut self, p: &Pending) -> Option<(Request<Inbound>, Option<Bytes>)> {
        let head = self.read.split_to(p.head).freeze();
        let body = (p.body > 0).then(|| self.read.split_to(p.body).freeze());
        let method = Method::from_bytes(&head[p.method.0..p.method.1]).ok()?;
        let uri = Uri::from_maybe_shared(head.slice(p.target.0..p.target.1)).ok()?;
        // Room for the headers the proxy adds on the way upstream.
        let mut headers = super::maps::header_map(self.fields.len() + 6);
        let take_peer = self.conn.spec.reporter == crate::telemetry::Reporter::Destination;
        let mut peer = None;
        for f in &self.fields {
            if take_peer && f.take_peer(&head, &mut peer) {
                continue;
            }
            let (name, value) = f.parse(&head, &KNOWN).ok()?;
            headers.append(name, value);
        }
        let mut request = Request::new(Inbound::Whole(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        Some((request, peer))
    }

    /// Runs the request through the connection manager. Meanwhile the connection is read,
    /// so that a client that goes away abandons its request (as Envoy resets the
    /// upstream stream); bytes of the next request (pipelining) are kept, up to a head's
    /// worth, after which the kernel holds them.
    async fn dispatch(&mut self, request: Request<Inbound>, peer: Option<Bytes>) -> Option<Response<Body>> {
        let handler = super::handle(self.conn.clone(), request, peer);
        tokio::pin!(handler);
        let limit = self.conn.spec.max_headers_bytes + MAX_WHOLE_BODY;
        let (io, read) = (&mut *self.io, &mut *self.read);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(Ok(response)) = handler.as_mut().poll(cx) {
                return Poll::Ready(Some(response));
            }
            while read.len() < limit {
                if read.capacity() - read.len() < 1024 {
                    read.reserve(4096);
                }
                match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, read) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(_)) => {}
                    Poll::Pending => break,
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Writes the response; whether it went out whole, framed so that the connection can
    /// carry another request.
    async fn respond(
        &mut self,
        response: Response<Body>,
        head_request: bool,
        keep_alive: bool,
        trailers: bool,
    ) -> bool {
        let (parts, mut body) = response.into_parts();
        self.write.clear();
        let mut framing = encode_head(&mut self.write, &parts, &body, head_request, keep_alive);
        super::maps::recycle(parts.headers);
        if framing == Framing::None {
            drop(body);
            return self.flush().await;
        }
        loop {
            let step = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                Poll::Pending if !self.write.is_empty() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
                Poll::Ready(frame) => Poll::Ready(Some(frame)),
            })
            .await;
            let frame = match step {
                // Nothing more for now: what is encoded goes out.
                None => {
                    if !self.flush().await {
                        return false;
                    }
                    continue;
                }
                Some(None) => break,
                // The body failed: the client sees the response cut short.
                Some(Some(Err(e))) => {
                    tracing::debug!("response body failed: {e}");
                    let _ = self.flush().await;
                    return false;
                }
                Some(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    let Some(large) = framing.data(&mut self.write, data) else {
                        // More than `Content-Length` announced.
                        let _ = self.flush().await;
                        return false;
                    };
                    if let Some(large) = large {
                        if !self.flush().await || self.io.write_all(&large).await.is_err() {
                            return false;
                        }
                        if framing == Framing::Chunked {
                            self.write.extend_from_slice(b"\r\n");
                        }
                    }
                }
                Err(frame) => {
                    if let (Ok(fields), Framing::Chunked, true) = (frame.into_trailers(), &framing, trailers) {
                        self.write.extend_from_slice(b"0\r\n");
                        for (name, value) in &fields {
                            field(&mut self.write, name.as_str().as_bytes(), value.as_bytes());
                        }
                        self.write.extend_from_slice(b"\r\n");
                        framing = Framing::Ended;
                    }
                }
            }
            if self.write.len() >= COPY_LIMIT && !self.flush().await {
                return false;
            }
        }
        drop(body);
        let whole = match framing {
            Framing::Chunked => {
                self.write.extend_from_slice(b"0\r\n\r\n");
                true
            }
            Framing::Length(left) => left == 0,
            Framing::Ended | Framing::None => true,
        };
        self.flush().await && whole
    }

    /// Writes out what is encoded.
    async fn flush(&mut self) -> bool {
        let written = self.io.write_all(&self.write).await.is_ok() && self.io.flush().await.is_ok();
        self.write.clear();
        written
    }
}

/// Whether the bytes of `buf` from `from` on (with the two before, for a line end split
/// between reads) hold an empty line, which ends a head: LF LF or LF CR LF, the line ends
/// httparse accepts.
fn may_end_a_head(buf: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(2);
    buf.get(start..).is_some_and(|tail| {
        tail.iter()
            .enumerate()
            .any(|(i, b)| *b == b'\n' && (tail.get(i + 1) == Some(&b'\n') || tail.get(i + 1..i + 3) == Some(b"\r\n")))
    })
}

/// What the start of `buf` is, with its header fields' spans in `fields`.
fn inspect(buf: &[u8], max_head: usize, h2: bool, fields: &mut Vec<Field>) -> Head {
    if h2 && buf.starts_with(&H2_PREFACE[..buf.len().min(H2_PREFACE.len())]) {
        return if buf.len() >= H2_PREFACE.len() { Head::Handoff } else { Head::Partial };
    }
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let head =
        match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut request, buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) if len <= max_head => len,
            Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => return Head::Refuse(431),
            Ok(httparse::Status::Partial) if buf.len() > max_head => return Head::Refuse(431),
            Ok(httparse::Status::Partial) => return Head::Partial,
            Err(_) => return Head::Refuse(400),
        };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version) else {
        // HTTP/1.0, with its own rules for keeping a connection.
        return Head::Handoff;
    };
    if method == "CONNECT" {
        return Head::Handoff;
    }
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    let mut length: Option<u64> = None;
    let (mut close, mut trailers) = (false, false);
    fields.clear();
    for h in request.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            match content_length(h.value) {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => return Head::Refuse(400),
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Head::Handoff;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"upgrade") {
                    return Head::Handoff;
                }
                close |= token.eq_ignore_ascii_case(b"close");
            }
        } else if name.eq_ignore_ascii_case(b"te") {
            trailers |= h.value.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
        }
        fields.push(Field::of(base, h));
    }
    let Some(body) = usize::try_from(length.unwrap_or(0)).ok().filter(|b| *b <= MAX_WHOLE_BODY) else {
        return Head::Handoff;
    };
    Head::Serve(Pending {
        head,
        body,
        method: span(method.as_bytes()),
        target: span(target.as_bytes()),
        close,
        trailers,
    })
}

/// How a response body is framed, and how much of it is still to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// `Content-Length`, with this many bytes still to write.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Chunked, and the last chunk and trailers are written.
    Ended,
}

impl Framing {
    /// Encodes `data` into `out`, or hands it back when it is large enough to go out in
    /// a write of its own (after `out`, and, chunked, before a CRLF). `None` when it is
    /// more than the announced length.
    fn data(&mut self, out: &mut Vec<u8>, data: Bytes) -> Option<Option<Bytes>> {
        match self {
            Framing::Length(left) => {
                *left = left.checked_sub(data.len() as u64)?;
            }
            Framing::Chunked => {
                if data.is_empty() {
                    return Some(None);
                }
                let _ = write!(out, "{:x}\r\n", data.len());
            }
            Framing::None | Framing::Ended => return Some(None),
        }
        if data.len() > COPY_LIMIT {
            return Some(Some(data));
        }
        out.extend_from_slice(&data);
        if *self == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        Some(None)
    }
}

/// Writes the response head into `out`; how its body is to be framed. `Date` is added
/// when missing and `Content-Length` when the body's length is known, as hyper's server
/// does; `Connection: close` when the connection is not kept.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &response::Parts,
    body: &Body,
    head_request: bool,
    keep_alive: bool,
) -> Framing {
    let status = parts.status.as_u16();
    status_line(out, status);
    let bodyless = status < 200 || status == 204 || status == 304;
    let mut length = None;
    let mut dated = false;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            if bodyless && status != 304 {
                continue;
            }
            length = content_length(value.as_bytes());
        } else if name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        dated |= name == header::DATE;
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let framing = if bodyless || head_request {
        Framing::None
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        let mut digits = itoa::Buffer::new();
        field(out, b"content-length", digits.format(n).as_bytes());
        Framing::Length(n)
    } else {
        field(out, b"transfer-encoding", b"chunked");
        Framing::Chunked
    };
    if !keep_alive {
        field(out, b"connection", b"close");
    }
    if !dated {
        date(out);
    }
    out.extend_from_slice(b"\r\n");
    framing
}

fn status_line(out: &mut Vec<u8>, status: u16) {
    let reason = hyper::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(digits.format(status).as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes a `Date` field, formatted once a second per thread.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static NOW: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let second = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    NOW.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *cached = second;
            *text = httpdate::fmt_http_date(now);
        }
        field(out, b"date", text.as_bytes());
    });
}

/// A deadline no connection reaches.
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Frame;

    fn inspected(bytes: &[u8]) -> (Head, Vec<Field>) {
        let mut fields = Vec::new();
        let head = inspect(bytes, 60 * 1024, true, &mut fields);
        (head, fields)
    }

    fn serve(bytes: &[u8]) -> Pending {
        match inspected(bytes).0 {
            Head::Serve(p) => p,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn a_request_with_a_known_length_is_served_here_and_the_rest_handed_over() {
        let p = serve(b"POST /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!((p.head, p.body, p.close, p.trailers), (52, 5, false, false));
        let p = serve(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTE: trailers\r\n\r\n");
        assert!(p.close && p.trailers);
        for handed in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n",
            H2_PREFACE,
        ] {
            assert_eq!(inspected(handed).0, Head::Handoff, "{:?}", String::from_utf8_lossy(handed));
        }
        // The preface's first bytes wait for the rest; only a connection's first bytes can be one.
        assert_eq!(inspected(b"PRI * HT").0, Head::Partial);
        assert_eq!(inspect(H2_PREFACE, 1024, false, &mut Vec::new()), Head::Refuse(400));
    }

    #[test]
    fn a_head_is_parsed_only_once_it_can_be_whole() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        // Byte by byte, the end shows only with the last byte, wherever the last look was.
        for len in 1..head.len() {
            assert!(!may_end_a_head(&head[..len], len.saturating_sub(1)), "{len}");
        }
        assert!(may_end_a_head(head, head.len() - 1));
        assert!(may_end_a_head(head, 0));
        // Bare LF line ends count too, split across reads.
        assert!(may_end_a_head(b"GET / HTTP/1.1\nHost: x\n\n", 22));
        assert!(!may_end_a_head(b"GET / HTTP/1.1\r\nHost: x\r\n", 0));
        assert!(!may_end_a_head(b"", 0));
    }

    #[test]
    fn bad_heads_are_refused_as_envoy_refuses_them() {
        for (bytes, status) in [
            (&b"HELLO THERE\r\n\r\n"[..], 400),
            (b"GET / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nContent-Length: +4\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nContent-Length: 4, 5\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
        ] {
            assert_eq!(inspected(bytes).0, Head::Refuse(status), "{:?}", String::from_utf8_lossy(bytes));
        }
        assert_eq!(serve(b"GET / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\n").body, 4);
        let many: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
        assert_eq!(inspected(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).0, Head::Refuse(431));
        let big = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(70 * 1024));
        assert_eq!(inspected(big.as_bytes()).0, Head::Refuse(431));
        // An unfinished head is refused as soon as it is longer than the limit.
        assert_eq!(inspected(&big.as_bytes()[..61 * 1024]).0, Head::Refuse(431));
        assert_eq!(inspected(&big.as_bytes()[..1024]).0, Head::Partial);
    }

    fn head_of(response: Response<Body>, head_request: bool, keep_alive: bool) -> (String, Framing) {
        let (parts, body) = response.into_parts();
        let mut out = Vec::new();
        let framing = encode_head(&mut out, &parts, &body, head_request, keep_alive);
        (String::from_utf8_lossy(&out).into_owned(), framing)
    }

    #[test]
    fn responses_are_framed_by_their_length_when_it_is_known() {
        let (head, framing) = head_of(Response::new(crate::body::full("hello")), false, true);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: "), "{head}");
        assert!(head.ends_with(" GMT\r\n\r\n"), "{head}");
        assert_eq!(framing, Framing::Length(5));

        let stream = http_body_util::StreamBody::new(one_chunk());
        let streamed: Body = http_body_util::BodyExt::boxed(stream);
        let (head, framing) = head_of(Response::new(streamed), false, false);
        assert!(head.contains("transfer-encoding: chunked\r\nconnection: close\r\n"), "{head}");
        assert_eq!(framing, Framing::Chunked);

        let mut no_content = Response::new(crate::body::empty());
        *no_content.status_mut() = hyper::StatusCode::NO_CONTENT;
        no_content.headers_mut().insert(header::CONTENT_LENGTH, 0.into());
        let (head, framing) = head_of(no_content, false, true);
        assert!(head.starts_with("HTTP/1.1 204 No Content\r\ndate: "), "{head}");
        assert_eq!(framing, Framing::None);

        let mut to_head = Response::new(crate::body::empty());
        to_head.headers_mut().insert(header::CONTENT_LENGTH, 1234.into());
        let (head, framing) = head_of(to_head, true, true);
        assert!(head.contains("content-length: 1234\r\n"), "{head}");
        assert_eq!(framing, Framing::None);
    }

    fn one_chunk() -> tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, crate::body::BoxError>>> {
        tokio_stream::iter(vec![Ok(Frame::data(Bytes::from_static(b"a")))])
    }

    #[test]
    fn chunks_are_framed_and_a_length_is_not_exceeded() {
        let mut out = Vec::new();
        let mut chunked = Framing::Chunked;
        assert_eq!(chunked.data(&mut out, Bytes::from_static(b"hello, world")), Some(None));
        assert_eq!(chunked.data(&mut out, Bytes::new()), Some(None));
        assert_eq!(out, b"c\r\nhello, world\r\n");
        let large = Bytes::from(vec![b'x'; COPY_LIMIT + 1]);
        out.clear();
        assert_eq!(chunked.data(&mut out, large.clone()), Some(Some(large.clone())));
        assert_eq!(out, b"4001\r\n");

        let mut length = Framing::Length(5);
        out.clear();
        assert_eq!(length.data(&mut out, Bytes::from_static(b"abc")), Some(None));
        assert_eq!(length, Framing::Length(2));
        assert_eq!(length.data(&mut out, Bytes::from_static(b"abc")), None);
        assert_eq!(out, b"abc");
    }
}
