//! The workload's identity: a certificate from the mesh's CA, obtained over TLS with
//! the workload's bootstrap token (Istio's `CreateCertificate`), renewed at half its
//! lifetime. The private key never leaves the proxy; a renewal replaces the identity
//! for new connections and leaves open ones alone.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weft_envoy::istio_ca::{CREATE_CERTIFICATE, IstioCertificateRequest, IstioCertificateResponse};
use weft_tls::ca::{CertificateInfo, SpiffeId, certificate_info, key_and_csr};

use crate::secrets::Secrets;

/// The name the control plane's serving certificate carries, as istiod's.
pub const CA_SERVER_NAME: &str = "istiod.istio-system.svc";
/// First retry delay after a failed request.
const RETRY_START: Duration = Duration::from_secs(1);
/// Longest retry delay.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Where and how to obtain the identity.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// `host:port` of the control plane's secure port (15012).
    pub ca_address: String,
    /// The mesh's root certificate, to verify the control plane.
    pub root_cert: PathBuf,
    /// The workload's bootstrap token.
    pub token_file: PathBuf,
    /// The identity to ask for (the CA decides what the certificate carries).
    pub identity: SpiffeId,
    /// Requested lifetime.
    pub lifetime: Duration,
}

/// A certificate and its key.
#[derive(Debug)]
pub struct Certificate {
    /// PEM chain, leaf first, root last.
    pub chain: Vec<String>,
    /// PEM private key.
    pub key_pem: String,
    /// What the leaf says.
    pub info: CertificateInfo,
}

/// Why no certificate could be obtained.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A local file is missing or unreadable.
    #[error("{0}: {1}")]
    File(PathBuf, std::io::Error),
    /// The control plane is unreachable or refused TLS.
    #[error("cannot reach the CA at {0}: {1} (is the control plane's --secure-address right?)")]
    Connect(String, String),
    /// The CA refused.
    #[error("the CA refused: {0}")]
    Refused(tonic::Status),
    /// The answer is not a usable certificate.
    #[error("the CA's answer is not a usable certificate: {0}")]
    Invalid(String),
}

/// Asks the CA for a certificate.
pub async fn fetch(config: &IdentityConfig, ca_address: &str) -> Result<Certificate, IdentityError> {
    let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| IdentityError::File(p.clone(), e));
    let root = read(&config.root_cert)?;
    let token = read(&config.token_file)?.trim().to_owned();
    let (key_pem, csr) = key_and_csr(&config.identity).map_err(|e| IdentityError::Invalid(e.to_string()))?;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(root))
        .domain_name(CA_SERVER_NAME);
    let connect = |e: &dyn std::fmt::Display| IdentityError::Connect(ca_address.to_owned(), e.to_string());
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{ca_address}"))
        .map_err(|e| connect(&e))?
        .tls_config(tls)
        .map_err(|e| connect(&e))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| connect(&e))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| connect(&e))?;
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: i64::try_from(config.lifetime.as_secs()).unwrap_or(i64::MAX),
        metadata: None,
    });
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| IdentityError::Invalid("the token is not valid metadata".into()))?;
    request.metadata_mut().insert("authorization", bearer);
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE);
    let response: IstioCertificateResponse = grpc
        .unary(request, path, tonic_prost::ProstCodec::default())
        .await
        .map_err(IdentityError::Refused)?
        .into_inner();
    let leaf = response.cert_chain.first().ok_or_else(|| IdentityError::Invalid("an empty chain".into()))?;
    let info = certificate_info(leaf).ok_or_else(|| IdentityError::Invalid("the leaf does not parse".into()))?;
    Ok(Certificate { chain: response.cert_chain, key_pem, info })
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Keeps the proxy's certificate current until the process ends: fetches one, then
/// renews it at half its lifetime; failures are retried with back-off while the current
/// certificate stays in use. Each request goes to the CA `ca_address` names then (the
/// proxy may have moved to another control plane).
pub async fn maintain(secrets: Secrets, config: IdentityConfig, ca_address: impl Fn() -> String) {
    let mut retry = RETRY_START;
    loop {
        match fetch(&config, &ca_address()).await {
            Ok(cert) => {
                retry = RETRY_START;
                // Half of the lifetime left from now (certificates are backdated a little
                // for clock skew, which must not make renewal early).
                let (from, until) = (now_secs(), cert.info.not_after);
                tracing::info!(identity = ?cert.info.spiffe_ids, serial = %cert.info.serial, expires = until, "workload certificate issued");
                match crate::secrets::WorkloadTls::new(cert) {
                    Ok(tls) => secrets.install(tls),
                    Err(e) => {
                        tracing::warn!("{e}; retrying in {retry:?}");
                        tokio::time::sleep(retry).await;
                        retry = (retry * 2).min(RETRY_MAX);
                        continue;
                    }
                }
                let renew_at = from + (until - from) / 2;
                let wait = u64::try_from(renew_at - now_secs()).unwrap_or(0);
                tokio::time::sleep(Duration::from_secs(wait.max(1))).await;
            }
            Err(e) => {
                tracing::warn!("cannot obtain the workload certificate: {e}; retrying in {retry:?}");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}
