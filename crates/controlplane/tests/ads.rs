//! The ADS protocol from a client's side, over a real gRPC stream: ACKs, a NACK that is
//! recorded with its reason and not retried, a stale nonce ignored, a bad node refused.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
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
    let snapshot = Arc::new(Snapshot::new(1, weft_api::parse_text("m.yaml", MESH).resources));
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
