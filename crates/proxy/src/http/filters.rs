//! The HTTP filters that answer or hold a request before it is forwarded: CORS,
//! fault injection, redirects and direct responses.

use crate::body::Inbound;
use hyper::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD,
    CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, LOCATION, ORIGIN,
};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};

use crate::body::{Body, empty, full};
use crate::model::route::{Cors, Fault, FaultAbort, PathRedirect, Redirect, chance};
use crate::reply::{Flags, LocalReply};

/// What the CORS filter decided.
pub enum CorsOutcome {
    /// A preflight from an allowed origin, answered here.
    Preflight(Response<Body>),
    /// A request from an allowed origin; the response gets CORS headers.
    Allowed(HeaderValue),
    /// Not a CORS request, or an origin that is not allowed: passed through untouched.
    NotCors,
}

/// Envoy's CORS filter.
pub fn cors(policy: &Cors, req: &Request<Inbound>) -> CorsOutcome {
    let Some(origin) = req.headers().get(ORIGIN) else { return CorsOutcome::NotCors };
    let allowed = origin.to_str().is_ok_and(|o| policy.origins.iter().any(|m| m.matches(o)));
    if !allowed {
        return CorsOutcome::NotCors;
    }
    if req.method() == Method::OPTIONS && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD) {
        let mut response = Response::new(empty());
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if policy.credentials {
            headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        for (name, value) in [
            (ACCESS_CONTROL_ALLOW_METHODS, &policy.methods),
            (ACCESS_CONTROL_ALLOW_HEADERS, &policy.headers),
            (ACCESS_CONTROL_MAX_AGE, &policy.max_age),
        ] {
            if let Some(v) = value {
                headers.insert(name, v.clone());
            }
        }
        headers.insert(CONTENT_LENGTH, HeaderValue::from(0));
        return CorsOutcome::Preflight(response);
    }
    CorsOutcome::Allowed(origin.clone())
}

/// CORS headers on the response to an allowed origin.
pub fn cors_response(policy: &Cors, origin: HeaderValue, headers: &mut HeaderMap) {
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    if policy.credentials {
        headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    if let Some(expose) = &policy.expose {
        headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
    }
}

/// Envoy's fault filter: the delay first, then maybe the abort.
pub async fn fault(fault: &Fault, flags: &mut Flags) -> Result<(), LocalReply> {
    if let Some((delay, share)) = fault.delay
        && chance(share)
    {
        *flags |= Flags::FAULT_DELAY;
        tokio::time::sleep(delay).await;
    }
    if let Some((abort, share)) = fault.abort
        && chance(share)
    {
        let mut reply = LocalReply::new(503, "fault filter abort", Flags::FAULT_ABORT);
        match abort {
            FaultAbort::Http(status) => reply.status = status,
            FaultAbort::Grpc(status) => {
                reply.status = 200;
                reply.grpc_status = Some(status);
            }
        }
        return Err(reply);
    }
    Ok(())
}

/// A redirect response, with the location Envoy would build.
pub fn redirect(r: &Redirect, req: &Request<Inbound>, host: &str, prefix_len: Option<usize>) -> Response<Body> {
    let scheme_now = req
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| req.uri().scheme_str().unwrap_or("http"))
        .to_owned();
    let scheme = r.scheme.clone().unwrap_or_else(|| scheme_now.clone());
    let mut authority = r.host.clone().unwrap_or_else(|| host.to_owned());
    if let Some(port) = r.port {
        authority = format!("{}:{port}", strip_port(&authority));
    } else if scheme != scheme_now {
        // A scheme change drops a port that was the old scheme's default.
        let default = if scheme_now == "https" { ":443" } else { ":80" };
        if let Some(stripped) = authority.strip_suffix(default) {
            authority = stripped.to_owned();
        }
    }
    let original = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let (path, query) = original.split_once('?').map_or((original, None), |(p, q)| (p, Some(q)));
    let mut new_path = match &r.path {
        Some(PathRedirect::Full(p)) => p.clone(),
        Some(PathRedirect::Prefix(p)) => {
            let rest = prefix_len.and_then(|n| path.get(n..)).unwrap_or(path);
            format!("{p}{rest}")
        }
        Some(PathRedirect::Regex(re, sub)) => re.replace_all(path, sub.as_str()).into_owned(),
        None => path.to_owned(),
    };
    if !r.strip_query
        && !new_path.contains('?')
        && let Some(q) = query
    {
        new_path = format!("{new_path}?{q}");
    }
    let location = format!("{scheme}://{authority}{new_path}");
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, v);
    }
    response.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(0));
    response
}

fn strip_port(authority: &str) -> &str {
    if let Some(end) = authority.rfind(']') {
        return &authority[..=end];
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// A direct response.
pub fn direct(status: u16, body: &str) -> Response<Body> {
    let mut response = Response::new(full(body.to_owned()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    if !body.is_empty() {
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    response
}
