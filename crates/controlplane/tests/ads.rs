//! The ADS protocol from a client's side, over a real gRPC stream: ACKs, a NACK that is
//! recorded with its reason and not retried, a stale nonce ignored, a bad node refused;
//! in the delta protocol, only what changed among what the proxy subscribes to.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use weft_controlplane::ads::{Ads, SyncStatus};
use weft_controlplane::metrics::Metrics;
use weft_controlplane::snapshot::Snapshot;
use weft_controlplane::translate::type_url;

const MESH: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
";

struct Server {
    addr: String,
    status: Arc<SyncStatus>,
    metrics: Arc<Metrics>,
    snapshots: watch::Sender<Arc<Snapshot>>,
}

async fn serve() -> Server {
    serve_yaml(MESH).await
}

async fn serve_yaml(yaml: &str) -> Server {
    let snapshot = Arc::new(Snapshot::new(1, weft_api::parse_text("m.yaml", yaml).resources));
    let (tx, rx) = watch::channel(snapshot);
    let status = Arc::new(SyncStatus::default());
    let metrics = Arc::new(Metrics::new());
    let ads = Ads::new(rx, status.clone(), metrics.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ads.into_service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Server { addr, status, metrics, snapshots: tx }
}

/// A sidecar without traffic capture (Istio's default, REDIRECT, would add the capture
/// listeners and passthrough clusters).
fn node(id: &str) -> Option<Node> {
    use envoy_types::pb::google::protobuf::{Struct, Value, value};
    let mode = Value { kind: Some(value::Kind::StringValue("NONE".into())) };
    let metadata = Struct { fields: [("INTERCEPTION_MODE".to_owned(), mode)].into_iter().collect() };
    Some(Node { id: id.into(), metadata: Some(metadata), ..Default::default() })
}

fn request(id: &str, version: &str, nonce: &str, error: Option<&str>) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node(id),
        type_url: type_url::CLUSTER.into(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        error_detail: error.map(|m| RpcStatus { code: 3, message: m.into(), ..Default::default() }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_nack_is_recorded_with_its_reason_and_not_retried_until_the_config_changes() {
    let server = serve().await;
    let id = "sidecar~10.0.0.1~a.default~default.svc.cluster.local";
    let mut client =
        AggregatedDiscoveryServiceClient::connect(server.addr.clone()).await.unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = mpsc::channel(8);
    tx.send(request(id, "", "", None)).await.unwrap_or_else(|e| panic!("{e}"));
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let first = responses.next().await.and_then(Result::ok).unwrap_or_else(|| panic!("no response"));
    assert_eq!(first.resources.len(), 1, "one cluster for the one service port");

    // Reject it.
    tx.send(request(id, "", &first.nonce, Some("cluster rejected: test"))).await.unwrap_or_else(|e| panic!("{e}"));
    // A stale nonce is ignored.
    tx.send(request(id, "", "no-such-nonce", None)).await.unwrap_or_else(|e| panic!("{e}"));
    let nothing = tokio::time::timeout(Duration::from_millis(300), responses.next()).await;
    assert!(nothing.is_err(), "a NACK must not be answered with the same configuration: {nothing:?}");
    let sync = server.status.all();
    let cds = &sync[0].types[type_url::CLUSTER];
    assert_eq!(cds.nack.as_deref(), Some("cluster rejected: test"));
    assert_eq!(cds.acked, "", "nothing acknowledged yet");
    assert!(
        server.metrics.encode().contains("pilot_total_xds_rejects_total{type=\"cds\"} 1"),
        "{}",
        server.metrics.encode()
    );

    // A new configuration is pushed; its ACK clears the NACK.
    let changed = MESH.replace("9080, name: http", "9081, name: http");
    server
        .snapshots
        .send(Arc::new(Snapshot::new(2, weft_api::parse_text("m.yaml", &changed).resources)))
        .unwrap_or_else(|e| panic!("{e}"));
    let second = tokio::time::timeout(Duration::from_secs(5), responses.next())
        .await
        .ok()
        .flatten()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("no push"));
    assert_ne!(second.version_info, first.version_info);
    tx.send(request(id, &second.version_info, &second.nonce, None)).await.unwrap_or_else(|e| panic!("{e}"));
    let mut cds = server.status.all()[0].types[type_url::CLUSTER].clone();
    for _ in 0..200 {
        if cds.acked == second.version_info {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        cds = server.status.all()[0].types[type_url::CLUSTER].clone();
    }
    assert_eq!((cds.acked.as_str(), cds.nack), (second.version_info.as_str(), None));
}

#[tokio::test]
async fn a_node_id_not_in_istio_form_is_refused_with_what_to_fix() {
    let server = serve().await;
    let mut client =
        AggregatedDiscoveryServiceClient::connect(server.addr.clone()).await.unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = mpsc::channel(8);
    tx.send(request("my-envoy", "", "", None)).await.unwrap_or_else(|e| panic!("{e}"));
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let status = responses.next().await.and_then(Result::err).unwrap_or_else(|| panic!("expected an error"));
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("TYPE~IP~NAME.NAMESPACE"), "{}", status.message());
    assert!(server.status.all().is_empty());
}

const SERVICES: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-1}
spec: {address: 10.1.0.1, labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-1}
spec: {address: 10.2.0.1, labels: {app: ratings}}
";

const REVIEWS: &str = "outbound|9080||reviews.default.svc.cluster.local";
const RATINGS: &str = "outbound|9080||ratings.default.svc.cluster.local";

fn delta(type_url: &str, subscribe: &[&str], unsubscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: node("sidecar~10.0.0.1~a.default~default.svc.cluster.local"),
        type_url: type_url.into(),
        resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|n| n.to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

/// A delta stream: its requests, and its responses.
struct DeltaStream {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl DeltaStream {
    async fn open(server: &Server, first: DeltaDiscoveryRequest) -> DeltaStream {
        let mut client =
            AggregatedDiscoveryServiceClient::connect(server.addr.clone()).await.unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = mpsc::channel(8);
        tx.send(first).await.unwrap_or_else(|e| panic!("{e}"));
        let responses = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_inner();
        DeltaStream { tx, responses }
    }

    async fn send(&self, request: DeltaDiscoveryRequest) {
        self.tx.send(request).await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// The next response, acknowledged.
    async fn next(&mut self) -> DeltaDiscoveryResponse {
        let response = tokio::time::timeout(Duration::from_secs(5), self.responses.next())
            .await
            .ok()
            .flatten()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("no response"));
        self.send(delta(&response.type_url, &[], &[], &response.nonce)).await;
        response
    }

    async fn quiet(&mut self, when: &str) {
        let nothing = tokio::time::timeout(Duration::from_millis(300), self.responses.next()).await;
        assert!(nothing.is_err(), "{when}: nothing should be sent, got {nothing:?}");
    }
}

/// The names of a response's resources, with the endpoint addresses of each.
fn endpoints(response: &DeltaDiscoveryResponse) -> Vec<(String, Vec<String>)> {
    use envoy_types::pb::envoy::config::core::v3::address::Address;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    use prost::Message;
    let mut found: Vec<(String, Vec<String>)> = response
        .resources
        .iter()
        .map(|r| {
            let any = r.resource.clone().unwrap_or_default();
            let cla = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap_or_else(|e| panic!("{e}"));
            let addresses = cla
                .endpoints
                .iter()
                .flat_map(|l| &l.lb_endpoints)
                .filter_map(|e| match &e.host_identifier {
                    Some(HostIdentifier::Endpoint(e)) => e.address.clone(),
                    _ => None,
                })
                .filter_map(|a| match a.address {
                    Some(Address::SocketAddress(s)) => Some(s.address),
                    _ => None,
                })
                .collect();
            (r.name.clone(), addresses)
        })
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn a_delta_stream_gets_what_changed_among_what_it_subscribes_to_and_nothing_it_holds() {
    let server = serve_yaml(SERVICES).await;
    let mut version = 1;
    let mut yaml = SERVICES.to_owned();
    let mut publish = |from: &str, to: &str| {
        let previous = server.snapshots.borrow().clone();
        yaml = yaml.replace(from, to);
        version += 1;
        let next = Snapshot::next(&previous, version, weft_api::parse_text("m.yaml", &yaml).resources);
        assert!(next.endpoint_change.is_some(), "an endpoint-only change");
        server.snapshots.send(Arc::new(next)).unwrap_or_else(|e| panic!("{e}"));
    };

    let mut stream = DeltaStream::open(&server, delta(type_url::CLUSTER, &[], &[], "")).await;
    let clusters = stream.next().await;
    let mut names: Vec<&str> = clusters.resources.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(names, [RATINGS, REVIEWS]);
    stream.send(delta(type_url::ENDPOINT, &[REVIEWS, RATINGS], &[], "")).await;
    let first = stream.next().await;
    assert_eq!(
        endpoints(&first),
        [(RATINGS.to_owned(), vec!["10.2.0.1".to_owned()]), (REVIEWS.to_owned(), vec!["10.1.0.1".to_owned()])]
    );

    // One endpoint moves: only its endpoint set is sent, and no cluster.
    publish("10.1.0.1", "10.1.0.9");
    let moved = stream.next().await;
    assert_eq!(moved.type_url, type_url::ENDPOINT);
    assert_eq!(endpoints(&moved), [(REVIEWS.to_owned(), vec!["10.1.0.9".to_owned()])]);
    assert!(moved.removed_resources.is_empty());
    stream.quiet("after an endpoint move").await;

    // What the proxy no longer subscribes to is not sent when it changes...
    stream.send(delta(type_url::ENDPOINT, &[], &[RATINGS], "")).await;
    stream.quiet("after an unsubscription").await;
    publish("10.2.0.1", "10.2.0.9");
    stream.quiet("after a move of an unsubscribed endpoint set").await;
    // ...and is sent as it is now when subscribed to again.
    stream.send(delta(type_url::ENDPOINT, &[RATINGS], &[], "")).await;
    let again = stream.next().await;
    assert_eq!(endpoints(&again), [(RATINGS.to_owned(), vec!["10.2.0.9".to_owned()])]);
    stream.quiet("after the resubscription").await;

    // Both move again: both are sent, in one response.
    publish("10.1.0.9", "10.1.0.1");
    publish("10.2.0.9", "10.2.0.1");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.extend(endpoints(&stream.next().await));
    }
    seen.sort();
    assert_eq!(
        seen,
        [(RATINGS.to_owned(), vec!["10.2.0.1".to_owned()]), (REVIEWS.to_owned(), vec!["10.1.0.1".to_owned()])]
    );
    let reviews_version = {
        // A reconnecting proxy that says it holds the current reviews gets only ratings.
        let mut probe = DeltaStream::open(&server, delta(type_url::ENDPOINT, &[REVIEWS], &[], "")).await;
        probe.next().await.resources.first().map(|r| r.version.clone()).unwrap_or_default()
    };
    let mut reconnect = delta(type_url::ENDPOINT, &[REVIEWS, RATINGS], &[], "");
    reconnect.initial_resource_versions = [(REVIEWS.to_owned(), reviews_version)].into_iter().collect();
    let mut resumed = DeltaStream::open(&server, reconnect).await;
    let resumed_first = resumed.next().await;
    assert_eq!(endpoints(&resumed_first), [(RATINGS.to_owned(), vec!["10.2.0.1".to_owned()])]);
    // A later move of what it said it held is still sent to it.
    publish("10.1.0.1", "10.1.0.5");
    assert_eq!(endpoints(&resumed.next().await), [(REVIEWS.to_owned(), vec!["10.1.0.5".to_owned()])]);
}

/// With [`MESH`], a Sidecar whose ingress and egress listeners are one listener for a
/// proxy at 127.0.0.1 (the egress default bind, and the proxy's own address).
const SAME_LISTENER: &str = "
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  ingress: [{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: 127.0.0.1:8080}]
  egress: [{port: {number: 9080, protocol: HTTP, name: http}, hosts: [./*]}]
";

#[tokio::test]
async fn a_listener_one_half_drops_and_the_other_still_has_is_sent_again_not_removed() {
    let yaml = format!("{MESH}{SAME_LISTENER}");
    let server = serve_yaml(&yaml).await;
    let mut first = delta(type_url::LISTENER, &[], &[], "");
    first.node = node("sidecar~127.0.0.1~ratings-1.default~default.svc.cluster.local");
    let mut stream = DeltaStream::open(&server, first).await;
    let listeners = stream.next().await;
    let names: Vec<&str> = listeners.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["127.0.0.1_9080"], "one listener, the egress one");

    // The egress listener goes; the ingress one, of the same name, stays.
    let without_egress =
        yaml.replace("  egress: [{port: {number: 9080, protocol: HTTP, name: http}, hosts: [./*]}]\n", "");
    let snapshot = Snapshot::next(
        &server.snapshots.borrow().clone(),
        2,
        weft_api::parse_text("m.yaml", &without_egress).resources,
    );
    server.snapshots.send(Arc::new(snapshot)).unwrap_or_else(|e| panic!("{e}"));
    let changed = stream.next().await;
    assert!(changed.removed_resources.is_empty(), "the listener still exists: {:?}", changed.removed_resources);
    let names: Vec<&str> = changed.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["127.0.0.1_9080"], "sent again, as the ingress listener");
    assert_ne!(changed.resources[0].version, listeners.resources[0].version);
}
