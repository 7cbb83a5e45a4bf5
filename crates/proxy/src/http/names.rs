//! Header names the request path reads and writes, made once: a name given as a string
//! is parsed and hashed again on every use.

use hyper::header::HeaderName;

/// `x-request-id`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-forwarded-proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-forwarded-client-cert`.
pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// `x-envoy-expected-rq-timeout-ms`.
pub const X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
/// `x-envoy-attempt-count`.
pub const X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
/// `x-envoy-upstream-service-time`.
pub const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");
/// `grpc-status`.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `keep-alive`.
pub const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `proxy-connection`.
pub const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The name in `known` that `raw` spells (in any case), taken from there rather than
/// copied: `http` keeps only standard names as constants.
pub fn known(known: &[HeaderName], raw: &[u8]) -> Option<HeaderName> {
    known.iter().find(|k| k.as_str().len() == raw.len() && k.as_str().as_bytes().eq_ignore_ascii_case(raw)).cloned()
}
