//! The xDS client against a scripted ADS server over real sockets: it ACKs what it
//! applies, NACKs what it cannot with the reason and keeps serving the last good
//! configuration, keeps serving while the control plane is away, and on reconnecting
//! tells the server which resources it already has.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
use envoy_types::util::pack_any;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use weft_proxy::state::types;
use weft_proxy::{NodeInfo, ProxyConfig, XdsProtocol};

type Responses = mpsc::Sender<Result<DeltaDiscoveryResponse, tonic::Status>>;

/// One ADS stream as the test sees it: what the proxy sent, and a way to answer.
struct StreamHandle {
    requests: mpsc::UnboundedReceiver<DeltaDiscoveryRequest>,
    responses: Responses,
}

/// An ADS server that hands every new delta stream to the test.
struct Scripted {
    streams: mpsc::UnboundedSender<StreamHandle>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Scripted {
    type StreamAggregatedResourcesStream =
        Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, tonic::Status>> + Send + 'static>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, tonic::Status>>;

    async fn stream_aggregated_resources(
        &self,
        _: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("this server speaks delta only"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        let mut incoming = request.into_inner();
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(r)) = incoming.message().await {
                if req_tx.send(r).is_err() {
                    break;
                }
            }
        });
        let (resp_tx, resp_rx) = mpsc::channel(16);
        let _ = self.streams.send(StreamHandle { requests: req_rx, responses: resp_tx });
        Ok(tonic::Response::new(ReceiverStream::new(resp_rx)))
    }
}

fn free_port(ip: &str) -> SocketAddr {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("{e}"));
    l.local_addr().unwrap_or_else(|e| panic!("{e}"))
}

fn socket(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(addr.port()))),
            ..Default::default()
        })),
    }
}

fn cluster(backend: SocketAddr) -> Cluster {
    Cluster {
        name: "backend".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: "backend".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(
                        envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                            address: Some(socket(backend)),
                            ..Default::default()
                        }),
                    ),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A listener whose only route sends `path_match` to the backend cluster.
fn listener(at: SocketAddr, path_match: route_match::PathSpecifier) -> Listener {
    listener_with_idle(at, path_match, None)
}

fn listener_with_idle(at: SocketAddr, path_match: route_match::PathSpecifier, idle: Option<Duration>) -> Listener {
    let routes = RouteConfiguration {
        name: "inline".into(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch { path_specifier: Some(path_match), ..Default::default() }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster("backend".into())),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        common_http_protocol_options: idle.map(|d| envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions {
            idle_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
            }),
            ..Default::default()
        }),
        stat_prefix: "test".into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(routes)),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: "test-listener".into(),
        address: Some(socket(at)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn response(
    type_url: &str,
    nonce: &str,
    name: &str,
    resource: envoy_types::pb::google::protobuf::Any,
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: nonce.into(),
        system_version_info: nonce.into(),
        resources: vec![Resource {
            name: name.into(),
            version: nonce.into(),
            resource: Some(resource),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// How long the backend takes to answer `/slow`.
const SLOW: Duration = Duration::from_millis(2500);

/// CPU seconds this process has used (user and system), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// A tiny backend answering every request with `backend says hello`; `/slow` and
/// `/slow-body` take [`SLOW`] to do it.
async fn backend(at: SocketAddr) {
    let listener = tokio::net::TcpListener::bind(at).await.unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    use http_body_util::BodyExt;
                    const HELLO: &[u8] = b"backend says hello";
                    // `/slow` answers after a while, `/slow-body` sends its head at once and
                    // its body after a while: requests that outlast an idle timeout.
                    let body = match req.uri().path() {
                        "/slow" => {
                            tokio::time::sleep(SLOW).await;
                            http_body_util::Full::new(bytes::Bytes::from_static(HELLO)).boxed()
                        }
                        "/slow-body" => {
                            let (tx, rx) = mpsc::channel::<Result<hyper::body::Frame<bytes::Bytes>, Infallible>>(1);
                            tokio::spawn(async move {
                                tokio::time::sleep(SLOW).await;
                                let _ = tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(HELLO)))).await;
                            });
                            http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed()
                        }
                        // `/echo` answers with the request's body.
                        "/echo" => {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            http_body_util::Full::new(body).boxed()
                        }
                        _ => http_body_util::Full::new(bytes::Bytes::from_static(HELLO)).boxed(),
                    };
                    Ok::<_, Infallible>(hyper::Response::new(body))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// A raw GET; the status and body, or 0 when the connection failed.
async fn get(at: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut stream) = tokio::net::TcpStream::connect(at).await else { return (0, String::new()) };
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut out)).await;
    let status = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

async fn next_request(handle: &mut StreamHandle) -> DeltaDiscoveryRequest {
    tokio::time::timeout(Duration::from_secs(20), handle.requests.recv())
        .await
        .unwrap_or_else(|_| panic!("the proxy sent nothing for 20 s"))
        .unwrap_or_else(|| panic!("the proxy closed the stream"))
}

/// Waits for the ACK or NACK of `nonce`, skipping subscription requests.
async fn reply_to(handle: &mut StreamHandle, nonce: &str) -> DeltaDiscoveryRequest {
    loop {
        let r = next_request(handle).await;
        if r.response_nonce == nonce {
            return r;
        }
    }
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn config(ads_at: SocketAddr, admin_at: SocketAddr) -> ProxyConfig {
    ProxyConfig {
        xds_address: ads_at.to_string(),
        protocol: XdsProtocol::Delta,
        node: NodeInfo {
            id: "sidecar~127.201.0.1~test.default~default.svc.cluster.local".into(),
            namespace: "default".into(),
            interception_mode: "NONE".into(),
            ..Default::default()
        },
        admin_address: admin_at,
        readiness_address: None,
        stats_address: None,
        drain_grace: Duration::from_secs(1),
        concurrency: 1,
        set_log_level: Arc::new(|_| Ok(())),
        identity: None,
        xds_mtls: false,
    }
}

/// A proxy on `ip` fed by a scripted control plane: a cluster of one backend, and the
/// listener `make` builds on its address. The listener's address once it serves, and the
/// control plane's stream (the proxy keeps it open).
async fn serving(ip: &str, make: impl FnOnce(SocketAddr) -> Listener) -> (SocketAddr, StreamHandle) {
    let (ads_at, backend_at, listener_at, admin_at) = (free_port(ip), free_port(ip), free_port(ip), free_port(ip));
    backend(backend_at).await;
    let (streams_tx, mut streams) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(Scripted { streams: streams_tx }))
            .serve(ads_at),
    );
    tokio::spawn(weft_proxy::run(config(ads_at, admin_at), std::future::pending()));
    let mut s = tokio::time::timeout(Duration::from_secs(20), streams.recv())
        .await
        .unwrap_or_else(|_| panic!("the proxy never connected"))
        .unwrap_or_else(|| panic!("server gone"));
    let _ = s.responses.send(Ok(response(types::CLUSTER, "1", "backend", pack_any(cluster(backend_at))))).await;
    let _ = s.responses.send(Ok(response(types::LISTENER, "2", "test-listener", pack_any(make(listener_at))))).await;
    assert!(reply_to(&mut s, "2").await.error_detail.is_none());
    eventually("traffic through the listener", async || get(listener_at, "/x").await.0 == 200).await;
    (listener_at, s)
}

/// A client connection that speaks HTTP/1.1 as raw bytes.
struct Raw {
    stream: tokio::net::TcpStream,
    /// What arrived beyond the last response read.
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(at: SocketAddr) -> Raw {
        let stream = tokio::net::TcpStream::connect(at).await.unwrap_or_else(|e| panic!("{e}"));
        Raw { stream, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// The next response: its head and its body, framed by `Content-Length` (none for a
    /// HEAD or an interim response).
    async fn response(&mut self, head_request: bool) -> (String, String) {
        let (stream, buf) = (&mut self.stream, &mut self.buf);
        let read = async {
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    let length = if head_request || head.starts_with("HTTP/1.1 100") { 0 } else { length };
                    if buf.len() >= end + 4 + length {
                        let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
                        buf.drain(..end + 4 + length);
                        return (head, body);
                    }
                }
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return (String::from_utf8_lossy(buf).into_owned(), "<closed>".to_owned()),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read).await.unwrap_or_else(|_| panic!("no response in 10 s"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_connections_pipeline_keep_alive_and_hand_over_what_weft_does_not_serve_itself() {
    let (listener_at, _control_plane) =
        serving("127.201.0.4", |at| listener(at, route_match::PathSpecifier::Prefix("/".into()))).await;

    let mut client = Raw::connect(listener_at).await;
    // Two requests in one write come back in order; the HEAD's response has no body.
    client.send(b"GET /a HTTP/1.1\r\nHost: test\r\n\r\nHEAD /b HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let (head, body) = client.response(false).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("date: "), "{head}");
    assert_eq!(body, "backend says hello");
    let (head, body) = client.response(true).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("content-length: 18\r\n"), "{head}");
    assert_eq!(body, "");
    // A body sent apart from its head is waited for.
    client.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 12\r\n\r\nhello").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.send(b", world").await;
    let (head, body) = client.response(false).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, "hello, world");
    // A chunked upload on the same connection: hyper's server takes the connection over
    // at this request, and serves it from there on.
    client
        .send(b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nworld\r\n0\r\n\r\n")
        .await;
    let (head, body) = client.response(false).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(body, "world");
    client.send(b"GET /after HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert_eq!(client.response(false).await.1, "backend says hello");

    // `Expect: 100-continue`: the interim response, then the answer.
    let mut client = Raw::connect(listener_at).await;
    client.send(b"PUT /echo HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n").await;
    let (head, _) = client.response(false).await;
    assert!(head.starts_with("HTTP/1.1 100 Continue\r\n"), "{head}");
    client.send(b"abc").await;
    assert_eq!(client.response(false).await.1, "abc");

    // `Connection: close` is answered in kind, and the connection closes.
    let mut client = Raw::connect(listener_at).await;
    client.send(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").await;
    let (head, _) = client.response(false).await;
    assert!(head.contains("connection: close\r\n"), "{head}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), client.stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok_and(|r| r.is_ok()) && rest.is_empty(), "{rest:?}");

    // A malformed length is refused, and the connection closed.
    let mut client = Raw::connect(listener_at).await;
    client.send(b"POST / HTTP/1.1\r\nHost: test\r\nContent-Length: 1x\r\n\r\n").await;
    let (head, _) = client.response(false).await;
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n") && head.contains("connection: close"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let (listener_at, _control_plane) = serving("127.201.0.2", |at| {
        listener_with_idle(at, route_match::PathSpecifier::Prefix("/".into()), Some(Duration::from_secs(1)))
    })
    .await;

    // One request on a kept-alive connection, then silence: the proxy closes it.
    let mut stream = tokio::net::TcpStream::connect(listener_at).await.unwrap_or_else(|e| panic!("{e}"));
    stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap_or_else(|e| panic!("{e}"));
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap_or(0);
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection was still open after 10 s");

    // A request that outlasts the idle timeout is answered, and the connection waits for
    // it without spinning on its passed deadline (which would burn a core until the end).
    let mut stream = tokio::net::TcpStream::connect(listener_at).await.unwrap_or_else(|e| panic!("{e}"));
    let before = cpu_seconds();
    stream.write_all(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap_or_else(|e| panic!("{e}"));
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap_or(Ok(0)).unwrap_or(0);
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    let used = cpu_seconds() - before;
    assert!(
        used < SLOW.as_secs_f64() / 2.0,
        "{used:.2} CPU seconds while one request waited {SLOW:?}: the connection spun past its idle deadline"
    );

    // A response whose body outlasts the idle timeout is sent whole: the request counts on
    // its connection until its body is done, not only until its head goes out.
    let mut stream = tokio::net::TcpStream::connect(listener_at).await.unwrap_or_else(|e| panic!("{e}"));
    stream.write_all(b"GET /slow-body HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap_or_else(|e| panic!("{e}"));
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while !String::from_utf8_lossy(&response).contains("backend says hello") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 200") && response.contains("backend says hello"),
        "the connection closed while the body was on its way: {response:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_nacks_keeps_the_last_good_config_and_survives_the_control_plane() {
    let ip = "127.201.0.1";
    let (ads_at, backend_at, listener_at, admin_at) = (free_port(ip), free_port(ip), free_port(ip), free_port(ip));
    backend(backend_at).await;

    let (streams_tx, mut streams) = mpsc::unbounded_channel();
    let server = Arc::new(Mutex::new(Some(tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(Scripted { streams: streams_tx.clone() }))
            .serve(ads_at),
    ))));
    tokio::spawn(weft_proxy::run(config(ads_at, admin_at), std::future::pending()));

    // The first stream: the node, then wildcard clusters and listeners.
    let mut s = tokio::time::timeout(Duration::from_secs(20), streams.recv())
        .await
        .unwrap_or_else(|_| panic!("the proxy never connected"))
        .unwrap_or_else(|| panic!("server gone"));
    let first = next_request(&mut s).await;
    let node = first.node.clone().unwrap_or_default();
    assert_eq!(node.id, "sidecar~127.201.0.1~test.default~default.svc.cluster.local");
    assert!(node.metadata.as_ref().is_some_and(|m| m.fields.contains_key("NAMESPACE")));
    let second = next_request(&mut s).await;
    let mut asked: Vec<String> = vec![first.type_url, second.type_url];
    asked.sort();
    assert_eq!(asked, [types::CLUSTER, types::LISTENER]);

    // Apply, ACK, serve.
    let _ = s.responses.send(Ok(response(types::CLUSTER, "1", "backend", pack_any(cluster(backend_at))))).await;
    let ack = reply_to(&mut s, "1").await;
    assert!(ack.error_detail.is_none(), "{ack:?}");
    let good = listener(listener_at, route_match::PathSpecifier::Prefix("/".into()));
    let _ = s.responses.send(Ok(response(types::LISTENER, "2", "test-listener", pack_any(good)))).await;
    assert!(reply_to(&mut s, "2").await.error_detail.is_none());
    eventually("traffic through the listener", async || get(listener_at, "/x").await.0 == 200).await;
    assert_eq!(get(listener_at, "/x").await.1, "backend says hello");
    eventually("readiness", async || get(admin_at, "/ready").await.0 == 200).await;

    // A listener weft cannot apply is NACKed with the reason; the old one keeps serving.
    let bad = listener(
        listener_at,
        route_match::PathSpecifier::SafeRegex(RegexMatcher { regex: "(unclosed".into(), ..Default::default() }),
    );
    let _ = s.responses.send(Ok(response(types::LISTENER, "3", "test-listener", pack_any(bad)))).await;
    let nack = reply_to(&mut s, "3").await;
    let detail = nack.error_detail.unwrap_or_else(|| panic!("the bad listener was ACKed"));
    assert!(detail.message.contains("invalid regex") && detail.message.contains("test-listener"), "{detail:?}");
    assert_eq!(get(listener_at, "/still").await.0, 200);
    let stats = get(admin_at, "/stats").await.1;
    assert!(stats.contains("weft.xds.update_rejected: 1"), "{stats}");

    // The control plane goes away: traffic goes on from the last good configuration.
    if let Some(task) = server.lock().await.take() {
        task.abort();
    }
    drop(s);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(listener_at, "/while-away").await.0, 200);

    // It comes back: the proxy reconnects and says what it already has.
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(Scripted { streams: streams_tx }))
            .serve(ads_at),
    );
    let mut s = tokio::time::timeout(Duration::from_secs(30), streams.recv())
        .await
        .unwrap_or_else(|_| panic!("the proxy did not reconnect"))
        .unwrap_or_else(|| panic!("server gone"));
    let mut known = Vec::new();
    for _ in 0..2 {
        let r = next_request(&mut s).await;
        known.extend(r.initial_resource_versions.into_iter().map(|(name, version)| format!("{}={version}", name)));
    }
    known.sort();
    assert_eq!(known, ["backend=1", "test-listener=2"]);
    let dump = get(admin_at, "/config_dump").await.1;
    assert!(dump.contains("\"name\": \"backend\"") && dump.contains("dynamic_active_clusters"), "{dump}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_bind_is_nacked_and_named_by_ready() {
    let ip = "127.201.0.3";
    let (ads_at, backend_at, admin_at) = (free_port(ip), free_port(ip), free_port(ip));
    // Something else holds the listener's address.
    let taken = std::net::TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("{e}"));
    let taken_at = taken.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (streams_tx, mut streams) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(Scripted { streams: streams_tx }))
            .serve(ads_at),
    );
    tokio::spawn(weft_proxy::run(config(ads_at, admin_at), std::future::pending()));
    let mut s = tokio::time::timeout(Duration::from_secs(20), streams.recv())
        .await
        .unwrap_or_else(|_| panic!("the proxy never connected"))
        .unwrap_or_else(|| panic!("server gone"));
    let _ = s.responses.send(Ok(response(types::CLUSTER, "1", "backend", pack_any(cluster(backend_at))))).await;
    assert!(reply_to(&mut s, "1").await.error_detail.is_none());
    let blocked = listener(taken_at, route_match::PathSpecifier::Prefix("/".into()));
    let _ = s.responses.send(Ok(response(types::LISTENER, "2", "test-listener", pack_any(blocked)))).await;
    let nack = reply_to(&mut s, "2").await;
    let detail = nack.error_detail.unwrap_or_else(|| panic!("a listener that cannot bind was ACKed"));
    assert!(detail.message.contains("cannot bind listener test-listener"), "{detail:?}");
    let (status, body) = get(admin_at, "/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("cannot bind listener test-listener"), "{body}");
    drop(taken);
}
