//! The workload's TLS secrets, as Envoy's SDS names them: `default` (the workload's
//! certificate and key) and `ROOTCA` (the mesh's root, to validate peers).
//!
//! A TLS context that names them reads the current secret at each handshake, so a
//! renewed certificate is used by the next connection and open ones are left alone.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::Certificate;

/// The SDS name of the workload's certificate.
pub const WORKLOAD_CERT: &str = "default";
/// The SDS name of the mesh's root certificate.
pub const ROOT_CA: &str = "ROOTCA";
/// The SDS name of the operating system's trusted roots (for TLS to servers outside
/// the mesh), as Istio's agent names them; `file-root:PATH` names a file of roots.
pub const SYSTEM_ROOTS: &str = "file-root:system";
/// The prefix of SDS names that stand for trusted roots read from this machine.
pub const FILE_ROOT: &str = "file-root:";

/// The operating system's trusted roots, loaded on first use.
pub fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!("reading the system's trusted roots: {e}");
        }
        found.certs
    })
}

/// The workload's certificate, ready for TLS.
#[derive(Debug)]
pub struct WorkloadTls {
    /// The certificate as issued.
    pub certificate: Certificate,
    /// Chain (without the root) and signing key.
    pub key: Arc<CertifiedKey>,
    /// Verifies a server's chain against the mesh's root.
    pub server_verifier: Arc<WebPkiServerVerifier>,
    /// Verifies a client's chain against the mesh's root (a certificate is required).
    pub client_verifier: Arc<dyn ClientCertVerifier>,
    /// The workload's own SPIFFE id (for `x-forwarded-client-cert`'s `By`).
    pub spiffe_id: String,
    /// The same, shared (a metrics label).
    pub principal: Arc<str>,
}

/// Why a certificate cannot be used for TLS.
#[derive(Debug, thiserror::Error)]
#[error("the workload certificate cannot be used for TLS: {0}")]
pub struct SecretError(String);

impl WorkloadTls {
    /// Prepares a certificate from the CA: leaf first, the mesh's root last.
    pub fn new(certificate: Certificate) -> Result<WorkloadTls, SecretError> {
        let fail = |e: &dyn std::fmt::Display| SecretError(e.to_string());
        let mut chain = Vec::new();
        for pem in &certificate.chain {
            for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                chain.push(der.map_err(|e| fail(&e))?);
            }
        }
        let root = match chain.len() {
            0 => return Err(SecretError("an empty chain".into())),
            1 => chain[0].clone(),
            _ => chain.pop().ok_or_else(|| SecretError("an empty chain".into()))?,
        };
        let mut roots = RootCertStore::empty();
        roots.add(root).map_err(|e| fail(&e))?;
        let roots = Arc::new(roots);
        let provider = weft_tls::provider();
        let key_der = PrivateKeyDer::from_pem_slice(certificate.key_pem.as_bytes()).map_err(|e| fail(&e))?;
        let signing = provider.key_provider.load_private_key(key_der).map_err(|e| fail(&e))?;
        let spiffe_id = certificate.info.spiffe_ids.first().cloned().unwrap_or_default();
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| fail(&e))?;
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots, provider).build().map_err(|e| fail(&e))?;
        Ok(WorkloadTls {
            certificate,
            key: Arc::new(CertifiedKey::new(chain, signing)),
            server_verifier,
            client_verifier,
            principal: Arc::from(spiffe_id.as_str()),
            spiffe_id,
        })
    }
}

/// The current workload secret, shared by every TLS context that names it.
#[derive(Debug, Clone)]
pub struct Secrets(Arc<Slot>);

#[derive(Debug)]
struct Slot {
    current: ArcSwapOption<WorkloadTls>,
    /// Counts installs, for whoever serves the secret on (SDS).
    generation: tokio::sync::watch::Sender<u64>,
}

impl Default for Secrets {
    fn default() -> Self {
        Secrets(Arc::new(Slot { current: ArcSwapOption::empty(), generation: tokio::sync::watch::Sender::new(0) }))
    }
}

impl Secrets {
    /// The current secret, if the workload has one yet.
    pub fn current(&self) -> Option<Arc<WorkloadTls>> {
        self.0.current.load_full()
    }

    /// Replaces the secret (new connections use it; open ones keep theirs).
    pub fn install(&self, tls: WorkloadTls) {
        self.0.current.store(Some(Arc::new(tls)));
        self.0.generation.send_modify(|g| *g += 1);
    }

    /// Changes whenever a new secret is installed.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.generation.subscribe()
    }
}
