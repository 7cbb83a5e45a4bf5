//! The one body type that flows through the proxy, both ways.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Any error a body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body with these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body streamed from a hyper connection.
pub fn stream(incoming: hyper::body::Incoming) -> Body {
    incoming.map_err(BoxError::from).boxed()
}

/// A request body as the downstream connection delivers it.
#[derive(Debug)]
pub enum Inbound {
    /// Streamed by hyper's server: HTTP/2, and HTTP/1.1 connections handed to it.
    Streamed(hyper::body::Incoming),
    /// Read whole by weft's own HTTP/1.1 server before the request was routed; `None`
    /// once its one frame has been taken.
    Whole(Option<Bytes>),
}

impl Inbound {
    /// The whole body, when the server read it before routing.
    pub fn whole(&self) -> Option<Bytes> {
        match self {
            Inbound::Whole(b) => Some(b.clone().unwrap_or_default()),
            Inbound::Streamed(_) => None,
        }
    }
}

impl hyper::body::Body for Inbound {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        match &mut *self {
            Inbound::Streamed(b) => std::pin::Pin::new(b).poll_frame(cx),
            Inbound::Whole(b) => {
                std::task::Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|b| Ok(hyper::body::Frame::data(b))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::Streamed(b) => b.is_end_stream(),
            Inbound::Whole(b) => b.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Inbound::Streamed(b) => b.size_hint(),
            Inbound::Whole(b) => hyper::body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
