//! The response side of a server-streaming gRPC method, one buffer per message.
//!
//! tonic's generated servers encode a stream's responses into one buffer per stream, and
//! that buffer keeps the capacity of the largest response for as long as the stream
//! lives. An xDS stream's first responses are its largest (every cluster, every
//! endpoint set), so a thousand connected proxies held a thousand copies of that
//! capacity: about a gigabyte at 1 000 services, ten at 10 000. [`Responses`] frames
//! each message into a buffer of its own, freed once the message is written.
//! Requests are still decoded by tonic, and routing, TLS and HTTP/2 are tonic's and
//! hyper's.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::{Bytes, Frame};
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;

/// The gRPC message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// The largest response sent; a larger one ends the stream with RESOURCE_EXHAUSTED.
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// A streaming response body: each message from the channel as one gRPC message, then
/// the status in the trailers (OK when the sender is dropped, or the error sent).
#[derive(Debug)]
pub struct Responses<T> {
    messages: mpsc::Receiver<Result<T, Status>>,
    done: bool,
}

impl<T> Responses<T> {
    /// The body of the messages sent on `messages`.
    pub fn new(messages: mpsc::Receiver<Result<T, Status>>) -> Self {
        Responses { messages, done: false }
    }
}

/// One message with its gRPC prefix, in a buffer of exactly its size.
fn frame(message: &impl Message) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    if len > MAX_RESPONSE_BYTES {
        return Err(Status::resource_exhausted(format!("a response of {len} bytes, above {MAX_RESPONSE_BYTES}")));
    }
    let prefix = u32::try_from(len).map_err(|_| Status::resource_exhausted("response larger than 4 GiB"))?;
    let mut buf = Vec::with_capacity(PREFIX + len);
    buf.push(0);
    buf.extend_from_slice(&prefix.to_be_bytes());
    message.encode(&mut buf).map_err(|e| Status::internal(e.to_string()))?;
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

impl<T: Message + Unpin> hyper::body::Body for Responses<T> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let end = match std::task::ready!(self.messages.poll_recv(cx)) {
            Some(Ok(message)) => match frame(&message) {
                Ok(bytes) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
                Err(status) => status,
            },
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

/// The HTTP response of a streaming call whose messages come from `messages`.
pub fn response<T: Message + Unpin + Send + 'static>(
    messages: mpsc::Receiver<Result<T, Status>>,
) -> hyper::Response<tonic::body::Body> {
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
            let _ = tx.send(Ok(value.to_owned())).await;
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

    #[tokio::test]
    async fn a_closed_sender_ends_the_stream_with_ok() {
        let (tx, rx) = mpsc::channel::<Result<String, Status>>(1);
        drop(tx);
        let collected = Responses::new(rx).collect().await.unwrap_or_else(|e| panic!("{e}"));
        let trailers = collected.trailers().cloned().unwrap_or_default();
        assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
    }
}
