//! The secure port over real TLS: Istio's certificate service signs a workload's CSR
//! only for the holder of that workload's bootstrap token, with the workload's own
//! identity; xDS is served on the same port.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tokio_stream::StreamExt;
use weft_controlplane::ca::{IstioCertificateRequest, IstioCertificateResponse};
use weft_controlplane::server::{Config, Security, run};
use weft_tls::ca::{SpiffeId, key_and_csr, spiffe_ids};

const MESH: &str = r#"
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
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 127.0.0.1, labels: {app: reviews}, serviceAccount: bookinfo-reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-v1}
spec: {address: 127.0.0.2, labels: {app: ratings}}
"#;

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    l.local_addr().unwrap_or_else(|e| panic!("{e}"))
}

async fn channel(secure: SocketAddr, state: &Path) -> tonic::transport::Channel {
    let root = std::fs::read_to_string(state.join("ca/root-cert.pem")).unwrap_or_else(|e| panic!("{e}"));
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(root))
        .domain_name("istiod.istio-system.svc");
    tonic::transport::Endpoint::from_shared(format!("https://{secure}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .tls_config(tls)
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect over TLS: {e}"))
}

async fn create_certificate(
    channel: tonic::transport::Channel,
    token: Option<&str>,
    csr: &str,
) -> Result<IstioCertificateResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(IstioCertificateRequest { csr: csr.to_owned(), ..Default::default() });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap_or_else(|e| panic!("{e:?}")));
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/istio.v1.auth.IstioCertificateService/CreateCertificate",
    );
    grpc.unary(request, path, tonic_prost::ProstCodec::default()).await.map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_get_certificates_for_their_own_identity_only() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(config_dir.join("mesh.yaml"), MESH).unwrap_or_else(|e| panic!("{e}"));
    let state = dir.path().join("state");
    let secure = free_port();
    let config = Config {
        paths: vec![config_dir],
        xds_address: free_port(),
        debug_address: free_port(),
        security: Some(Security {
            state_dir: state.clone(),
            secure_address: secure,
            trust_domain: "cluster.local".into(),
        }),
        mesh: Default::default(),
        revision: None,
    };
    tokio::spawn(run(config, std::future::pending()));
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(secure).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Each workload has its own token, readable by the control plane's user only.
    let token_path = state.join("tokens/default/reviews-v1.token");
    let token = std::fs::read_to_string(&token_path).unwrap_or_else(|e| panic!("{e}"));
    let mode = std::fs::metadata(&token_path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    assert_eq!(mode, 0o600);
    let other = std::fs::read_to_string(state.join("tokens/default/ratings-v1.token")).unwrap_or_default();
    assert!(!other.is_empty() && other != token);

    // The CSR asks for an administrator's identity; the certificate is the workload's.
    let wanted =
        SpiffeId { trust_domain: "cluster.local".into(), namespace: "default".into(), service_account: "admin".into() };
    let (_key, csr) = key_and_csr(&wanted).unwrap_or_else(|e| panic!("{e}"));
    let channel = channel(secure, &state).await;
    let signed = create_certificate(channel.clone(), Some(&token), &csr).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spiffe_ids(&signed.cert_chain[0]), ["spiffe://cluster.local/ns/default/sa/bookinfo-reviews"]);
    let root = std::fs::read_to_string(state.join("ca/root-cert.pem")).unwrap_or_default();
    assert_eq!(signed.cert_chain.last().map(|c| c.trim()), Some(root.trim()), "the chain ends at the root");
    let ratings = create_certificate(channel.clone(), Some(&other), &csr).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spiffe_ids(&ratings.cert_chain[0]), ["spiffe://cluster.local/ns/default/sa/default"]);

    // Without a token, or with a made-up one, nothing is signed.
    for token in [None, Some("0000")] {
        let refused = create_certificate(channel.clone(), token, &csr).await;
        assert_eq!(refused.err().map(|s| s.code()), Some(tonic::Code::Unauthenticated), "{token:?}");
    }

    // xDS is served on the same TLS port.
    let mut ads = AggregatedDiscoveryServiceClient::new(channel);
    let node =
        Node { id: "sidecar~127.0.0.1~reviews-v1.default~default.svc.cluster.local".into(), ..Default::default() };
    let request = DiscoveryRequest {
        node: Some(node),
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        ..Default::default()
    };
    let mut responses = ads
        .stream_aggregated_resources(tokio_stream::iter([request]).chain(tokio_stream::pending()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), responses.next()).await;
    let clusters = first.ok().flatten().and_then(Result::ok).map(|r| r.resources.len()).unwrap_or(0);
    assert!(clusters >= 1, "no clusters over the secure port");
}
