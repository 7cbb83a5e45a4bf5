//! Istio's certificate service on 15012, over TLS:
//! `istio.v1.auth.IstioCertificateService/CreateCertificate` signs a workload's CSR.
//!
//! In local mode a caller proves who it is with the bootstrap token the control plane
//! issued to that workload alone (`Authorization: Bearer <token>`); the certificate
//! carries that workload's identity whatever the request asks for, so a workload cannot
//! obtain another's. Tokens are files in the state directory, readable by their owner
//! only: `tokens/<namespace>/<workload>.token`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::codegen::{BoxFuture, StdError, http};
use weft_api::resource::Spec;
pub use weft_envoy::istio_ca::{IstioCertificateRequest, IstioCertificateResponse};
use weft_tls::ca::{CertificateAuthority, DEFAULT_WORKLOAD_LIFETIME, SpiffeId, write_private};

use crate::snapshot::Snapshot;

/// The gRPC service name, as Istio's.
pub const SERVICE: &str = "istio.v1.auth.IstioCertificateService";
/// Istio's secure xDS and CA port.
pub const SECURE_PORT: u16 = 15012;
/// The names the control plane's serving certificate carries (Istio's included, so
/// proxies configured for istiod verify it).
pub const SERVER_NAMES: &[&str] = &["istiod.istio-system.svc", "istiod", "weft-control-plane", "localhost"];

/// Bootstrap tokens of the workloads in the configuration.
#[derive(Debug)]
pub struct Tokens {
    dir: PathBuf,
    trust_domain: String,
    by_token: RwLock<HashMap<String, SpiffeId>>,
}

fn random_token() -> Result<String, std::io::Error> {
    let mut bytes = [0u8; 32];
    weft_tls::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| std::io::Error::other("no secure random numbers"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Tokens {
    /// Tokens kept under `state_dir/tokens`.
    pub fn new(state_dir: &Path, trust_domain: &str) -> Tokens {
        Tokens { dir: state_dir.join("tokens"), trust_domain: trust_domain.to_owned(), by_token: RwLock::default() }
    }

    /// The file holding a workload's token.
    pub fn path(&self, namespace: &str, workload: &str) -> PathBuf {
        self.dir.join(namespace).join(format!("{workload}.token"))
    }

    /// Makes sure every WorkloadEntry, and every gateway a Gateway selects, has a token
    /// (kept across restarts), and that only current workloads' tokens are honoured.
    pub fn sync(&self, snapshot: &Snapshot) -> Result<(), std::io::Error> {
        let mut map = HashMap::new();
        for r in &snapshot.resources {
            let (ns, name, service_account) = match &r.spec {
                Spec::WorkloadEntry(we) => (
                    r.namespace().to_owned(),
                    r.name().to_owned(),
                    we.service_account.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "default".into()),
                ),
                Spec::Gateway(gw) => {
                    let Some((name, account)) = gateway_workload(&gw.selector) else { continue };
                    (r.namespace().to_owned(), name, account)
                }
                _ => continue,
            };
            let (ns, name) = (ns.as_str(), name.as_str());
            let path = self.path(ns, name);
            let token = match std::fs::read_to_string(&path) {
                Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
                _ => {
                    let token = random_token()?;
                    write_private(&path, &token)?;
                    token
                }
            };
            map.insert(
                token,
                SpiffeId { trust_domain: self.trust_domain.clone(), namespace: ns.to_owned(), service_account },
            );
        }
        if let Ok(mut current) = self.by_token.write() {
            *current = map;
        }
        Ok(())
    }

    /// The identity a token stands for.
    pub fn identity(&self, token: &str) -> Option<SpiffeId> {
        self.by_token.read().ok()?.get(token).cloned()
    }
}

/// The workload name and service account of the gateway a Gateway's selector picks, in
/// local mode: `istio: ingressgateway` is the workload `ingressgateway`, running as
/// `ingressgateway-service-account`.
pub fn gateway_workload(selector: &std::collections::BTreeMap<String, String>) -> Option<(String, String)> {
    let name = selector.values().next()?.clone();
    let account = format!("{name}-service-account");
    Some((name, account))
}

/// The certificate service.
#[derive(Debug, Clone)]
pub struct CertificateService {
    ca: Arc<CertificateAuthority>,
    tokens: Arc<Tokens>,
}

impl CertificateService {
    /// A service signing with `ca` for the holders of `tokens`.
    pub fn new(ca: Arc<CertificateAuthority>, tokens: Arc<Tokens>) -> CertificateService {
        CertificateService { ca, tokens }
    }

    fn create(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<IstioCertificateResponse, tonic::Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| tonic::Status::unauthenticated("no bootstrap token (authorization: Bearer <token>)"))?;
        let identity = self.tokens.identity(token).ok_or_else(|| {
            tonic::Status::unauthenticated("unknown bootstrap token: is the workload still configured?")
        })?;
        let request = request.into_inner();
        let lifetime = u64::try_from(request.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map_or(DEFAULT_WORKLOAD_LIFETIME, Duration::from_secs);
        let chain = self
            .ca
            .sign(&request.csr, &identity, lifetime)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        tracing::info!(identity = %identity, "signed a workload certificate");
        Ok(IstioCertificateResponse { cert_chain: chain })
    }
}

impl tonic::server::NamedService for CertificateService {
    const NAME: &'static str = SERVICE;
}

struct CreateCertificate(CertificateService);

impl tonic::server::UnaryService<IstioCertificateRequest> for CreateCertificate {
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<tonic::Response<IstioCertificateResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<IstioCertificateRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.create(request).map(tonic::Response::new) })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for CertificateService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let service = self.clone();
        match request.uri().path() {
            weft_envoy::istio_ca::CREATE_CERTIFICATE => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(CreateCertificate(service), request).await)
            }),
            _ => Box::pin(async move { Ok(tonic::Status::unimplemented("no such method").into_http()) }),
        }
    }
}
