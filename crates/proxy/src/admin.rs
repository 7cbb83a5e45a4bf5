//! The admin endpoint (15000) in Envoy's shapes — `/ready`, `/config_dump`, `/clusters`,
//! `/listeners`, `/stats`, `/logging`, `/quitquitquit` — and the readiness endpoint
//! (15021, `/healthz/ready`) that orchestrators probe.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::Shared;
use crate::body::{Body, full};
use crate::dump;
use crate::telemetry::Stat;

/// Serves the admin endpoint on `listener`.
pub async fn serve_admin(shared: Arc<Shared>, listener: TcpListener) {
    serve(listener, move |req| admin(shared.clone(), req)).await;
}

/// Serves the readiness endpoint (`/healthz/ready`) and the Prometheus endpoint
/// (`/stats/prometheus`) on `listener`.
pub async fn serve_readiness(shared: Arc<Shared>, listener: TcpListener) {
    serve(listener, move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move {
            match req.uri().path() {
                "/healthz/ready" if shared.is_ready() => text(StatusCode::OK, String::new()),
                "/healthz/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
                "/stats/prometheus" => prometheus(&shared),
                _ => text(StatusCode::NOT_FOUND, String::new()),
            }
        }
    })
    .await;
}

async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=UTF-8"));
    r
}

fn json(value: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_string_pretty(value).unwrap_or_default()));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    crate::model::route::form_pairs(req.uri().query().unwrap_or(""))
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

async fn admin(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (_, "/ready") => {
            if shared.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n".into())
            } else if shared.is_ready() {
                text(StatusCode::OK, "LIVE\n".into())
            } else {
                // Say what holds readiness back when it is a listener that cannot bind.
                let errors = shared.bind_errors.lock().map(|e| e.join("\n")).unwrap_or_default();
                let body = if errors.is_empty() { "PRE_INITIALIZING\n".to_owned() } else { format!("PRE_INITIALIZING\n{errors}\n") };
                text(StatusCode::SERVICE_UNAVAILABLE, body)
            }
        }
        (_, "/stats/prometheus") => prometheus(&shared),
        (_, "/config_dump") => json(&dump::config_dump(&shared, query_param(&req, "resource").as_deref())),
        (_, "/clusters") => text(StatusCode::OK, clusters(&shared)),
        (_, "/listeners") => text(StatusCode::OK, listeners(&shared)),
        (_, "/stats") if query_param(&req, "format").as_deref() == Some("json") => {
            let stats: Vec<serde_json::Value> =
                stats(&shared).into_iter().map(|(n, v)| serde_json::json!({"name": n, "value": v})).collect();
            json(&serde_json::json!({ "stats": stats }))
        }
        (_, "/stats") => {
            let filter = query_param(&req, "filter");
            let regex = filter.as_deref().and_then(|f| regex::Regex::new(f).ok());
            let mut out = String::new();
            for (name, value) in stats(&shared) {
                if regex.as_ref().is_none_or(|r| r.is_match(&name)) {
                    let _ = writeln!(out, "{name}: {value}");
                }
            }
            text(StatusCode::OK, out)
        }
        (&Method::POST, "/logging") => match query_param(&req, "level") {
            Some(level) => match (shared.config.set_log_level)(&level) {
                Ok(()) => text(StatusCode::OK, format!("active loggers:\n  weft: {level}\n")),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            },
            None => text(StatusCode::BAD_REQUEST, "usage: POST /logging?level=<trace|debug|info|warn|error>\n".into()),
        },
        (_, "/logging") => text(StatusCode::OK, "usage: POST /logging?level=<trace|debug|info|warn|error>\n".into()),
        (&Method::POST, "/control_plane") => move_to(&shared, &req),
        (_, "/control_plane") => json(&control_plane(&shared)),
        (&Method::POST, "/quitquitquit") => {
            shared.quit.notify_one();
            text(StatusCode::OK, "OK\n".into())
        }
        (_, "/certs") => json(&certs(&shared)),
        (_, "/server_info") => json(&serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "state": if shared.is_ready() { "LIVE" } else { "PRE_INITIALIZING" },
            "uptime_current_epoch": format!("{}s", shared.started.elapsed().as_secs()),
            "node": { "id": shared.config.node.id, "cluster": shared.config.node.cluster },
            "command_line_options": { "concurrency": shared.config.concurrency },
            "tls_provider": {
                "name": weft_tls::PROVIDER_NAME,
                "fips": weft_tls::provider().fips(),
            },
        })),
        (_, "/") => text(
            StatusCode::OK,
            "admin commands are:\n  /clusters\n  /config_dump\n  /listeners\n  /logging\n  /quitquitquit\n  /ready\n  /server_info\n  /stats\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "invalid path. admin commands are listed at /\n".into()),
    }
}

/// Envoy's `/certs` shape: the workload certificate and the root it chains to.
fn certs(shared: &Shared) -> serde_json::Value {
    let Some(tls) = shared.identity.current() else { return serde_json::json!({ "certificates": [] }) };
    let cert = &tls.certificate;
    let info = |pem: &str| {
        let i = weft_tls::ca::certificate_info(pem);
        serde_json::json!({
            "serial_number": i.as_ref().map(|i| i.serial.clone()),
            "subject_alt_names": i.as_ref().map(|i| i.spiffe_ids.iter().map(|u| serde_json::json!({"uri": u})).collect::<Vec<_>>()),
            "valid_from": i.as_ref().map(|i| i.not_before),
            "expiration_time": i.as_ref().map(|i| i.not_after),
        })
    };
    let root = cert.chain.last().map(|r| info(r));
    serde_json::json!({ "certificates": [{
        "cert_chain": cert.chain.first().map(|l| vec![info(l)]).unwrap_or_default(),
        "ca_cert": root.into_iter().collect::<Vec<_>>(),
    }]})
}

/// Envoy's `/clusters` text: one `cluster::host::stat::value` line per fact.
fn clusters(shared: &Shared) -> String {
    let data = shared.data.load();
    let now = Instant::now();
    let mut names: Vec<&String> = data.clusters.keys().collect();
    names.sort();
    let mut out = String::new();
    for name in names {
        let Some(u) = data.clusters.get(name) else { continue };
        let l = &u.spec.limits;
        let _ = writeln!(out, "{name}::default_priority::max_connections::{}", l.max_connections);
        let _ = writeln!(out, "{name}::default_priority::max_pending_requests::{}", l.max_pending_requests);
        let _ = writeln!(out, "{name}::default_priority::max_requests::{}", l.max_requests);
        let _ = writeln!(out, "{name}::default_priority::max_retries::{}", l.max_retries);
        let mut hosts: Vec<Arc<crate::upstream::Host>> = u.hosts().hosts.clone();
        hosts.extend(u.original_hosts());
        for h in &hosts {
            let a = &h.address;
            let health = match (h.endpoint.healthy, h.is_ejected(now)) {
                (true, false) => "healthy",
                (false, _) => "/failed_eds_health",
                (true, true) => "/failed_outlier_check",
            };
            let _ = writeln!(out, "{name}::{a}::cx_active::{}", h.open_connections.load(Ordering::Relaxed));
            let _ = writeln!(out, "{name}::{a}::cx_total::{}", h.total_connections.load(Ordering::Relaxed));
            let _ = writeln!(out, "{name}::{a}::rq_active::{}", h.active.load(Ordering::Relaxed));
            let _ = writeln!(out, "{name}::{a}::rq_error::{}", h.errors.load(Ordering::Relaxed));
            let _ = writeln!(out, "{name}::{a}::rq_total::{}", h.requests.load(Ordering::Relaxed));
            let _ = writeln!(out, "{name}::{a}::health_flags::{health}");
            let _ = writeln!(out, "{name}::{a}::weight::{}", h.endpoint.weight);
        }
    }
    out
}

/// Envoy's `/listeners` text: `name::address`.
fn listeners(shared: &Shared) -> String {
    let running = shared.listeners.lock().map(|l| l.addresses()).unwrap_or_default();
    running.into_iter().map(|(n, a)| format!("{n}::{a}\n")).collect()
}

/// Istio's standard metrics and the proxy's own, in the Prometheus text format.
fn prometheus(shared: &Shared) -> Response<Body> {
    let mut own: Vec<Stat> =
        shared.stats.lines().into_iter().map(|(name, value)| Stat::from_envoy(&name, value)).collect();
    let data = shared.data.load();
    for (name, u) in data.clusters.iter() {
        own.extend(cluster_stats(u).into_iter().map(|(leaf, value)| Stat::cluster(name, leaf, value)));
    }
    own.push(Stat::from_envoy("cluster_manager.active_clusters", data.clusters.len() as u64));
    own.push(Stat::from_envoy("listener_manager.total_listeners_active", data.listeners.len() as u64));
    own.extend(tracing_stats(shared).into_iter().map(|(name, value)| Stat::from_envoy(name, value)));
    // Which revision's control plane serves this proxy, to group its traffic by.
    let plane = shared.control_plane.load();
    let requested = if plane.revision.is_empty() { "default".to_owned() } else { plane.revision.clone() };
    let served = shared.served_revision.lock().map(|s| s.clone()).unwrap_or_default();
    own.push(Stat {
        name: "weft_control_plane_info".into(),
        labels: vec![
            ("revision", if served.is_empty() { "unknown".to_owned() } else { served }),
            ("requested_revision", requested),
            ("xds_address", plane.xds_address.clone()),
        ],
        value: 1,
    });
    let mut response = text(StatusCode::OK, shared.metrics.prometheus(own));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// The control plane the proxy follows.
fn control_plane(shared: &Shared) -> serde_json::Value {
    let plane = shared.control_plane.load();
    serde_json::json!({
        "xds_address": plane.xds_address,
        "ca_address": plane.ca_address,
        "revision": plane.revision,
        "served_revision": shared.served_revision.lock().map(|s| s.clone()).unwrap_or_default(),
        "connected": shared.stats.xds.connected.load(Ordering::Relaxed) == 1,
    })
}

/// `POST /control_plane?xds_address=H:P[&ca_address=H:P][&revision=R]`: follow another
/// control plane from now on, keeping listeners and connections (a canary upgrade's
/// move). Unnamed parts stay as they are.
fn move_to(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let usage = "usage: POST /control_plane?xds_address=<host:port>[&ca_address=<host:port>][&revision=<name>]\n";
    let Some(xds_address) = query_param(req, "xds_address").filter(|a| !a.is_empty()) else {
        return text(StatusCode::BAD_REQUEST, usage.into());
    };
    let valid =
        |a: &str| a.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    let ca_address = query_param(req, "ca_address");
    if !valid(&xds_address) || ca_address.as_deref().is_some_and(|a| !valid(a)) {
        return text(StatusCode::BAD_REQUEST, format!("an address is not host:port\n{usage}"));
    }
    let current = shared.control_plane.load_full();
    let next = crate::ControlPlane {
        xds_address,
        ca_address: ca_address.or_else(|| current.ca_address.clone()),
        revision: query_param(req, "revision").unwrap_or_else(|| current.revision.clone()),
    };
    tracing::info!(from = %current.xds_address, to = %next.xds_address, revision = %next.revision, "moving to another control plane");
    shared.control_plane.store(Arc::new(next));
    shared.moved.notify_one();
    json(&control_plane(shared))
}

/// Spans exported and dropped, as Envoy's OpenTelemetry tracer counts them.
fn tracing_stats(shared: &Shared) -> [(&'static str, u64); 2] {
    [
        ("tracing.opentelemetry.spans_sent", shared.spans.sent.load(Ordering::Relaxed)),
        ("tracing.opentelemetry.spans_dropped", shared.spans.dropped.load(Ordering::Relaxed)),
    ]
}

fn cluster_stats(u: &crate::upstream::Upstream) -> [(&'static str, u64); 14] {
    let s = &u.stats;
    let v = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    [
        ("upstream_rq_total", v(&s.rq_total)),
        ("upstream_rq_active", v(&s.rq_active)),
        ("upstream_rq_pending_active", v(&s.rq_pending_active)),
        ("upstream_rq_pending_overflow", v(&s.rq_pending_overflow)),
        ("upstream_rq_retry", v(&s.rq_retry)),
        ("upstream_rq_retry_overflow", v(&s.rq_retry_overflow)),
        ("upstream_rq_timeout", v(&s.rq_timeout)),
        ("upstream_cx_connect_fail", v(&s.cx_connect_fail)),
        ("upstream_cx_none_healthy", v(&s.none_healthy)),
        ("upstream_rq_2xx", v(&s.rq_by_class[2])),
        ("upstream_rq_3xx", v(&s.rq_by_class[3])),
        ("upstream_rq_4xx", v(&s.rq_by_class[4])),
        ("upstream_rq_5xx", v(&s.rq_by_class[5])),
        ("outlier_detection.ejections_enforced_total", v(&s.ejections)),
    ]
}

fn stats(shared: &Shared) -> Vec<(String, u64)> {
    let mut out = shared.stats.lines();
    let data = shared.data.load();
    for (name, u) in data.clusters.iter() {
        for (stat, value) in cluster_stats(u) {
            out.push((format!("cluster.{name}.{stat}"), value));
        }
    }
    out.push(("cluster_manager.active_clusters".into(), data.clusters.len() as u64));
    out.push(("listener_manager.total_listeners_active".into(), data.listeners.len() as u64));
    out.extend(tracing_stats(shared).into_iter().map(|(name, value)| (name.to_owned(), value)));
    out.sort();
    out
}

/// Binds an admin or readiness address.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}
