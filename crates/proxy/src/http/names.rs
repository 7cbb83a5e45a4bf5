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

/// Names looked up by [`Known::get`], with a mask of their lengths, so that most other
/// names are passed over with one test.
#[derive(Debug)]
pub struct Known {
    names: &'static [HeaderName],
    lengths: u64,
}

impl Known {
    /// The lookup for `names`.
    pub fn new(names: &'static [HeaderName]) -> Known {
        let lengths = names.iter().map(|n| n.as_str().len()).filter(|l| *l < 64).fold(0, |m, l| m | 1 << l);
        Known { names, lengths }
    }

    /// The name that `raw` spells (in any case), taken from here rather than copied:
    /// `http` keeps only standard names as constants.
    pub fn get(&self, raw: &[u8]) -> Option<HeaderName> {
        if raw.len() >= 64 || self.lengths & 1 << raw.len() == 0 {
            return None;
        }
        self.names
            .iter()
            .find(|k| k.as_str().len() == raw.len() && k.as_str().as_bytes().eq_ignore_ascii_case(raw))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_are_found_in_any_case_and_others_are_not() {
        static NAMES: [HeaderName; 2] = [X_REQUEST_ID, GRPC_STATUS];
        let known = Known::new(&NAMES);
        assert_eq!(known.get(b"X-Request-ID"), Some(X_REQUEST_ID));
        assert_eq!(known.get(b"grpc-status"), Some(GRPC_STATUS));
        // Same length as a known name, different name.
        assert_eq!(known.get(b"x-request-ie"), None);
        assert_eq!(known.get(b"content-length"), None);
        assert_eq!(known.get(&[b'x'; 80]), None);
    }
}
