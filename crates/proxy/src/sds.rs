//! The node agent: the workload's identity served to Envoy over SDS, on a Unix socket,
//! as Istio's agent serves it. Envoy asks for the secrets `default` (certificate and key)
//! and `ROOTCA` (the mesh's root); each renewal is pushed as a new version. It also
//! serves this machine's trusted roots for TLS to servers outside the mesh:
//! `file-root:system` (the operating system's) and `file-root:PATH`. The private
//! key never leaves the machine: it is made here and handed only to the local Envoy.

use std::path::{Path, PathBuf};
use std::pin::Pin;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::identity::IdentityConfig;
use crate::secrets::{FILE_ROOT, ROOT_CA, SYSTEM_ROOTS, Secrets, WORKLOAD_CERT, WorkloadTls, system_roots};

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The socket could not be created.
    #[error("cannot listen on {0}: {1}")]
    Bind(PathBuf, std::io::Error),
    /// The gRPC server failed.
    #[error("SDS server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The SDS secrets of a workload certificate, as Envoy reads them.
fn secret(name: &str, tls: &WorkloadTls) -> Option<Secret> {
    let inline = |pem: String| {
        Some(DataSource {
            specifier: Some(data_source::Specifier::InlineBytes(pem.into_bytes())),
            ..Default::default()
        })
    };
    let chain = &tls.certificate.chain;
    let kind = match name {
        WORKLOAD_CERT => {
            // Leaf and intermediates; the root is ROOTCA's.
            let keep = if chain.len() > 1 { chain.len() - 1 } else { chain.len() };
            secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: inline(chain[..keep].concat()),
                private_key: inline(tls.certificate.key_pem.clone()),
                ..Default::default()
            })
        }
        ROOT_CA => secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: inline(chain.last()?.clone()),
            ..Default::default()
        }),
        SYSTEM_ROOTS => {
            let roots: Vec<_> = system_roots().iter().map(|c| pem::Pem::new("CERTIFICATE", c.to_vec())).collect();
            secret::Type::ValidationContext(CertificateValidationContext {
                trusted_ca: inline(pem::encode_many(&roots)),
                ..Default::default()
            })
        }
        // Envoy runs on this machine: it reads the file itself.
        other => secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: Some(DataSource {
                specifier: Some(data_source::Specifier::Filename(other.strip_prefix(FILE_ROOT)?.to_owned())),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    Some(Secret { name: name.to_owned(), r#type: Some(kind) })
}

fn response(names: &[String], tls: &WorkloadTls, nonce: u64) -> DiscoveryResponse {
    let resources = names
        .iter()
        .filter_map(|n| secret(n, tls))
        .map(|s| Any { type_url: Secret::type_url(), value: s.encode_to_vec() })
        .collect();
    DiscoveryResponse {
        version_info: tls.certificate.info.serial.clone(),
        resources,
        type_url: Secret::type_url(),
        nonce: nonce.to_string(),
        ..Default::default()
    }
}

/// The SDS service over the workload's secrets.
#[derive(Debug, Clone)]
pub struct SdsService {
    secrets: Secrets,
}

type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type DeltaSecretsStream = Responses<DeltaDiscoveryResponse>;
    type StreamSecretsStream = Responses<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented("incremental SDS: use the state-of-the-world API (api_type GRPC)"))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let secrets = self.secrets.clone();
        tokio::spawn(async move {
            let mut changes = secrets.subscribe();
            let (mut names, mut sent_version, mut nonce) = (Vec::<String>::new(), String::new(), 0u64);
            loop {
                tokio::select! {
                    message = inbound.message() => match message {
                        Ok(Some(r)) => {
                            if let Some(e) = &r.error_detail {
                                tracing::warn!(secrets = ?r.resource_names, "Envoy rejected a secret: {}", e.message);
                            }
                            if r.resource_names != names {
                                names = r.resource_names;
                                sent_version.clear();
                            }
                        }
                        _ => return,
                    },
                    changed = changes.changed() => if changed.is_err() { return },
                }
                let Some(tls) = secrets.current() else { continue };
                if names.is_empty() || tls.certificate.info.serial == sent_version {
                    continue;
                }
                nonce += 1;
                sent_version = tls.certificate.info.serial.clone();
                if tx.send(Ok(response(&names, &tls, nonce))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(&self, request: Request<DiscoveryRequest>) -> Result<Response<DiscoveryResponse>, Status> {
        let tls = self.secrets.current().ok_or_else(|| Status::unavailable("no workload certificate yet"))?;
        Ok(Response::new(response(&request.into_inner().resource_names, &tls, 0)))
    }
}

/// Runs the agent until `shutdown`: keeps the workload's certificate current and serves
/// it over SDS on the Unix socket `path` (replaced if it exists).
pub async fn run_agent(
    identity: IdentityConfig,
    path: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| AgentError::Bind(path.to_owned(), e))?;
    let secrets = Secrets::default();
    let ca = identity.ca_address.clone();
    let renewals = tokio::spawn(crate::identity::maintain(secrets.clone(), identity, move || ca.clone()));
    tracing::info!(socket = %path.display(), "serving the workload's secrets over SDS");
    let result = tonic::transport::Server::builder()
        .add_service(SecretDiscoveryServiceServer::new(SdsService { secrets }))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), shutdown)
        .await;
    renewals.abort();
    let _ = std::fs::remove_file(path);
    Ok(result?)
}
