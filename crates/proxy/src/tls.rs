//! TLS as Envoy's transport sockets configure it, with rustls: origination to upstreams
//! (`UpstreamTlsContext`) and termination of downstream connections
//! (`DownstreamTlsContext`).
//!
//! Certificates and trusted roots come from files or inline data, or from the SDS
//! secrets `default` and `ROOTCA`, which the proxy fills from its workload identity
//! ([`crate::secrets`]). As Envoy does: with no trusted CA nothing is verified; with
//! one, the chain must lead to it; with subject-alt-name matchers, the certificate must
//! also carry one of them (DNS names or URIs such as SPIFFE ids, exact or by prefix).

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, UpstreamTlsContext,
    common_tls_context, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, CipherSuite, ClientConfig, DigitallySignedStruct, DistinguishedName, NamedGroup, RootCertStore,
    ServerConfig, SignatureScheme, SupportedProtocolVersion,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::secrets::{FILE_ROOT, ROOT_CA, SYSTEM_ROOTS, Secrets, WORKLOAD_CERT, system_roots};

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
    pub fn from_envoy(ctx: &UpstreamTlsContext, secrets: &Secrets) -> Result<UpstreamTls, TlsError> {
        let common = ctx.common_tls_context.clone().unwrap_or_default();
        let (provider, versions) = tuned(&common)?;
        let (trust, sans) = validation(&common, secrets)?;
        let verifier = Arc::new(PeerVerifier::new(trust, sans, provider.clone())?);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match own_certificate(&common, secrets, &provider)? {
            None => builder.with_no_client_auth(),
            Some(key) => builder.with_client_cert_resolver(Arc::new(key)),
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

/// A compiled downstream TLS context (a filter chain's transport socket).
#[derive(Debug)]
pub struct DownstreamTls {
    /// With the configured ALPN protocols.
    with_alpn: Arc<ServerConfig>,
    /// Without ALPN, for clients that offer none of the configured protocols (Envoy then
    /// negotiates none rather than failing the handshake).
    without_alpn: Arc<ServerConfig>,
}

impl DownstreamTls {
    /// Builds the server configuration.
    pub fn from_envoy(ctx: &DownstreamTlsContext, secrets: &Secrets) -> Result<DownstreamTls, TlsError> {
        let common = ctx.common_tls_context.clone().unwrap_or_default();
        let (provider, versions) = tuned(&common)?;
        let required = ctx.require_client_certificate.as_ref().is_some_and(|b| b.value);
        let (trust, sans) = validation(&common, secrets)?;
        if !sans.is_empty() {
            return Err(TlsError::Unsupported("subject alt name matchers on client certificates".into()));
        }
        let key = own_certificate(&common, secrets, &provider)?
            .ok_or_else(|| TlsError::Unsupported("a downstream TLS context without a certificate".into()))?;
        let verifier = Arc::new(ClientVerifier::new(trust, required, provider.clone())?);
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(key));
        let without_alpn = Arc::new(config.clone());
        config.alpn_protocols = common.alpn_protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(DownstreamTls { with_alpn: Arc::new(config), without_alpn })
    }

    /// The configuration for a client that offers `alpn`.
    pub fn config_for<'a>(&self, mut offered: impl Iterator<Item = &'a [u8]>) -> Arc<ServerConfig> {
        if offered.any(|p| self.with_alpn.alpn_protocols.iter().any(|ours| ours == p)) {
            self.with_alpn.clone()
        } else {
            self.without_alpn.clone()
        }
    }
}

/// Key exchange groups by Envoy's (OpenSSL's) names.
const CURVES: &[(&str, NamedGroup)] = &[
    ("X25519", NamedGroup::X25519),
    ("P-256", NamedGroup::secp256r1),
    ("P-384", NamedGroup::secp384r1),
    ("P-521", NamedGroup::secp521r1),
    ("X25519MLKEM768", NamedGroup::X25519MLKEM768),
];

/// TLS 1.2 cipher suites by OpenSSL's names (TLS 1.3 suites are not configurable, as in
/// Envoy).
const CIPHERS: &[(&str, CipherSuite)] = &[
    ("ECDHE-ECDSA-AES128-GCM-SHA256", CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
    ("ECDHE-RSA-AES128-GCM-SHA256", CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
    ("ECDHE-ECDSA-AES256-GCM-SHA384", CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
    ("ECDHE-RSA-AES256-GCM-SHA384", CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
    ("ECDHE-ECDSA-CHACHA20-POLY1305", CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
    ("ECDHE-RSA-CHACHA20-POLY1305", CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
];

/// The provider and protocol versions a context's `tls_params` leave: the TLS versions
/// between the minimum and maximum (1.2 and 1.3 exist in rustls; older minimums mean
/// 1.2), the ECDH curves listed (in that order), the TLS 1.2 cipher suites listed.
fn tuned(common: &CommonTlsContext) -> Result<(Arc<CryptoProvider>, Vec<&'static SupportedProtocolVersion>), TlsError> {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
    let base = weft_tls::provider();
    let Some(params) = &common.tls_params else {
        return Ok((base, rustls::DEFAULT_VERSIONS.to_vec()));
    };
    let version = |v: i32, auto: u8| match TlsProtocol::try_from(v) {
        Ok(TlsProtocol::TlSv13) => 13,
        Ok(TlsProtocol::TlsAuto) | Err(_) => auto,
        _ => 12,
    };
    let (min, max) =
        (version(params.tls_minimum_protocol_version, 12), version(params.tls_maximum_protocol_version, 13));
    let mut versions = Vec::new();
    if min <= 13 && max >= 13 {
        versions.push(&rustls::version::TLS13);
    }
    if min <= 12 && max >= 12 {
        versions.push(&rustls::version::TLS12);
    }
    if versions.is_empty() {
        return Err(TlsError::Unsupported(format!("TLS versions {min} to {max}")));
    }
    let mut provider = (*base).clone();
    if !params.ecdh_curves.is_empty() {
        let mut groups = Vec::new();
        for name in &params.ecdh_curves {
            let wanted = CURVES.iter().find(|(n, _)| n == name).map(|(_, g)| *g);
            let group = wanted.and_then(|g| base.kx_groups.iter().find(|k| k.name() == g));
            groups.push(*group.ok_or_else(|| {
                TlsError::Unsupported(format!("ECDH curve {name:?} (this build offers {})", offered_curves(&base)))
            })?);
        }
        provider.kx_groups = groups;
    }
    if !params.cipher_suites.is_empty() {
        let mut wanted = Vec::new();
        for name in params.cipher_suites.iter().flat_map(|n| n.trim_matches(['[', ']']).split('|')) {
            match CIPHERS.iter().find(|(n, _)| *n == name) {
                Some((_, suite)) => wanted.push(*suite),
                None if name.starts_with("TLS_") => {}
                None => return Err(TlsError::Unsupported(format!("cipher suite {name:?}"))),
            }
        }
        provider.cipher_suites.retain(|s| s.tls13().is_some() || wanted.contains(&s.suite()));
    }
    Ok((Arc::new(provider), versions))
}

fn offered_curves(provider: &CryptoProvider) -> String {
    let names: Vec<&str> =
        CURVES.iter().filter(|(_, g)| provider.kx_groups.iter().any(|k| k.name() == *g)).map(|(n, _)| *n).collect();
    names.join(", ")
}

/// Where a context's certificate comes from.
#[derive(Debug)]
enum OwnCertificate {
    /// Files or inline data.
    Static(Arc<CertifiedKey>),
    /// The workload's identity (SDS `default`).
    Workload(Secrets),
}

impl OwnCertificate {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        match self {
            OwnCertificate::Static(k) => Some(k.clone()),
            OwnCertificate::Workload(s) => s.current().map(|w| w.key.clone()),
        }
    }
}

impl ResolvesClientCert for OwnCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for OwnCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

fn sds_name(s: &SdsSecretConfig, expected: &str, what: &str) -> Result<(), TlsError> {
    if s.name == expected {
        Ok(())
    } else {
        Err(TlsError::Unsupported(format!(
            "SDS secret {:?} as the {what} (weft's proxy serves {expected:?} from its workload identity)",
            s.name
        )))
    }
}

fn own_certificate(
    common: &CommonTlsContext,
    secrets: &Secrets,
    provider: &CryptoProvider,
) -> Result<Option<OwnCertificate>, TlsError> {
    if let Some(sds) = common.tls_certificate_sds_secret_configs.first() {
        sds_name(sds, WORKLOAD_CERT, "certificate")?;
        return Ok(Some(OwnCertificate::Workload(secrets.clone())));
    }
    let Some(c) = common.tls_certificates.first() else { return Ok(None) };
    let chain = certificates(c.certificate_chain.as_ref().unwrap_or(&DataSource::default()), "certificate")?;
    let key = private_key(c.private_key.as_ref().unwrap_or(&DataSource::default()))?;
    let signing = provider.key_provider.load_private_key(key)?;
    Ok(Some(OwnCertificate::Static(Arc::new(CertifiedKey::new(chain, signing)))))
}

/// Which roots a peer's chain must lead to.
#[derive(Debug)]
enum Trust {
    /// Anything goes (no validation context).
    Nothing,
    /// A configured CA.
    Roots(Arc<RootCertStore>),
    /// The mesh's root (SDS `ROOTCA`).
    Mesh(Secrets),
}

/// A subject-alt-name condition.
#[derive(Debug, Clone, PartialEq)]
enum SanMatch {
    Dns(String),
    UriExact(String),
    UriPrefix(String),
}

fn validation(common: &CommonTlsContext, secrets: &Secrets) -> Result<(Trust, Vec<SanMatch>), TlsError> {
    use common_tls_context::ValidationContextType as V;
    let (static_ctx, sds) = match &common.validation_context_type {
        None => return Ok((Trust::Nothing, Vec::new())),
        Some(V::ValidationContext(v)) => (Some(v), None),
        Some(V::ValidationContextSdsSecretConfig(s)) => (None, Some(s)),
        Some(V::CombinedValidationContext(c)) => {
            (c.default_validation_context.as_ref(), c.validation_context_sds_secret_config.as_ref())
        }
        Some(_) => return Err(TlsError::Unsupported("a certificate provider validation context".into())),
    };
    let sans = static_ctx.map(san_matchers).transpose()?.unwrap_or_default();
    let trust = match (sds, static_ctx.and_then(|v| v.trusted_ca.as_ref())) {
        (Some(sds), _) if sds.name == ROOT_CA => Trust::Mesh(secrets.clone()),
        (Some(sds), _) if sds.name == SYSTEM_ROOTS => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(system_roots().iter().cloned());
            Trust::Roots(Arc::new(roots))
        }
        (Some(sds), _) => match sds.name.strip_prefix(FILE_ROOT) {
            Some(path) => Trust::Roots(Arc::new(roots_from(&DataSource {
                specifier: Some(data_source::Specifier::Filename(path.to_owned())),
                ..Default::default()
            })?)),
            None => {
                return Err(TlsError::Unsupported(format!(
                    "SDS secret {:?} as the validation context (weft's proxy serves {ROOT_CA:?} from its workload identity, {SYSTEM_ROOTS:?} and file-root:PATH from this machine)",
                    sds.name
                )));
            }
        },
        (None, Some(ca)) => Trust::Roots(Arc::new(roots_from(ca)?)),
        (None, None) => Trust::Nothing,
    };
    Ok((trust, sans))
}

fn roots_from(ca: &DataSource) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca, "trusted CA")? {
        roots.add(cert)?;
    }
    Ok(roots)
}

fn san_matchers(v: &CertificateValidationContext) -> Result<Vec<SanMatch>, TlsError> {
    let mut out = Vec::new();
    for m in &v.match_typed_subject_alt_names {
        let pattern = m.matcher.as_ref().and_then(|m| m.match_pattern.as_ref());
        let uri = m.san_type == subject_alt_name_matcher::SanType::Uri as i32;
        let dns = m.san_type == subject_alt_name_matcher::SanType::Dns as i32;
        out.push(match (pattern, dns, uri) {
            (Some(string_matcher::MatchPattern::Exact(e)), true, _) => SanMatch::Dns(e.clone()),
            (Some(string_matcher::MatchPattern::Exact(e)), _, true) => SanMatch::UriExact(e.clone()),
            (Some(string_matcher::MatchPattern::Prefix(p)), _, true) => SanMatch::UriPrefix(p.clone()),
            _ => {
                return Err(TlsError::Unsupported(
                    "a subject alt name matcher other than DNS exact or URI exact/prefix".into(),
                ));
            }
        });
    }
    Ok(out)
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

fn is_name_mismatch(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

fn no_secret() -> rustls::Error {
    rustls::Error::General("the workload has no certificate yet (SDS ROOTCA)".into())
}

/// Verifies an upstream's certificate: its chain (unless nothing is trusted), then the
/// subject-alt-name conditions.
#[derive(Debug)]
struct PeerVerifier {
    /// None: the mesh's root, read at each handshake.
    fixed: Option<Arc<WebPkiServerVerifier>>,
    trust: Trust,
    sans: Vec<SanMatch>,
    provider: Arc<CryptoProvider>,
}

impl PeerVerifier {
    fn new(trust: Trust, sans: Vec<SanMatch>, provider: Arc<CryptoProvider>) -> Result<PeerVerifier, TlsError> {
        let fixed = match &trust {
            Trust::Roots(roots) => Some(
                WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Unsupported(format!("CA material ({e})")))?,
            ),
            _ => None,
        };
        Ok(PeerVerifier { fixed, trust, sans, provider })
    }

    fn verifier(&self) -> Result<Option<Arc<WebPkiServerVerifier>>, rustls::Error> {
        match &self.trust {
            Trust::Nothing => Ok(None),
            Trust::Roots(_) => Ok(self.fixed.clone()),
            Trust::Mesh(secrets) => secrets.current().map(|w| Some(w.server_verifier.clone())).ok_or_else(no_secret),
        }
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(inner) = self.verifier()? else { return Ok(ServerCertVerified::assertion()) };
        // The chain first (webpki checks the name last, so a name mismatch means the
        // chain is good): Envoy does not require the SNI among the certificate's names.
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(e) if !is_name_mismatch(&e) => return Err(e),
            _ => {}
        }
        if self.sans.is_empty() {
            return Ok(ServerCertVerified::assertion());
        }
        let uris = weft_tls::ca::spiffe_ids_der(end_entity);
        for san in &self.sans {
            let ok = match san {
                SanMatch::UriExact(e) => uris.iter().any(|u| u == e),
                SanMatch::UriPrefix(p) => uris.iter().any(|u| u.starts_with(p.as_str())),
                SanMatch::Dns(d) => ServerName::try_from(d.as_str())
                    .is_ok_and(|name| inner.verify_server_cert(end_entity, intermediates, &name, ocsp, now).is_ok()),
            };
            if ok {
                return Ok(ServerCertVerified::assertion());
            }
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
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

/// Verifies a downstream client's certificate against the trusted roots.
#[derive(Debug)]
struct ClientVerifier {
    /// For configured roots.
    fixed: Option<Arc<dyn ClientCertVerifier>>,
    trust: Trust,
    required: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientVerifier {
    fn new(trust: Trust, required: bool, provider: Arc<CryptoProvider>) -> Result<ClientVerifier, TlsError> {
        let fixed = match &trust {
            Trust::Roots(roots) => {
                let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
                let builder = if required { builder } else { builder.allow_unauthenticated() };
                Some(builder.build().map_err(|e| TlsError::Unsupported(format!("CA material ({e})")))?)
            }
            _ => None,
        };
        Ok(ClientVerifier { fixed, trust, required, provider })
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        !matches!(self.trust, Trust::Nothing) || self.required
    }

    fn client_auth_mandatory(&self) -> bool {
        self.required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match &self.trust {
            Trust::Nothing => Ok(ClientCertVerified::assertion()),
            Trust::Roots(_) => match &self.fixed {
                Some(v) => v.verify_client_cert(end_entity, intermediates, now),
                None => Err(no_secret()),
            },
            Trust::Mesh(secrets) => secrets.current().ok_or_else(no_secret)?.client_verifier.verify_client_cert(
                end_entity,
                intermediates,
                now,
            ),
        }
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
