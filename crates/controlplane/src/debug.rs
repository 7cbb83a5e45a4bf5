//! Plain-HTTP debug endpoints on 15014: `/metrics`, `/ready`, `/debug/syncz` (each
//! proxy: types, versions sent and acknowledged, NACKs) and
//! `/debug/config_dump?proxyID=ID` (what that proxy is being sent, in Envoy's
//! `/config_dump` shape; `&summary` gives the digest `weft proxy-config` prints).

use std::convert::Infallible;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint;
use envoy_types::pb::envoy::config::route::v3::{route, route_action, route_match};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ads::SyncStatus;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::translate::{self, Resources};

/// Serves the debug endpoints until the listener fails.
pub async fn serve(
    listener: TcpListener,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    status: Arc<SyncStatus>,
    metrics: Arc<Metrics>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (snapshots, status, metrics) = (snapshots.clone(), status.clone(), metrics.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = handle(&req, &snapshots, &status, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

fn json_reply(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", serde_json::to_string_pretty(value).unwrap_or_default())
}

fn handle<B>(
    req: &Request<B>,
    snapshots: &watch::Receiver<Arc<Snapshot>>,
    status: &SyncStatus,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    let query = req.uri().query().unwrap_or("");
    match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", metrics.encode()),
        "/ready" => reply(StatusCode::OK, "text/plain", "ready\n".into()),
        "/debug/syncz" => json_reply(StatusCode::OK, &serde_json::to_value(status.all()).unwrap_or_default()),
        "/debug/config_dump" => {
            let id = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "proxyID")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            let Some(sync) = status.all().into_iter().find(|s| s.proxy == id) else {
                return json_reply(
                    StatusCode::NOT_FOUND,
                    &json!({"error": format!("no connected proxy {id:?}; see /debug/syncz")}),
                );
            };
            let Some(proxy) = sync.identity.as_ref() else {
                return json_reply(StatusCode::NOT_FOUND, &json!({"error": "proxy has not identified itself yet"}));
            };
            let snapshot = snapshots.borrow().clone();
            let resources = translate::resources_for(&snapshot, proxy, &sync.listener_names);
            let wants_summary = form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "summary");
            if wants_summary {
                json_reply(StatusCode::OK, &summary(snapshot.version, &resources))
            } else {
                json_reply(StatusCode::OK, &envoy_dump(&sync, &resources))
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics, /debug/syncz, /debug/config_dump?proxyID=\n".into(),
        ),
    }
}

/// What a proxy is being sent, in the shape of Envoy's own `/config_dump` (as Istio's
/// `/debug/config_dump` serves it), each resource rendered as Envoy's JSON.
fn envoy_dump(sync: &crate::ads::ProxySync, resources: &Resources) -> Value {
    use weft_envoy::message_to_json;
    let version = |t: &str| sync.types.get(t).map(|s| s.sent.clone()).unwrap_or_default();
    let (cds, lds, rds, eds) = (
        version(translate::type_url::CLUSTER),
        version(translate::type_url::LISTENER),
        version(translate::type_url::ROUTE),
        version(translate::type_url::ENDPOINT),
    );
    let node = sync.identity.as_ref().map(|p| {
        json!({
            "id": sync.proxy,
            "metadata": {"NAMESPACE": p.namespace, "LABELS": p.labels, "INTERCEPTION_MODE": p.interception_mode},
        })
    });
    json!({"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": {"node": node}},
        {
            "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "version_info": cds,
            "dynamic_active_clusters": resources.clusters.iter()
                .map(|c| json!({"version_info": cds, "cluster": message_to_json(c)})).collect::<Vec<_>>(),
        },
        {
            "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "version_info": lds,
            "dynamic_listeners": resources.listeners.iter()
                .map(|l| json!({"name": l.name, "active_state": {"version_info": lds, "listener": message_to_json(l)}}))
                .collect::<Vec<_>>(),
        },
        {
            "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "dynamic_route_configs": resources.routes.iter()
                .map(|r| json!({"version_info": rds, "route_config": message_to_json(r)})).collect::<Vec<_>>(),
        },
        {
            "@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
            "dynamic_endpoint_configs": resources.endpoints.iter()
                .map(|e| json!({"version_info": eds, "endpoint_config": message_to_json(e)})).collect::<Vec<_>>(),
        },
    ]})
}

/// `ip:port` of an Envoy address.
pub fn address_text(a: Option<&envoy_types::pb::envoy::config::core::v3::Address>) -> String {
    match a.and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => match s.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => format!("{}:{p}", s.address),
            _ => s.address.clone(),
        },
        _ => String::new(),
    }
}

/// A readable summary of what a proxy is sent: the shape `weft proxy-config` prints.
pub fn summary(version: u64, r: &Resources) -> Value {
    let clusters: Vec<Value> = r
        .clusters
        .iter()
        .map(|c| {
            let kind = match c.cluster_discovery_type {
                Some(envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(t)) => {
                    ["STATIC", "STRICT_DNS", "LOGICAL_DNS", "EDS", "ORIGINAL_DST"]
                        .get(usize::try_from(t).unwrap_or(9))
                        .copied()
                        .unwrap_or("")
                }
                _ => "",
            };
            json!({"name": c.name, "type": kind})
        })
        .collect();
    let endpoints: Vec<Value> = r
        .endpoints
        .iter()
        .map(|cla| {
            let eps: Vec<String> = cla
                .endpoints
                .iter()
                .flat_map(|l| &l.lb_endpoints)
                .filter_map(|e| match &e.host_identifier {
                    Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => Some(address_text(ep.address.as_ref())),
                    _ => None,
                })
                .collect();
            json!({"cluster": cla.cluster_name, "endpoints": eps})
        })
        .collect();
    let listeners: Vec<Value> =
        r.listeners.iter().map(|l| json!({"name": l.name, "address": address_text(l.address.as_ref())})).collect();
    let routes: Vec<Value> = r
        .routes
        .iter()
        .map(|rc| {
            let vhosts: Vec<Value> = rc
                .virtual_hosts
                .iter()
                .map(|vh| {
                    let routes: Vec<Value> = vh
                        .routes
                        .iter()
                        .map(|rt| {
                            let m = match rt.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
                                Some(route_match::PathSpecifier::Prefix(p)) => format!("prefix {p}"),
                                Some(route_match::PathSpecifier::Path(p)) => format!("exact {p}"),
                                Some(route_match::PathSpecifier::SafeRegex(r)) => format!("regex {}", r.regex),
                                _ => String::new(),
                            };
                            let target = match &rt.action {
                                Some(route::Action::Route(a)) => match &a.cluster_specifier {
                                    Some(route_action::ClusterSpecifier::Cluster(c)) => c.clone(),
                                    Some(route_action::ClusterSpecifier::WeightedClusters(w)) => w
                                        .clusters
                                        .iter()
                                        .map(|c| format!("{}={}", c.name, c.weight.as_ref().map_or(0, |w| w.value)))
                                        .collect::<Vec<_>>()
                                        .join(","),
                                    _ => String::new(),
                                },
                                Some(route::Action::Redirect(_)) => "redirect".into(),
                                Some(route::Action::DirectResponse(d)) => format!("direct response {}", d.status),
                                _ => String::new(),
                            };
                            json!({"name": rt.name, "match": m, "to": target})
                        })
                        .collect();
                    json!({"name": vh.name, "domains": vh.domains, "routes": routes})
                })
                .collect();
            json!({"name": rc.name, "virtualHosts": vhosts})
        })
        .collect();
    json!({"version": version, "clusters": clusters, "endpoints": endpoints, "listeners": listeners, "routes": routes})
}
