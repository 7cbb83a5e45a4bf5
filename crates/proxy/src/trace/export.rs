//! Sends finished spans to an OpenTelemetry collector over OTLP/gRPC, through a cluster
//! of the proxy's own configuration, as Envoy's OpenTelemetry tracer does: spans wait in
//! a bounded buffer and go in a batch when enough have gathered or the flush interval
//! passes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::Uri;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use super::string_attribute;
use crate::Shared;
use crate::body::{Body, BoxError};

/// How often buffered spans are sent (Envoy's `tracing.opentelemetry.flush_interval_ms`).
const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// A batch this large is sent at once. Envoy sends every 5 spans; weft waits for 64,
/// which costs a busy proxy a tenth of the export calls (and CPU) while keeping each
/// batch small enough not to stall the requests it shares a thread with.
const MIN_FLUSH_SPANS: usize = 64;

/// Where spans of one tracer configuration go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The cluster of the collector.
    pub cluster: String,
    /// `:authority` of the export requests.
    pub authority: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Spans kept while the collector is slow or away; more are dropped.
    pub max_cache: usize,
}

/// The proxy's span buffer and its sender.
#[derive(Debug, Default)]
pub struct Exporter {
    buffers: Mutex<HashMap<Arc<Target>, Vec<Span>>>,
    wake: Arc<tokio::sync::Notify>,
    running: std::sync::atomic::AtomicBool,
    /// Spans sent to a collector.
    pub sent: AtomicU64,
    /// Spans dropped: the buffer was full, or the collector refused or could not be reached.
    pub dropped: AtomicU64,
}

impl Exporter {
    /// Buffers a finished span; the first one starts the sender.
    pub fn push(&self, shared: &Arc<Shared>, target: &Arc<Target>, span: Span) {
        if !self.running.swap(true, Ordering::Relaxed) {
            tokio::spawn(run(Arc::downgrade(shared)));
        }
        let Ok(mut buffers) = self.buffers.lock() else { return };
        let buffer = buffers.entry(target.clone()).or_default();
        if buffer.len() >= target.max_cache.max(1) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buffer.push(span);
        // A buffer smaller than a batch is sent when full.
        if buffer.len() >= MIN_FLUSH_SPANS.min(target.max_cache.max(1)) {
            self.wake.notify_one();
        }
    }

    fn take(&self, all: bool) -> Vec<(Arc<Target>, Vec<Span>)> {
        let Ok(mut buffers) = self.buffers.lock() else { return Vec::new() };
        let ready: Vec<Arc<Target>> = buffers
            .iter()
            .filter(|(t, b)| !b.is_empty() && (all || b.len() >= MIN_FLUSH_SPANS.min(t.max_cache.max(1))))
            .map(|(t, _)| t.clone())
            .collect();
        ready.into_iter().filter_map(|t| buffers.remove_entry(&t)).collect()
    }
}

/// Sends batches until the proxy goes away.
async fn run(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let all = {
            let Some(wake) = shared.upgrade().map(|s| s.spans.wake.clone()) else { return };
            tokio::select! {
                _ = tick.tick() => true,
                () = wake.notified() => false,
            }
        };
        let Some(s) = shared.upgrade() else { return };
        for (target, spans) in s.spans.take(all) {
            let count = spans.len() as u64;
            match send(&s, &target, spans).await {
                Ok(()) => s.spans.sent.fetch_add(count, Ordering::Relaxed),
                Err(e) => {
                    tracing::debug!(cluster = %target.cluster, "span export failed: {e}");
                    s.spans.dropped.fetch_add(count, Ordering::Relaxed)
                }
            };
        }
    }
}

async fn send(shared: &Arc<Shared>, target: &Target, spans: Vec<Span>) -> Result<(), BoxError> {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    string_attribute("service.name", &target.service_name),
                    string_attribute("telemetry.sdk.language", "rust"),
                    string_attribute("telemetry.sdk.name", "weft"),
                    string_attribute("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "weft".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    let channel =
        ClusterChannel { shared: shared.clone(), cluster: target.cluster.clone(), authority: target.authority.clone() };
    let mut client = TraceServiceClient::new(channel);
    let call = client.export(request);
    tokio::time::timeout(FLUSH_INTERVAL, call).await.map_err(|_| "the collector did not answer in time")??;
    Ok(())
}

/// A gRPC channel to one of the proxy's clusters: each call goes to a host the cluster's
/// balancer picks, over that host's connection pool (so with the cluster's TLS).
#[derive(Clone)]
struct ClusterChannel {
    shared: Arc<Shared>,
    cluster: String,
    authority: String,
}

type Call = Pin<Box<dyn Future<Output = Result<hyper::Response<hyper::body::Incoming>, BoxError>> + Send>>;

impl tower_service::Service<hyper::Request<tonic::body::Body>> for ClusterChannel {
    type Response = hyper::Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = Call;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::Request<tonic::body::Body>) -> Call {
        let data = self.shared.data.load_full();
        let cluster = self.cluster.clone();
        let authority = self.authority.clone();
        Box::pin(async move {
            let upstream = data.clusters.get(&cluster).ok_or_else(|| format!("no cluster {cluster}"))?;
            if !upstream.spec.http2 {
                return Err(format!("cluster {cluster} does not speak HTTP/2, which OTLP/gRPC needs").into());
            }
            let set = upstream.hosts_full();
            let host = upstream
                .pick(&set, None, &[])
                .and_then(|i| set.hosts.get(i).cloned())
                .ok_or_else(|| format!("cluster {cluster} has no healthy host"))?;
            let (mut parts, body) = req.into_parts();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = Uri::builder().scheme("http").authority(authority.as_str()).path_and_query(path).build()?;
            parts.version = hyper::Version::HTTP_2;
            // Export requests are small and whole: the body is read before it goes.
            let body: Body = crate::body::full(body.collect().await?.to_bytes());
            Ok(host.send(hyper::Request::from_parts(parts, body)).await?)
        })
    }
}
