//! TLS origination to upstreams (an Envoy `UpstreamTlsContext`), with rustls.
//!
//! As Envoy does: with no trusted CA nothing is verified; with one, the chain must lead
//! to it; with subject-alt-name matchers, the certificate must also carry one of them.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    UpstreamTlsContext, common_tls_context, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Why a TLS context cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file named in the context cannot be read or parsed.
    #[error("cannot load {what} from {source_name}: {reason}")]
    Load { what: &'static str, source_name: String, reason: String },
    /// rustls refused the material.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// A feature of the context weft does not implement.
    #[error("{0} is not supported")]
    Unsupported(String),
}

/// A compiled upstream TLS context.
#[derive(Debug)]
pub struct UpstreamTls {
    /// SNI to send (the host name when empty).
    pub sni: String,
    /// The rustls client configuration.
    pub config: Arc<ClientConfig>,
    source: UpstreamTlsContext,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl UpstreamTls {
    /// Builds the client configuration, reading the files the context names.
    pub fn from_envoy(ctx: &UpstreamTlsContext) -> Result<UpstreamTls, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let common = ctx.common_tls_context.clone().unwrap_or_default();
        let mut roots = RootCertStore::empty();
        let mut sans = Vec::new();
        let mut verify = false;
        match &common.validation_context_type {
            None => {}
            Some(common_tls_context::ValidationContextType::ValidationContext(v)) => {
                if let Some(ca) = &v.trusted_ca {
                    verify = true;
                    for cert in certificates(ca, "trusted CA")? {
                        roots.add(cert)?;
                    }
                }
                for m in &v.match_typed_subject_alt_names {
                    let exact = match m.matcher.as_ref().and_then(|m| m.match_pattern.as_ref()) {
                        Some(string_matcher::MatchPattern::Exact(e)) => e.clone(),
                        _ => return Err(TlsError::Unsupported("a subject alt name matcher other than exact".into())),
                    };
                    if m.san_type != subject_alt_name_matcher::SanType::Dns as i32 {
                        return Err(TlsError::Unsupported("a subject alt name type other than DNS".into()));
                    }
                    sans.push(exact);
                }
            }
            Some(_) => return Err(TlsError::Unsupported("SDS validation contexts".into())),
        }
        let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let verifier: Arc<dyn ServerCertVerifier> = if verify {
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsError::Unsupported(format!("CA material ({e})")))?;
            Arc::new(SanVerifier { inner, sans })
        } else {
            Arc::new(NoVerifier { provider: provider.clone() })
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        let mut config = match common.tls_certificates.first() {
            Some(c) => {
                let chain =
                    certificates(c.certificate_chain.as_ref().unwrap_or(&DataSource::default()), "certificate")?;
                let key = private_key(c.private_key.as_ref().unwrap_or(&DataSource::default()))?;
                builder.with_client_auth_cert(chain, key)?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = common.alpn_protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(UpstreamTls { sni: ctx.sni.clone(), config: Arc::new(config), source: ctx.clone() })
    }

    /// The server name to present for a connection to `host`.
    pub fn server_name(&self, host: &str) -> Option<ServerName<'static>> {
        let name = if self.sni.is_empty() { host } else { &self.sni };
        ServerName::try_from(name.to_owned()).ok()
    }
}

fn read(source: &DataSource, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let fail = |name: &str, reason: String| TlsError::Load { what, source_name: name.to_owned(), reason };
    match &source.specifier {
        Some(data_source::Specifier::Filename(f)) => std::fs::read(f).map_err(|e| fail(f, e.to_string())),
        Some(data_source::Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(data_source::Specifier::InlineString(s)) => Ok(s.as_bytes().to_vec()),
        _ => Err(fail("(nothing)", "no file or inline data".into())),
    }
}

fn source_name(source: &DataSource) -> String {
    match &source.specifier {
        Some(data_source::Specifier::Filename(f)) => f.clone(),
        _ => "inline data".into(),
    }
}

fn certificates(source: &DataSource, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(source, what)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|e| TlsError::Load {
        what,
        source_name: source_name(source),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Load { what, source_name: source_name(source), reason: "no PEM certificate".into() });
    }
    Ok(certs)
}

fn private_key(source: &DataSource) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(source, "private key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Load {
        what: "private key",
        source_name: source_name(source),
        reason: e.to_string(),
    })
}

/// Chain verification against the configured CA, then the subject-alt-name check.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<WebPkiServerVerifier>,
    sans: Vec<String>,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name_mismatch = |e: &rustls::Error| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
                )
            )
        };
        if self.sans.is_empty() {
            // Envoy checks the chain only; the SNI need not be one of the certificate's names.
            return match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                Err(e) if name_mismatch(&e) => Ok(ServerCertVerified::assertion()),
                other => other,
            };
        }
        let mut last = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        for san in &self.sans {
            let Ok(name) = ServerName::try_from(san.as_str()) else { continue };
            match self.inner.verify_server_cert(end_entity, intermediates, &name, ocsp, now) {
                Ok(v) => return Ok(v),
                Err(e) if name_mismatch(&e) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// No validation context: Envoy accepts any server certificate, so does weft.
#[derive(Debug)]
struct NoVerifier {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
