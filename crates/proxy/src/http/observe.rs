//! What a request adds to Istio's metrics and to the access logs: its labels are
//! settled when the response headers go out, its size and duration when the response
//! body ends (or the client goes away), which is when it is counted and logged.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::HeaderMap;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::Connection;
use crate::Shared;
use crate::access_log::Entry;
use crate::body::{Body, BoxError};
use crate::model::cluster::ClusterSpec;
use crate::model::listener::HttpSpec;
use crate::reply::Flags;
use crate::telemetry::{Labels, Reporter, Request, Workload};

/// What the routing of one request learnt for its metrics and logs.
#[derive(Debug, Default)]
pub struct Observed {
    /// The cluster the request went to.
    pub cluster: Option<Arc<ClusterSpec>>,
    /// The route's name.
    pub route: Option<Arc<str>>,
    /// The upstream host that answered (none for a local reply).
    pub upstream: Option<Arc<str>>,
    /// The response flags of a forwarded request.
    pub flags: Flags,
    /// The server's workload, from its metadata in the response (outbound).
    pub peer: Option<Arc<Workload>>,
    /// Request body bytes read from the client, counted as they go upstream.
    pub request_body: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// This hop's span, when the request is traced.
    pub span: Option<crate::trace::Active>,
}

/// The request's side of its metrics, taken before it is routed.
pub struct Start {
    started: Instant,
    request_bytes: u64,
    grpc: bool,
    /// The client's workload, from its metadata in the request (inbound).
    peer: Option<Arc<Workload>>,
    /// `:authority`, for requests that reach no cluster (cheap copies: shared bytes).
    authority: Option<hyper::http::uri::Authority>,
    /// `Host`, likewise.
    host: Option<hyper::header::HeaderValue>,
    /// The access log entry, when the connection manager has access logs.
    log: Option<Box<Entry>>,
    /// What the metric overrides' added labels read from the request.
    captured: Option<Box<crate::telemetry::overrides::Captured>>,
}

/// The approximate size of a header block on the wire.
fn header_bytes(headers: &HeaderMap) -> u64 {
    headers.iter().map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64).sum()
}

impl Start {
    /// Takes what the metrics and logs need from the request; `peer` is the caller's
    /// workload from its metadata (inbound).
    pub fn new(
        conn: &Connection,
        req: &hyper::Request<crate::body::Inbound>,
        grpc: bool,
        peer: Option<Arc<Workload>>,
    ) -> Start {
        let line =
            (req.method().as_str().len() + req.uri().path_and_query().map_or(1, |p| p.as_str().len()) + 12) as u64;
        let log = (!conn.spec.access_logs.is_empty()).then(|| {
            Box::new(Entry {
                start: Some(SystemTime::now()),
                request: conn.spec.access_logs.capture(req),
                protocol: crate::http::protocol_name(req.version()),
                local: Some(conn.destination),
                remote: Some(conn.peer),
                sni: conn.sni.clone(),
                ..Default::default()
            })
        });
        Start {
            started: Instant::now(),
            request_bytes: line + header_bytes(req.headers()),
            grpc,
            peer,
            authority: req.uri().authority().cloned(),
            host: req.headers().get(hyper::header::HOST).cloned(),
            log,
            captured: conn
                .spec
                .metric_overrides
                .as_ref()
                .filter(|_| conn.spec.metrics)
                .map(|o| Box::new(o.capture(req))),
        }
    }

    /// Settles the labels from the response and wraps its body so that the request is
    /// counted when the body ends.
    pub fn finish(
        self,
        conn: &Connection,
        observed: Observed,
        mut response: hyper::Response<Body>,
        flags: Flags,
    ) -> hyper::Response<Body> {
        let shared = &conn.shared;
        let metrics = &shared.metrics;
        let mesh_tls = conn.peer_certificate.is_some();
        let (source, source_principal, destination, destination_principal, security) = match conn.spec.reporter {
            Reporter::Destination => {
                // A caller that sent its metadata is a mesh proxy: it gets ours back.
                if self.peer.is_some() {
                    metrics.offer(response.headers_mut());
                }
                let caller = conn.peer_certificate.as_ref().and_then(|c| c.uri.clone());
                let own = shared.identity.current().filter(|_| mesh_tls).map(|w| w.principal.clone());
                (
                    self.peer.unwrap_or_else(Workload::unknown),
                    caller.unwrap_or_else(unknown),
                    metrics.own().clone(),
                    own.unwrap_or_else(unknown),
                    if mesh_tls { "mutual_tls" } else { "none" },
                )
            }
            Reporter::Source => (
                metrics.own().clone(),
                unknown(),
                observed.peer.unwrap_or_else(Workload::unknown),
                unknown(),
                "unknown",
            ),
        };
        let service = observed.cluster.as_ref().map(|c| c.service.clone()).unwrap_or_else(|| {
            let authority = match (&self.authority, &self.host) {
                (Some(a), _) => a.as_str(),
                (None, Some(h)) => h.to_str().unwrap_or(""),
                (None, None) => "",
            };
            metrics.service_for_host(authority.rsplit_once(':').map_or(authority, |(h, _)| h))
        });
        let grpc_status = response
            .headers()
            .get(super::names::GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let labels = Labels {
            reporter: conn.spec.reporter,
            source,
            source_principal,
            destination,
            destination_principal,
            service,
            protocol: if self.grpc { "grpc" } else { "http" },
            code: response.status().as_u16(),
            grpc_status,
            flags,
            security,
        };
        let head = 17 + header_bytes(response.headers());
        let log = self.log.map(|mut entry| {
            entry.response = response.headers().clone();
            entry.code = labels.code;
            entry.flags = flags;
            entry.code_details = if observed.upstream.is_some() { "via_upstream" } else { "local_reply" };
            entry.upstream_host = observed.upstream.as_deref().map(str::to_owned);
            entry.cluster = observed.cluster.as_ref().map(|c| c.name.clone());
            entry.route = observed.route.as_deref().map(str::to_owned);
            entry
        });
        let pending = Pending {
            shared: conn.shared.clone(),
            spec: conn.spec.clone(),
            labels,
            started: self.started,
            request_bytes: self.request_bytes,
            response_bytes: head,
            body_bytes: 0,
            request_body: observed.request_body,
            log,
            span: observed.span,
            captured: self.captured,
            source: conn.peer,
            destination: conn.destination,
            route: observed.route,
            cluster: observed.cluster,
            upstream: observed.upstream,
        };
        response.map(|inner| Counted { inner, pending: Some(pending) }.boxed())
    }
}

fn unknown() -> Arc<str> {
    crate::telemetry::unknown_principal()
}

struct Pending {
    shared: Arc<Shared>,
    spec: Arc<HttpSpec>,
    labels: Labels,
    started: Instant,
    request_bytes: u64,
    response_bytes: u64,
    body_bytes: u64,
    request_body: Option<Arc<std::sync::atomic::AtomicU64>>,
    log: Option<Box<Entry>>,
    span: Option<crate::trace::Active>,
    captured: Option<Box<crate::telemetry::overrides::Captured>>,
    source: std::net::SocketAddr,
    destination: std::net::SocketAddr,
    route: Option<Arc<str>>,
    cluster: Option<Arc<ClusterSpec>>,
    upstream: Option<Arc<str>>,
}

impl Pending {
    fn record(self) {
        let duration = self.started.elapsed();
        let received = self.request_body.as_ref().map_or(0, |c| c.load(std::sync::atomic::Ordering::Relaxed));
        if let Some(span) = self.span {
            let labels = &self.labels;
            span.finish(
                &self.shared,
                crate::trace::Outcome {
                    status: labels.code,
                    grpc_status: labels.grpc_status,
                    flags: &labels.flags.text(),
                    cluster: self.cluster.as_ref().map(|c| c.name.as_str()),
                    upstream: self.upstream.as_deref(),
                    request_size: received,
                    response_size: self.body_bytes,
                },
            );
        }
        if let Some(mut entry) = self.log {
            entry.duration = duration;
            entry.bytes_sent = self.body_bytes;
            entry.bytes_received = received;
            self.spec.access_logs.write(&entry);
        }
        if !self.spec.metrics {
            return;
        }
        let request = Request {
            labels: self.labels,
            duration,
            request_bytes: self.request_bytes + received,
            response_bytes: self.response_bytes + self.body_bytes,
        };
        match (&self.spec.metric_overrides, &self.captured) {
            (Some(o), Some(captured)) => {
                let finished = crate::telemetry::overrides::Finished {
                    captured: Some(captured),
                    source: self.source,
                    destination: self.destination,
                    cluster: self.cluster.as_ref().map(|c| c.name.as_str()),
                    route: self.route.as_deref(),
                };
                self.shared.metrics.record_overridden(request, o, &finished);
            }
            _ => self.shared.metrics.record(request),
        }
    }
}

/// A response body that counts its bytes and records the request when it ends.
struct Counted {
    inner: Body,
    pending: Option<Pending>,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(p) = self.pending.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        p.body_bytes += data.len() as u64;
                    } else if let Some(trailers) = frame.trailers_ref() {
                        p.response_bytes += header_bytes(trailers);
                        if let Some(status) = trailers
                            .get(super::names::GRPC_STATUS)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                        {
                            p.labels.grpc_status = Some(status);
                        }
                    }
                }
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {}
                Poll::Pending => return polled,
            }
        }
        if (matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream())
            && let Some(p) = self.pending.take()
        {
            p.record();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // The client went away, or the body was never read: the request still counts.
        if let Some(p) = self.pending.take() {
            p.record();
        }
    }
}
