//! The HTTP/1.1 wire format of an upstream exchange: the request written whole, the
//! response head parsed by httparse, and the response body framed as RFC 9112 (section
//! 6.3) says: no body for HEAD, 1xx, 204 and 304; chunked when the last transfer coding is
//! chunked; else `Content-Length` bytes; else everything until the connection closes.
//!
//! A response head is parsed once, in place, and its header values are slices of the
//! buffer it was read into: no copy, and no allocation for the names weft itself adds on
//! the other side (the peer-metadata headers, `x-envoy-upstream-service-time`).

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::Frame;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::response;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};

use crate::http::names;
use crate::telemetry::{PEER_METADATA, PEER_METADATA_ID};

/// The most header fields a response head may have (Envoy's default).
pub const MAX_HEADERS: usize = 100;
/// The largest response head, and the largest trailer section (Envoy's default limit of
/// 60 KiB for headers).
pub const MAX_HEAD_BYTES: usize = 60 * 1024;
/// The longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// The most trailer fields.
const MAX_TRAILERS: usize = 32;
/// A request body up to this size goes out in the same write as the head.
pub const INLINE_BODY: usize = 16 * 1024;

/// Why a response could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Invalid {
    /// httparse refused the head.
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    /// The head did not end within [`MAX_HEAD_BYTES`].
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    /// A header name or value `http` does not accept.
    #[error("invalid response header {0:?}")]
    Header(String),
    /// `Content-Length` is not a number, or two of them disagree.
    #[error("invalid Content-Length")]
    ContentLength,
    /// Both `Content-Length` and `Transfer-Encoding`: a message that two parsers may
    /// frame differently (response smuggling), refused as Envoy refuses it.
    #[error("both Content-Length and Transfer-Encoding")]
    Ambiguous,
    /// `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("unexpected 101 Switching Protocols")]
    UnexpectedUpgrade,
    /// A malformed chunk size, chunk end or trailer section.
    #[error("malformed chunked body")]
    Chunked,
}

/// The span of a header's name and value in the buffer its head was read into.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    name: (usize, usize),
    value: (usize, usize),
}

impl Field {
    /// The spans of httparse's `header`, parsed from the buffer at address `base`.
    pub fn of(base: usize, header: &httparse::Header<'_>) -> Field {
        let span = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            (start, start + s.len())
        };
        Field { name: span(header.name.as_bytes()), value: span(header.value) }
    }

    /// The field's name as it was sent.
    fn name<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        &head[self.name.0..self.name.1]
    }

    /// Whether this is the peer-metadata field or its id, which the proxy takes out of
    /// a message rather than forwarding; the metadata's value (unchecked: it is only
    /// decoded) goes into `peer`.
    pub fn take_peer(&self, head: &Bytes, peer: &mut Option<Bytes>) -> bool {
        let name = self.name(head);
        if name.eq_ignore_ascii_case(PEER_METADATA.as_str().as_bytes()) {
            *peer = Some(head.slice(self.value.0..self.value.1));
            true
        } else {
            name.eq_ignore_ascii_case(PEER_METADATA_ID.as_str().as_bytes())
        }
    }

    /// The field as `http` keeps it, its value a slice of `head` (the frozen buffer);
    /// names in `known` are taken from there instead of being copied.
    pub fn parse(&self, head: &Bytes, known: &names::Known) -> Result<(HeaderName, HeaderValue), Invalid> {
        let raw = self.name(head);
        let name = match known.get(raw) {
            Some(name) => name,
            None => HeaderName::from_bytes(raw).map_err(|_| Invalid::Header(String::from_utf8_lossy(raw).into()))?,
        };
        let value = HeaderValue::from_maybe_shared(head.slice(self.value.0..self.value.1))
            .map_err(|_| Invalid::Header(name.to_string()))?;
        Ok((name, value))
    }
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    /// Status, version and headers.
    pub parts: response::Parts,
    /// How the body is framed.
    pub body: Decoder,
    /// Whether the connection may carry another request once the body has been read.
    pub keep_alive: bool,
    /// The peer's metadata, taken out of the headers when asked for (unchecked: it is
    /// only decoded, never forwarded).
    pub peer: Option<Bytes>,
}

/// Reads a body off the connection's buffer, frame by frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes are still to come.
    Length(u64),
    /// Chunked, at this point of a chunk.
    Chunked(Chunk),
    /// Everything until the connection closes.
    UntilClose,
    /// The body has ended.
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes to go.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailers, or the final CRLF.
    Trailers,
}

/// What the decoder made of the buffer.
#[derive(Debug)]
pub enum Decoded {
    /// A frame of the body (data or trailers).
    Frame(Frame<Bytes>),
    /// The body has ended.
    End,
    /// More bytes are needed.
    More,
}

/// A request as the pool writes it, borrowed: a request kept for retries is not copied
/// for each attempt.
#[derive(Debug, Clone, Copy)]
pub struct Outbound<'a> {
    /// The method.
    pub method: &'a Method,
    /// The target; written in origin form, its authority used when there is no `Host`.
    pub uri: &'a Uri,
    /// The header fields.
    pub headers: &'a HeaderMap,
    /// One more field, written after `headers` (a retry's attempt count).
    pub extra: Option<(&'a HeaderName, &'a HeaderValue)>,
    /// The whole body.
    pub body: &'a Bytes,
    /// Whether the response's peer metadata is to be taken out of its headers.
    pub take_peer: bool,
}

impl<'a> From<&'a Request<Bytes>> for Outbound<'a> {
    fn from(req: &'a Request<Bytes>) -> Outbound<'a> {
        Outbound {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extra: None,
            body: req.body(),
            take_peer: false,
        }
    }
}

/// Writes `req` as an HTTP/1.1 request in origin form into `out`, with `Content-Length`
/// framing. A body of up to [`INLINE_BODY`] bytes is written into `out` too; the result
/// says whether the body still has to be written after it.
pub fn encode_request(out: &mut Vec<u8>, req: &Outbound<'_>) -> bool {
    let body = req.body;
    out.clear();
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut declared_length = false;
    let mut host = false;
    for (name, value) in req.headers.iter().chain(req.extra) {
        if *name == header::CONTENT_LENGTH || *name == header::TRANSFER_ENCODING {
            declared_length = true;
            continue;
        }
        host |= *name == header::HOST;
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    // The proxy always sets Host; a request without one takes the URI's authority.
    if !host && let Some(authority) = req.uri.authority() {
        field(out, b"host", authority.as_str().as_bytes());
    }
    // Methods whose requests carry a body say how long it is even when it is empty, as
    // clients do.
    let expects_body = matches!(*req.method, Method::POST | Method::PUT | Method::PATCH);
    if !body.is_empty() || declared_length || expects_body {
        field(out, b"content-length", itoa::Buffer::new().format(body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if body.len() <= INLINE_BODY {
        out.extend_from_slice(body);
        return false;
    }
    true
}

/// Writes one header field, `name: value` and its line end.
pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Parses the response head at the start of `buf` and takes it off `buf`; `None` while
/// the head is not whole. Interim responses (1xx other than 101) are skipped, as Envoy
/// does when it does not proxy them. `fields` is scratch space kept by the connection.
pub fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    take_peer: bool,
    fields: &mut Vec<Field>,
) -> Result<Option<Head>, Invalid> {
    loop {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => len,
            Ok(httparse::Status::Complete(_)) => return Err(Invalid::TooLarge),
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => return Err(Invalid::TooLarge),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Invalid::Head(e)),
        };
        let code = response.code.unwrap_or_default();
        match code {
            101 => return Err(Invalid::UnexpectedUpgrade),
            100..=199 => {
                buf.advance(len);
                continue;
            }
            _ => {}
        }
        let http10 = response.version == Some(0);
        let base = buf.as_ptr() as usize;
        fields.clear();
        fields.extend(response.headers.iter().map(|h| Field::of(base, h)));
        let head = buf.split_to(len).freeze();
        return build(head, code, http10, method, take_peer, fields).map(Some);
    }
}

fn build(
    head: Bytes,
    code: u16,
    http10: bool,
    method: &Method,
    take_peer: bool,
    fields: &[Field],
) -> Result<Head, Invalid> {
    let mut headers = crate::http::maps::header_map(fields.len());
    let mut length = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut peer = None;
    for f in fields {
        if take_peer && f.take_peer(&head, &mut peer) {
            continue;
        }
        let (name, value) = f.parse(&head, &KNOWN)?;
        if name == header::CONTENT_LENGTH {
            let n = content_length(value.as_bytes()).ok_or(Invalid::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(Invalid::ContentLength);
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            // The last coding of the last field decides.
            chunked = value
                .as_bytes()
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        headers.append(name, value);
    }
    let body = if *method == Method::HEAD || code == 204 || code == 304 {
        Decoder::Done
    } else if transfer_encoding {
        if length.is_some() {
            return Err(Invalid::Ambiguous);
        }
        if chunked { Decoder::Chunked(Chunk::Size) } else { Decoder::UntilClose }
    } else {
        length.map_or(Decoder::UntilClose, Decoder::Length)
    };
    let keep_alive = body != Decoder::UntilClose && !close && (!http10 || keep_alive_token);
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::from_u16(code).map_err(|_| Invalid::Head(httparse::Error::Status))?;
    *response.version_mut() = if http10 { Version::HTTP_10 } else { Version::HTTP_11 };
    *response.headers_mut() = headers;
    Ok(Head { parts: response.into_parts().0, body: body.normalized(), keep_alive, peer })
}

/// The names weft's own proxies add to responses, which `http` would otherwise copy into
/// a new allocation for every response (it keeps only standard names as constants).
static KNOWN_NAMES: [HeaderName; 5] =
    [names::X_ENVOY_UPSTREAM_SERVICE_TIME, PEER_METADATA, PEER_METADATA_ID, names::X_REQUEST_ID, names::GRPC_STATUS];
static KNOWN: std::sync::LazyLock<names::Known> = std::sync::LazyLock::new(|| names::Known::new(&KNOWN_NAMES));

/// A `Content-Length` value: digits only, or a list of equal ones (RFC 9110 section
/// 8.6); `None` for anything else.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for item in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
        if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = std::str::from_utf8(item).ok()?.parse::<u64>().ok()?;
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

impl Decoder {
    /// `Length(0)` is `Done`.
    fn normalized(self) -> Decoder {
        if self == Decoder::Length(0) { Decoder::Done } else { self }
    }

    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// The exact length still to come, when it is known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }

    /// The next frame of the body from `buf`, taking what it uses off `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Invalid> {
        loop {
            match *self {
                Decoder::Done => return Ok(Decoded::End),
                Decoder::UntilClose if buf.is_empty() => return Ok(Decoded::More),
                Decoder::UntilClose => return Ok(Decoded::Frame(Frame::data(buf.split().freeze()))),
                Decoder::Length(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let data = take(buf, n);
                    *self = Decoder::Length(n - data.len() as u64).normalized();
                    return Ok(Decoded::Frame(Frame::data(data)));
                }
                Decoder::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *self = Decoder::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => return Err(Invalid::Chunked),
                    Ok(httparse::Status::Partial) => return Ok(Decoded::More),
                    Err(_) => return Err(Invalid::Chunked),
                },
                Decoder::Chunked(Chunk::Data(n)) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let data = take(buf, n);
                    let left = n - data.len() as u64;
                    *self = Decoder::Chunked(if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) });
                    return Ok(Decoded::Frame(Frame::data(data)));
                }
                Decoder::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(Decoded::More);
                    }
                    if buf[..2] != *b"\r\n" {
                        return Err(Invalid::Chunked);
                    }
                    buf.advance(2);
                    *self = Decoder::Chunked(Chunk::Size);
                }
                Decoder::Chunked(Chunk::Trailers) => {
                    return trailers(buf).inspect(|d| {
                        if !matches!(d, Decoded::More) {
                            *self = Decoder::Done;
                        }
                    });
                }
            }
        }
    }

    /// The connection has closed: whether the body ended with it (a body that lasts until
    /// then, or one already done); for any other body, the close cut it short.
    pub fn closed(&mut self) -> bool {
        let ended = matches!(self, Decoder::UntilClose | Decoder::Done);
        if ended {
            *self = Decoder::Done;
        }
        ended
    }
}

/// Up to `n` bytes off the front of `buf`.
fn take(buf: &mut BytesMut, n: u64) -> Bytes {
    let k = usize::try_from(n).map_or(buf.len(), |n| n.min(buf.len()));
    buf.split_to(k).freeze()
}

/// The trailer section after the last chunk, and the CRLF that ends the body.
fn trailers(buf: &mut BytesMut) -> Result<Decoded, Invalid> {
    if buf.len() < 2 {
        return Ok(Decoded::More);
    }
    if buf[..2] == *b"\r\n" {
        buf.advance(2);
        return Ok(Decoded::End);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    let (len, parsed) = match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(done)) if done.0 <= MAX_HEAD_BYTES => done,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => return Ok(Decoded::More),
        _ => return Err(Invalid::Chunked),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for f in parsed.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| Invalid::Chunked)?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| Invalid::Chunked)?;
        map.append(name, value);
    }
    buf.advance(len);
    Ok(Decoded::Frame(Frame::trailers(map)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str, headers: &[(&str, &str)], body: &'static [u8]) -> String {
        let mut builder = hyper::Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            builder = builder.header(*n, *v);
        }
        let req = builder.body(Bytes::from_static(body)).unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        assert!(!encode_request(&mut out, &Outbound::from(&req)));
        String::from_utf8(out).unwrap_or_else(|e| panic!("{e}"))
    }

    fn head(bytes: &[u8], method: &Method) -> Result<Option<Head>, Invalid> {
        let mut buf = BytesMut::from(bytes);
        parse_head(&mut buf, method, false, &mut Vec::new())
    }

    fn parsed(bytes: &[u8]) -> Head {
        head(bytes, &Method::GET).unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|| panic!("partial"))
    }

    /// Decodes all of `bytes` as a body framed by `decoder`, as the connection would with
    /// the bytes arriving one at a time.
    fn body(mut decoder: Decoder, bytes: &[u8], close: bool) -> Result<(Vec<u8>, Option<HeaderMap>), Invalid> {
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut buf = BytesMut::new();
        let mut rest = bytes.iter();
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Frame(f) => match f.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Decoded::End => return Ok((data, trailers)),
                Decoded::More => match rest.next() {
                    Some(b) => buf.extend_from_slice(&[*b]),
                    None if close && decoder.closed() => return Ok((data, trailers)),
                    None => return Err(Invalid::Chunked),
                },
            }
        }
    }

    #[test]
    fn requests_go_in_origin_form_with_their_length() {
        assert_eq!(
            request(Method::GET, "http://backend:8080/a/b?q=1", &[("host", "backend"), ("x-one", "1")], b""),
            "GET /a/b?q=1 HTTP/1.1\r\nhost: backend\r\nx-one: 1\r\n\r\n"
        );
        assert_eq!(
            request(Method::POST, "/p", &[("content-length", "99"), ("transfer-encoding", "chunked")], b"hello"),
            "POST /p HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello"
        );
        assert_eq!(request(Method::PUT, "/p", &[], b""), "PUT /p HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        // Without a Host header, the URI's authority stands in.
        assert_eq!(request(Method::DELETE, "http://b:1/x", &[], b""), "DELETE /x HTTP/1.1\r\nhost: b:1\r\n\r\n");
    }

    #[test]
    fn a_large_body_is_left_for_a_write_of_its_own() {
        let req =
            hyper::Request::post("/").body(Bytes::from(vec![b'x'; INLINE_BODY + 1])).unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        assert!(encode_request(&mut out, &Outbound::from(&req)));
        assert!(out.ends_with(b"content-length: 16385\r\n\r\n"));
    }

    #[test]
    fn a_head_keeps_its_headers_in_order_and_takes_only_itself_off_the_buffer() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nServer: nginx\r\nX-Envoy-Peer-Metadata-Id: a\r\nSet-Cookie: 1\r\nset-cookie: 2\r\nContent-Length: 4\r\n\r\nbody"[..],
        );
        let head = parse_head(&mut buf, &Method::GET, false, &mut Vec::new())
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("partial"));
        assert_eq!(&buf[..], b"body");
        assert_eq!(head.parts.status, StatusCode::OK);
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.parts.headers["server"], "nginx");
        assert_eq!(head.parts.headers[PEER_METADATA_ID], "a");
        let cookies: Vec<_> = head.parts.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["1", "2"]);
        assert_eq!(head.body, Decoder::Length(4));
        assert!(head.keep_alive);
    }

    #[test]
    fn a_partial_head_waits_and_an_oversized_one_is_refused() {
        assert!(head(b"HTTP/1.1 200 OK\r\nServer: ng", &Method::GET).is_ok_and(|h| h.is_none()));
        let mut big = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 10, b'a');
        assert_eq!(head(&big, &Method::GET).err(), Some(Invalid::TooLarge));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(head(many.as_bytes(), &Method::GET).err(), Some(Invalid::Head(httparse::Error::TooManyHeaders)));
    }

    #[test]
    fn interim_responses_are_skipped_and_a_stray_101_refused() {
        let h = parsed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(h.parts.status, StatusCode::CREATED);
        assert!(!h.parts.headers.contains_key("link"));
        assert_eq!(
            head(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n", &Method::GET).err(),
            Some(Invalid::UnexpectedUpgrade)
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(parsed(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").body, Decoder::Done);
        assert_eq!(parsed(b"HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n").body, Decoder::Done);
        assert_eq!(parsed(b"HTTP/1.1 304 Not Modified\r\n\r\n").body, Decoder::Done);
        let to_head = head(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n", &Method::HEAD);
        assert!(to_head.is_ok_and(|h| h.is_some_and(|h| h.body == Decoder::Done && h.keep_alive)));
        let chunked = parsed(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n");
        assert_eq!(chunked.body, Decoder::Chunked(Chunk::Size));
        assert!(chunked.keep_alive);
        // Neither length nor chunked: the body lasts until the connection closes, which
        // therefore cannot be reused.
        let until_close = parsed(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert_eq!((until_close.body, until_close.keep_alive), (Decoder::UntilClose, false));
        let unframed = parsed(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((unframed.body, unframed.keep_alive), (Decoder::UntilClose, false));
    }

    #[test]
    fn ambiguous_or_invalid_lengths_are_refused() {
        let both = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(head(both, &Method::GET).err(), Some(Invalid::Ambiguous));
        let differ = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n";
        assert_eq!(head(differ, &Method::GET).err(), Some(Invalid::ContentLength));
        let same = parsed(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n");
        assert_eq!(same.body, Decoder::Length(3));
        for bad in ["-1", "3x", "", "1, 2"] {
            let h = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
            assert_eq!(head(h.as_bytes(), &Method::GET).err(), Some(Invalid::ContentLength), "{bad}");
        }
    }

    #[test]
    fn peer_metadata_is_taken_out_of_the_headers_only_when_asked() {
        let bytes = b"HTTP/1.1 200 OK\r\nX-Envoy-Peer-Metadata: Cg8K\r\nx-envoy-peer-metadata-id: sidecar~b\r\nserver: s\r\n\r\n";
        let mut buf = BytesMut::from(&bytes[..]);
        let taken = parse_head(&mut buf, &Method::GET, true, &mut Vec::new())
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("partial"));
        assert_eq!(taken.peer.as_deref(), Some(&b"Cg8K"[..]));
        assert_eq!(taken.parts.headers.len(), 1);
        assert!(taken.parts.headers.contains_key("server"));
        let kept = parsed(bytes);
        assert_eq!(kept.peer, None);
        assert_eq!(kept.parts.headers[PEER_METADATA], "Cg8K");
        assert_eq!(kept.parts.headers[PEER_METADATA_ID], "sidecar~b");
    }

    #[test]
    fn the_connection_is_kept_as_the_response_says() {
        assert!(!parsed(b"HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n").keep_alive);
        assert!(!parsed(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").keep_alive);
        let kept = parsed(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n");
        assert!(kept.keep_alive);
        assert_eq!(kept.parts.version, Version::HTTP_10);
    }

    #[test]
    fn bodies_decode_byte_by_byte() {
        let whole = |d: Decoder, b: &[u8], close| body(d, b, close).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(whole(Decoder::Length(5), b"hello", false).0, b"hello");
        assert_eq!(whole(Decoder::UntilClose, b"to the end", true).0, b"to the end");
        let (data, trailers) =
            whole(Decoder::Chunked(Chunk::Size), b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n", false);
        assert_eq!((data.as_slice(), trailers), (&b"hello world"[..], None));
        let (data, trailers) = whole(
            Decoder::Chunked(Chunk::Size),
            b"4\r\ndata\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n",
            false,
        );
        assert_eq!(data, b"data");
        let trailers = trailers.unwrap_or_else(|| panic!("no trailers"));
        assert_eq!((trailers["grpc-status"].as_bytes(), trailers["grpc-message"].as_bytes()), (&b"0"[..], &b"ok"[..]));
    }

    #[test]
    fn malformed_or_truncated_bodies_are_errors() {
        assert!(body(Decoder::Length(6), b"hello", true).is_err());
        assert!(body(Decoder::Chunked(Chunk::Size), b"5\r\nhelloX\r\n0\r\n\r\n", false).is_err());
        assert!(body(Decoder::Chunked(Chunk::Size), b"zz\r\n", false).is_err());
        assert!(body(Decoder::Chunked(Chunk::Size), b"5\r\nhel", true).is_err());
    }

    #[test]
    fn a_body_takes_no_more_than_its_length_off_the_buffer() {
        let mut decoder = Decoder::Length(3);
        let mut buf = BytesMut::from(&b"abcHTTP/1.1"[..]);
        let Ok(Decoded::Frame(f)) = decoder.decode(&mut buf) else { panic!("no frame") };
        assert_eq!(f.into_data().ok().as_deref(), Some(&b"abc"[..]));
        assert!(decoder.is_done());
        assert_eq!(&buf[..], b"HTTP/1.1");
    }
}
