//! The one place that turns failures into responses: status, body and the response
//! flags Envoy users read in access logs (`UH`, `UF`, `UO`, `UT`, `NR`, `FI`, ...).
//! For gRPC requests the reply is a gRPC status instead, as Envoy sends it.

use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use crate::body::{Body, full};

/// Envoy's response flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u32);

macro_rules! flags {
    ($($name:ident = $bit:expr, $text:literal, $doc:literal;)*) => {
        impl Flags {
            $(#[doc = $doc] pub const $name: Flags = Flags(1 << $bit);)*

            /// Envoy's text form: `UH,UF`, or `-` when none.
            pub fn text(self) -> String {
                let mut out = Vec::new();
                $(if self.0 & Flags::$name.0 != 0 { out.push($text); })*
                if out.is_empty() { "-".into() } else { out.join(",") }
            }
        }
    };
}

flags! {
    NO_HEALTHY_UPSTREAM = 0, "UH", "No healthy upstream host.";
    UPSTREAM_CONNECTION_FAILURE = 1, "UF", "The upstream connection failed.";
    UPSTREAM_OVERFLOW = 2, "UO", "A circuit breaker was open.";
    UPSTREAM_TIMEOUT = 3, "UT", "The upstream did not answer in time.";
    NO_ROUTE = 4, "NR", "No route matched.";
    FAULT_ABORT = 5, "FI", "A fault was injected.";
    FAULT_DELAY = 6, "DI", "A delay was injected.";
    RETRY_LIMIT = 7, "URX", "Retries were exhausted.";
    UPSTREAM_RESET = 8, "UR", "The upstream reset the request.";
    NO_CLUSTER = 9, "NC", "The route's cluster does not exist.";
    DOWNSTREAM_PROTOCOL_ERROR = 10, "DPE", "The request was malformed.";
    UPSTREAM_CONNECTION_TERMINATION = 11, "UC", "The upstream closed the connection.";
    UPGRADE_FAILED = 12, "UPE", "The upgrade was not allowed.";
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

impl std::ops::BitOrAssign for Flags {
    fn bitor_assign(&mut self, other: Flags) {
        self.0 |= other.0;
    }
}

/// A response the proxy makes itself.
#[derive(Debug, Clone)]
pub struct LocalReply {
    /// HTTP status.
    pub status: u16,
    /// Body text (Envoy's wording).
    pub body: &'static str,
    /// Response flags.
    pub flags: Flags,
    /// A gRPC status to send instead of the mapped one.
    pub grpc_status: Option<u32>,
}

impl LocalReply {
    /// No route matched: 404, empty.
    pub const NO_ROUTE: LocalReply = LocalReply::new(404, "", Flags::NO_ROUTE);
    /// No healthy upstream: 503.
    pub const NO_HEALTHY_UPSTREAM: LocalReply = LocalReply::new(503, "no healthy upstream", Flags::NO_HEALTHY_UPSTREAM);
    /// Connect failure: 503.
    pub const CONNECT_FAILURE: LocalReply = LocalReply::new(
        503,
        "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
        Flags::UPSTREAM_CONNECTION_FAILURE,
    );
    /// Reset before headers: 503.
    pub const RESET: LocalReply = LocalReply::new(
        503,
        "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
        Flags::UPSTREAM_CONNECTION_TERMINATION,
    );
    /// A circuit breaker is open: 503.
    pub const OVERFLOW: LocalReply = LocalReply::new(
        503,
        "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        Flags::UPSTREAM_OVERFLOW,
    );
    /// The route's timeout passed: 504.
    pub const TIMEOUT: LocalReply = LocalReply::new(504, "upstream request timeout", Flags::UPSTREAM_TIMEOUT);
    /// The route's cluster is unknown: 503.
    pub const NO_CLUSTER: LocalReply = LocalReply::new(503, "", Flags::NO_CLUSTER);
    /// An upgrade the connection manager does not allow: 403.
    pub const UPGRADE_FAILED: LocalReply = LocalReply::new(403, "", Flags::UPGRADE_FAILED);
    /// A malformed request: 400.
    pub const BAD_REQUEST: LocalReply = LocalReply::new(400, "Bad Request", Flags::DOWNSTREAM_PROTOCOL_ERROR);

    /// A reply.
    pub const fn new(status: u16, body: &'static str, flags: Flags) -> LocalReply {
        LocalReply { status, body, flags, grpc_status: None }
    }

    /// The response, as gRPC when the request was gRPC.
    pub fn response(&self, grpc: bool) -> Response<Body> {
        let mut response = if grpc {
            let status = self.grpc_status.unwrap_or_else(|| grpc_status_for(self.status));
            let mut r = Response::new(crate::body::empty());
            let headers = r.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            headers.insert(crate::http::names::GRPC_STATUS, HeaderValue::from(status));
            if !self.body.is_empty() {
                headers.insert(crate::http::names::GRPC_MESSAGE, HeaderValue::from_static(self.body));
            }
            r
        } else {
            let mut r = Response::new(full(self.body));
            *r.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            if !self.body.is_empty() {
                r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            }
            r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(self.body.len()));
            r
        };
        response.extensions_mut().insert(self.flags);
        response
    }
}

/// Envoy's mapping of an HTTP status to a gRPC status for local replies.
pub fn grpc_status_for(http: u16) -> u32 {
    match http {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}
