//! Trace context on the wire: W3C Trace Context (`traceparent`, `tracestate`) and
//! Zipkin's B3, in both its multi-header (`x-b3-*`) and single-header (`b3`) forms.

use hyper::HeaderMap;
use hyper::header::HeaderValue;

/// The B3 form a request came with, so that its next hop gets the same form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3 {
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`.
    Multi {
        /// The trace id had 64 bits (16 hex digits), not 128.
        short: bool,
    },
    /// `b3: {trace}-{span}-{sampled}-{parent}`.
    Single {
        /// The trace id had 64 bits.
        short: bool,
    },
}

/// The caller's span, as the request carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    /// 128 bits; a 64-bit B3 trace id is the low half.
    pub trace_id: u128,
    /// The caller's span.
    pub span_id: u64,
    /// The caller's sampling decision.
    pub sampled: bool,
    /// `tracestate`, passed on unchanged.
    pub trace_state: Option<HeaderValue>,
    /// Set when the context came as B3 rather than `traceparent`.
    pub b3: Option<B3>,
}

/// What a request says about its caller's span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// No context: this hop starts a trace.
    None,
    /// A context that cannot be read: as Envoy does, this hop neither traces nor
    /// touches it, and it goes upstream as it came.
    Invalid,
    /// The caller's span.
    Parent(Parent),
}

/// The caller's span from `traceparent` (preferred), or else B3 (`b3` before `x-b3-*`).
/// A request with B3 headers gets them rewritten for its next hop, whichever header
/// its context came from, so that the two never disagree.
pub fn extract(headers: &HeaderMap) -> Incoming {
    match extract_context(headers) {
        Incoming::Parent(p) => Incoming::Parent(Parent { b3: b3_form(headers), ..p }),
        other => other,
    }
}

/// The B3 form the request carries, if any.
fn b3_form(headers: &HeaderMap) -> Option<B3> {
    let trace_len = |v: &HeaderValue| v.to_str().ok().map(|t| t.trim().split('-').next().unwrap_or("").len());
    if let Some(v) = headers.get("b3") {
        return Some(B3::Single { short: trace_len(v) == Some(16) });
    }
    headers.get("x-b3-traceid").map(|v| B3::Multi { short: trace_len(v) == Some(16) })
}

fn extract_context(headers: &HeaderMap) -> Incoming {
    let found = if let Some(value) = headers.get("traceparent") {
        value.to_str().ok().and_then(traceparent).map(|parent| {
            let states: Vec<&str> = headers.get_all("tracestate").iter().filter_map(|v| v.to_str().ok()).collect();
            let trace_state = match states.as_slice() {
                [] => None,
                [one] => HeaderValue::from_str(one).ok(),
                many => HeaderValue::from_str(&many.join(",")).ok(),
            };
            Parent { trace_state, ..parent }
        })
    } else if let Some(single) = headers.get("b3") {
        match single.to_str().ok().map(str::trim) {
            // A bare sampling state carries no span to continue.
            Some("0" | "1" | "d") => return Incoming::None,
            other => other.and_then(b3_single),
        }
    } else if headers.contains_key("x-b3-traceid") && headers.contains_key("x-b3-spanid") {
        b3_multi(headers)
    } else {
        return Incoming::None;
    };
    found.map_or(Incoming::Invalid, Incoming::Parent)
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, read as Envoy reads it:
/// exactly 55 characters, hex digits, neither id all zeros.
fn traceparent(value: &str) -> Option<Parent> {
    if value.len() != 55 {
        return None;
    }
    let fields: Vec<&str> = value.split('-').collect();
    let [version, trace, span, flags] = fields.as_slice() else { return None };
    if version.len() != 2 || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if ![version, trace, span, flags].iter().all(|f| f.bytes().all(|b| b.is_ascii_hexdigit())) {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
    let span_id = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Parent { trace_id, span_id, sampled: flags & 1 == 1, trace_state: None, b3: None })
}

fn hex_id(s: &str) -> Option<(u128, bool)> {
    let short = match s.len() {
        16 => true,
        32 => false,
        _ => return None,
    };
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(s, 16).ok().filter(|v| *v != 0).map(|v| (v, short))
}

fn parse_span_id(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
        .filter(|v| *v != 0)
}

/// `b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]`.
fn b3_single(value: &str) -> Option<Parent> {
    let mut fields = value.split('-');
    let (trace_id, short) = hex_id(fields.next()?)?;
    let span_id = parse_span_id(fields.next()?)?;
    let sampled = match fields.next() {
        None | Some("1") | Some("d") => true,
        Some("0") => false,
        Some(_) => return None,
    };
    if fields.next().is_some_and(|parent| parse_span_id(parent).is_none()) || fields.next().is_some() {
        return None;
    }
    Some(Parent { trace_id, span_id, sampled, trace_state: None, b3: Some(B3::Single { short }) })
}

fn b3_multi(headers: &HeaderMap) -> Option<Parent> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let (trace_id, short) = hex_id(get("x-b3-traceid")?)?;
    let span_id = parse_span_id(get("x-b3-spanid")?)?;
    let debug = get("x-b3-flags") == Some("1");
    let sampled = debug
        || match get("x-b3-sampled") {
            None => true,
            Some(s) => s == "1" || s.eq_ignore_ascii_case("true"),
        };
    Some(Parent { trace_id, span_id, sampled, trace_state: None, b3: Some(B3::Multi { short }) })
}

/// The context this hop passes on: its own span as the next hop's parent.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The trace.
    pub trace_id: u128,
    /// This hop's span.
    pub span_id: u64,
    /// This hop's parent, for B3's `x-b3-parentspanid`.
    pub parent_span_id: Option<u64>,
    /// Whether the trace is sampled.
    pub sampled: bool,
    /// `tracestate`, passed on.
    pub trace_state: Option<HeaderValue>,
    /// The B3 form the request came with, if any.
    pub b3: Option<B3>,
}

impl Outgoing {
    /// Writes the context into the request going upstream: always `traceparent`, and
    /// B3 in the form the caller used.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let flags = if self.sampled { "01" } else { "00" };
        let traceparent = format!("00-{:032x}-{:016x}-{flags}", self.trace_id, self.span_id);
        if let Ok(v) = HeaderValue::from_str(&traceparent) {
            headers.insert("traceparent", v);
        }
        // As Envoy: `tracestate` always goes, empty when the caller sent none.
        headers.insert("tracestate", self.trace_state.clone().unwrap_or_else(|| HeaderValue::from_static("")));
        let trace = |short: bool| {
            if short { format!("{:016x}", self.trace_id as u64) } else { format!("{:032x}", self.trace_id) }
        };
        match self.b3 {
            None => {}
            Some(B3::Multi { short }) => {
                let mut set = |name: &'static str, value: String| {
                    if let Ok(v) = HeaderValue::from_str(&value) {
                        headers.insert(name, v);
                    }
                };
                set("x-b3-traceid", trace(short));
                set("x-b3-spanid", format!("{:016x}", self.span_id));
                set("x-b3-sampled", if self.sampled { "1" } else { "0" }.to_owned());
                match self.parent_span_id {
                    Some(p) => set("x-b3-parentspanid", format!("{p:016x}")),
                    None => {
                        headers.remove("x-b3-parentspanid");
                    }
                }
            }
            Some(B3::Single { short }) => {
                let sampled = if self.sampled { "1" } else { "0" };
                let mut value = format!("{}-{:016x}-{sampled}", trace(short), self.span_id);
                if let Some(p) = self.parent_span_id {
                    value.push_str(&format!("-{p:016x}"));
                }
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert("b3", v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")));
        }
        h
    }

    #[test]
    fn traceparent_is_read_and_checked() {
        let h = headers(&[
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        let Incoming::Parent(p) = extract(&h) else { panic!("no parent") };
        assert_eq!(p.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p.span_id, 0x00f067aa0ba902b7);
        assert!(p.sampled);
        assert_eq!(p.trace_state, Some(HeaderValue::from_static("congo=t61rcWkgMzE")));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(extract(&headers(&[("traceparent", bad)])), Incoming::Invalid, "{bad}");
        }
        let upper = extract(&headers(&[("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-00")]));
        assert!(matches!(upper, Incoming::Parent(p) if !p.sampled));
        assert_eq!(extract(&HeaderMap::new()), Incoming::None);
    }

    #[test]
    fn b3_forms_are_read() {
        let parent = |h: HeaderMap| match extract(&h) {
            Incoming::Parent(p) => p,
            other => panic!("{other:?}"),
        };
        let multi = parent(headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
        ]));
        assert_eq!((multi.trace_id, multi.span_id, multi.sampled), (0x463ac35c9f6413ad, 0xa2fb4a1d1a96d312, false));
        assert_eq!(multi.b3, Some(B3::Multi { short: true }));
        let debug = parent(headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-flags", "1"),
            ("x-b3-sampled", "0"),
        ]));
        assert!(debug.sampled);
        let single = parent(headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")]));
        assert_eq!(single.b3, Some(B3::Single { short: false }));
        assert!(single.sampled);
        assert_eq!(extract(&headers(&[("b3", "0")])), Incoming::None);
        assert_eq!(
            extract(&headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-x")])),
            Incoming::Invalid
        );
        assert_eq!(extract(&headers(&[("x-b3-traceid", "463ac35c9f6413ad")])), Incoming::None);
        assert_eq!(
            extract(&headers(&[("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-spanid", "zz")])),
            Incoming::Invalid
        );
    }

    #[test]
    fn outgoing_context_names_this_hop() {
        let out = Outgoing {
            trace_id: 0x463ac35c9f6413ad,
            span_id: 0x1234,
            parent_span_id: Some(0xa2fb4a1d1a96d312),
            sampled: true,
            trace_state: None,
            b3: Some(B3::Multi { short: true }),
        };
        let mut h = HeaderMap::new();
        out.inject(&mut h);
        assert_eq!(h["traceparent"], "00-0000000000000000463ac35c9f6413ad-0000000000001234-01");
        assert_eq!(h["x-b3-traceid"], "463ac35c9f6413ad");
        assert_eq!(h["x-b3-spanid"], "0000000000001234");
        assert_eq!(h["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert_eq!(h["x-b3-sampled"], "1");
        assert_eq!(h["tracestate"], "");
        let single = Outgoing { b3: Some(B3::Single { short: false }), parent_span_id: None, sampled: false, ..out };
        let mut h = HeaderMap::new();
        single.inject(&mut h);
        assert_eq!(h["b3"], "0000000000000000463ac35c9f6413ad-0000000000001234-0");
        assert_eq!(h["traceparent"], "00-0000000000000000463ac35c9f6413ad-0000000000001234-00");
    }
}
