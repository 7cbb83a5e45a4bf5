//! Both sides of a bidirectional-streaming gRPC method, one buffer per message.
//!
//! tonic's generated servers encode a stream's responses into one buffer per stream, and
//! decode its requests from another, and each buffer keeps the capacity of the largest
//! message for as long as the stream lives. An xDS stream's first messages are its
//! largest (every cluster and endpoint set sent; every endpoint set subscribed to), so a
//! thousand connected proxies held a thousand copies of that capacity: about a gigabyte
//! at 1 000 services, ten at 10 000. [`Responses`] frames each message into a buffer of
//! its own, freed once the message is written; [`Requests`] decodes each message from a
//! buffer that shrinks back once the message is decoded. Message types, routing, TLS and
//! HTTP/2 are prost's, tonic's and hyper's.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use hyper::body::{Buf, Bytes, Frame};
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;

/// The gRPC message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// The largest response sent; a larger one ends the stream with RESOURCE_EXHAUSTED.
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// A streaming response body: each framed message from the channel (see [`frame`]),
/// then the status in the trailers (OK when the sender is dropped, or the error sent).
#[derive(Debug)]
pub struct Responses {
    messages: mpsc::Receiver<Result<Bytes, Status>>,
    done: bool,
}

impl Responses {
    /// The body of the framed messages sent on `messages`.
    pub fn new(messages: mpsc::Receiver<Result<Bytes, Status>>) -> Self {
        Responses { messages, done: false }
    }
}

/// One message with its gRPC prefix, in a buffer of exactly its size.
pub fn frame(message: &impl Message) -> Result<Bytes, Status> {
    frame_with(message.encoded_len(), |buf| message.encode(buf))
}

/// One message of `len` bytes, written by `write`, with its gRPC prefix, in a buffer of
/// exactly its size.
pub fn frame_with(
    len: usize,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), prost::EncodeError>,
) -> Result<Bytes, Status> {
    if len > MAX_RESPONSE_BYTES {
        return Err(Status::resource_exhausted(format!("a response of {len} bytes, above {MAX_RESPONSE_BYTES}")));
    }
    let prefix = u32::try_from(len).map_err(|_| Status::resource_exhausted("response larger than 4 GiB"))?;
    let mut buf = Vec::with_capacity(PREFIX + len);
    buf.push(0);
    buf.extend_from_slice(&prefix.to_be_bytes());
    write(&mut buf).map_err(|e| Status::internal(e.to_string()))?;
    if buf.len() != PREFIX + len {
        return Err(Status::internal(format!("a response of {} bytes, announced as {len}", buf.len() - PREFIX)));
    }
    Ok(Bytes::from(buf))
}

/// The trailers that end the stream with `status`.
fn trailers(status: &Status) -> hyper::HeaderMap {
    let mut map = hyper::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Only an unencodable message fails; the code alone still ends the stream.
        let _ = Status::new(status.code(), "").add_header(&mut map);
    }
    map
}

impl hyper::body::Body for Responses {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let end = match std::task::ready!(self.messages.poll_recv(cx)) {
            Some(Ok(framed)) => return Poll::Ready(Some(Ok(Frame::data(framed)))),
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        self.done = true;
        Poll::Ready(Some(Ok(Frame::trailers(trailers(&end)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// A request buffer up to this capacity is kept between messages; a larger one (a
/// proxy's first subscription names every endpoint set) is freed once decoded.
const KEPT_REQUEST_BUFFER: usize = 4 << 10;

/// The messages of a streaming request body, each decoded once it has fully arrived.
#[derive(Debug)]
pub struct Requests<M, B> {
    body: Pin<Box<B>>,
    /// Received bytes not yet decoded: at most one message and the start of the next.
    buf: Vec<u8>,
    /// The largest message accepted; a larger one ends the stream with OUT_OF_RANGE.
    max: usize,
    /// The body ended or failed.
    done: bool,
    message: PhantomData<fn() -> M>,
}

impl<M, B> Requests<M, B>
where
    M: Message + Default,
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// The messages of `body`, each at most `max` bytes.
    pub fn new(body: B, max: usize) -> Self {
        Requests { body: Box::pin(body), buf: Vec::new(), max, done: false, message: PhantomData }
    }

    /// The next message; `None` once the client has ended its side. An error ends the
    /// stream. Cancel-safe: what arrived before a cancelled call is kept for the next.
    pub async fn next(&mut self) -> Option<Result<M, Status>> {
        loop {
            if let Some(message) = self.decode() {
                return Some(message);
            }
            if self.done {
                return None;
            }
            match self.body.frame().await {
                None => {
                    self.done = true;
                    if !self.buf.is_empty() {
                        return Some(Err(Status::internal("the request stream ended within a message")));
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(Status::from_error(e.into())));
                }
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
            }
        }
    }

    /// The first message in the buffer, if it has fully arrived.
    fn decode(&mut self) -> Option<Result<M, Status>> {
        if self.done && self.buf.is_empty() || self.buf.len() < PREFIX {
            return None;
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        let failed = if self.buf[0] != 0 {
            Some(Status::unimplemented("compressed requests are not accepted"))
        } else if len > self.max {
            Some(Status::out_of_range(format!("a request of {len} bytes, above {}", self.max)))
        } else {
            None
        };
        if let Some(status) = failed {
            self.done = true;
            self.buf = Vec::new();
            return Some(Err(status));
        }
        let end = PREFIX + len;
        if self.buf.len() < end {
            // Room as the message arrives (doubling), never past its end: a length
            // announced is not memory taken before the bytes come.
            let room = (end - self.buf.len()).min(self.buf.capacity().max(KEPT_REQUEST_BUFFER));
            self.buf.reserve_exact(room);
            return None;
        }
        let message = M::decode(&self.buf[PREFIX..end]).map_err(|e| Status::internal(e.to_string()));
        self.buf.drain(..end);
        if self.buf.capacity() > KEPT_REQUEST_BUFFER && self.buf.len() <= KEPT_REQUEST_BUFFER {
            self.buf.shrink_to(KEPT_REQUEST_BUFFER);
        }
        Some(message)
    }
}

/// The HTTP response of a streaming call whose framed messages come from `messages`.
pub fn response(messages: mpsc::Receiver<Result<Bytes, Status>>) -> hyper::Response<tonic::body::Body> {
    let mut response = hyper::Response::new(tonic::body::Body::new(Responses::new(messages)));
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/grpc"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn each_message_is_framed_alone_and_the_status_ends_the_stream() {
        let (tx, rx) = mpsc::channel(4);
        for value in ["first", "second"] {
            let _ = tx.send(frame(&value.to_owned())).await;
        }
        let _ = tx.send(Err(Status::unavailable("moved"))).await;
        let mut body = Responses::new(rx);
        let mut messages = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap_or_else(|e| panic!("{e}"));
            match frame.into_data() {
                Ok(data) => {
                    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
                    assert_eq!((data[0], data.len()), (0, PREFIX + len), "uncompressed, exactly one message");
                    messages.push(String::decode(&data[PREFIX..]).unwrap_or_else(|e| panic!("{e}")));
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        assert_eq!(messages, ["first", "second"]);
        let trailers = trailers.unwrap_or_else(|| panic!("no trailers"));
        assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"14"[..]));
        assert_eq!(trailers.get("grpc-message").map(|v| v.as_bytes()), Some(&b"moved"[..]));
    }

    /// A request body that yields the given frames, then ends.
    fn body(
        frames: Vec<Bytes>,
    ) -> http_body_util::StreamBody<impl tokio_stream::Stream<Item = Result<Frame<Bytes>, Status>>> {
        http_body_util::StreamBody::new(tokio_stream::iter(frames.into_iter().map(|b| Ok(Frame::data(b)))))
    }

    fn framed(message: &str) -> Vec<u8> {
        frame(&message.to_owned()).map(|b| b.to_vec()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn requests_split_across_frames_and_sharing_frames_are_decoded_in_order() {
        let large = "x".repeat(100_000);
        let mut bytes = framed("first");
        bytes.extend(framed(&large));
        bytes.extend(framed("third"));
        // Frames of 7 bytes: every message boundary falls inside one.
        let frames = bytes.chunks(7).map(Bytes::copy_from_slice).collect();
        let mut requests = Requests::<String, _>::new(body(frames), 1 << 20);
        let mut got = Vec::new();
        while let Some(message) = requests.next().await {
            got.push(message.unwrap_or_else(|e| panic!("{e}")));
            // Once a large message is decoded, its buffer is not kept.
            assert!(requests.buf.capacity() <= KEPT_REQUEST_BUFFER, "kept {} bytes", requests.buf.capacity());
        }
        assert_eq!(got, ["first".to_owned(), large, "third".to_owned()]);
    }

    #[tokio::test]
    async fn a_request_above_the_limit_a_compressed_one_or_a_cut_one_ends_the_stream_with_its_reason() {
        let mut requests = Requests::<String, _>::new(body(vec![Bytes::from(framed(&"x".repeat(100)))]), 10);
        let status = requests.next().await.and_then(Result::err).map(|s| s.code());
        assert_eq!(status, Some(tonic::Code::OutOfRange));
        assert!(requests.next().await.is_none());

        let mut compressed = framed("zipped");
        compressed[0] = 1;
        let mut requests = Requests::<String, _>::new(body(vec![Bytes::from(compressed)]), 1 << 20);
        assert_eq!(requests.next().await.and_then(Result::err).map(|s| s.code()), Some(tonic::Code::Unimplemented));

        let cut = framed("cut short");
        let mut requests = Requests::<String, _>::new(body(vec![Bytes::copy_from_slice(&cut[..8])]), 1 << 20);
        assert_eq!(requests.next().await.and_then(Result::err).map(|s| s.code()), Some(tonic::Code::Internal));
        assert!(requests.next().await.is_none());
    }

    #[tokio::test]
    async fn a_closed_sender_ends_the_stream_with_ok() {
        let (tx, rx) = mpsc::channel::<Result<Bytes, Status>>(1);
        drop(tx);
        let collected = Responses::new(rx).collect().await.unwrap_or_else(|e| panic!("{e}"));
        let trailers = collected.trailers().cloned().unwrap_or_default();
        assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
    }
}
