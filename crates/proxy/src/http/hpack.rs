//! What HTTP/2's header compression keeps. An HTTP/2 connection's HPACK encoder keeps
//! header fields it has sent in its dynamic table, to refer to them later. A header value
//! parsed by hyper or h2 is a slice of the buffer its whole message was read into (8 KB or
//! more), and a kept slice keeps that whole buffer: a table of a few dozen entries could
//! hold a buffer per entry, for as long as the connection lives. So before headers go out
//! on HTTP/2, their values are moved into one small allocation of their own.

use bytes::BytesMut;
use hyper::HeaderMap;
use hyper::header::HeaderValue;

/// Moves every value of `headers` into one allocation holding just their bytes.
pub fn detach_values(headers: &mut HeaderMap) {
    let total: usize = headers.values().map(HeaderValue::len).sum();
    if total == 0 {
        return;
    }
    let mut copy = BytesMut::with_capacity(total);
    for value in headers.values() {
        copy.extend_from_slice(value.as_bytes());
    }
    let mut copy = copy.freeze();
    for value in headers.values_mut() {
        let own = copy.split_to(value.len());
        // The bytes are those of a valid value, so this cannot fail; if it did, the
        // value would stay as it is.
        if let Ok(mut detached) = HeaderValue::from_maybe_shared(own) {
            detached.set_sensitive(value.is_sensitive());
            *value = detached;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After detaching, no value refers to the buffer the headers were parsed from, and
    /// every value (repeated names, sensitivity) is as it was.
    #[test]
    fn values_leave_the_read_buffer() {
        let read = bytes::Bytes::from(b"text/plain\x00nginx\x00a=1\x00b=2\x00token".repeat(200));
        let slice = |at: usize, len: usize| {
            HeaderValue::from_maybe_shared(read.slice(at..at + len)).unwrap_or_else(|e| panic!("{e}"))
        };
        let mut headers = HeaderMap::new();
        headers.insert("content-type", slice(0, 10));
        headers.insert("server", slice(11, 5));
        headers.append("set-cookie", slice(17, 3));
        headers.append("set-cookie", slice(21, 3));
        let mut token = slice(25, 5);
        token.set_sensitive(true);
        headers.insert("authorization", token);
        headers.insert("x-static", HeaderValue::from_static("static"));
        let before = headers.clone();
        detach_values(&mut headers);
        assert_eq!(headers, before);
        assert!(headers.get("authorization").is_some_and(HeaderValue::is_sensitive));
        assert!(!headers.get("server").is_some_and(HeaderValue::is_sensitive));
        drop(before);
        assert!(read.is_unique(), "a header value still refers to the read buffer");
        detach_values(&mut HeaderMap::new());
    }
}
