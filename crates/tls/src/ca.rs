//! The mesh's certificate authority: a root of trust that signs workload certificates
//! carrying SPIFFE identities (`spiffe://<trust-domain>/ns/<namespace>/sa/<account>`).
//!
//! On first start it creates a self-signed root and keeps it in its directory (the key
//! readable by its owner only); or it uses operator-provided material laid out as
//! Istio's plug-in CA (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`).
//! Whatever a certificate signing request asks for, the identity in the certificate is
//! the one the CA was told the caller has.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// Istio's default workload certificate lifetime.
pub const DEFAULT_WORKLOAD_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Longest workload certificate the CA signs.
pub const MAX_WORKLOAD_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Lifetime of a self-signed root.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start a little in the past, for clocks that differ slightly.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Self-signed root files.
const ROOT_CERT: &str = "root-cert.pem";
const ROOT_KEY: &str = "root-key.pem";
/// Istio's plug-in CA files.
const PLUGIN_CERT: &str = "ca-cert.pem";
const PLUGIN_KEY: &str = "ca-key.pem";
const PLUGIN_CHAIN: &str = "cert-chain.pem";

/// Why the CA cannot start or sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file cannot be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// CA material is not usable.
    #[error("{path}: {reason} (Istio's plug-in CA needs ca-cert.pem, ca-key.pem, root-cert.pem and cert-chain.pem)")]
    Material { path: PathBuf, reason: String },
    /// A certificate signing request is malformed or its signature is wrong.
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
    /// Not a SPIFFE id of the form `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`.
    #[error("{0:?} is not a workload SPIFFE id (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)")]
    Identity(String),
    /// Signing failed.
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// A workload identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// `cluster.local`.
    pub trust_domain: String,
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's service account.
    pub service_account: String,
}

impl SpiffeId {
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`.
    pub fn uri(&self) -> String {
        format!("spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }

    /// Parses a workload SPIFFE id.
    pub fn parse(uri: &str) -> Result<SpiffeId, CaError> {
        let bad = || CaError::Identity(uri.to_owned());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => Ok(SpiffeId {
                trust_domain: (*td).to_owned(),
                namespace: (*ns).to_owned(),
                service_account: (*sa).to_owned(),
            }),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri())
    }
}

/// Where the signing material came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A root this CA created (or created earlier) in this directory.
    SelfSigned(PathBuf),
    /// Istio's plug-in CA files in this directory.
    PlugIn(PathBuf),
}

/// The certificate authority.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// PEM certificates from the signing certificate up to the root, in order.
    chain: Vec<String>,
    root: String,
    trust_domain: String,
    source: Source,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("source", &self.source)
            .field("chain_length", &self.chain.len())
            .finish()
    }
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Io { path: path.to_owned(), source })
}

fn material(path: &Path, reason: impl std::fmt::Display) -> CaError {
    CaError::Material { path: path.to_owned(), reason: reason.to_string() }
}

/// Writes a file readable and writable by its owner only, replacing any previous one;
/// a directory it has to create is its owner's only too.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(parent) = path.parent()
        && !parent.exists()
    {
        std::fs::create_dir_all(parent)?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())
}

fn pem_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            current.clear();
        }
        current.push_str(line);
        current.push('\n');
        if line.starts_with("-----END ") {
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

impl CertificateAuthority {
    /// Uses Istio's plug-in CA files in `dir` when `ca-cert.pem` is there; otherwise the
    /// self-signed root kept in `dir`, created on first use.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<CertificateAuthority, CaError> {
        if dir.join(PLUGIN_CERT).exists() {
            return Self::plug_in(dir, trust_domain);
        }
        std::fs::create_dir_all(dir).map_err(|source| CaError::Io { path: dir.to_owned(), source })?;
        let (cert_path, key_path) = (dir.join(ROOT_CERT), dir.join(ROOT_KEY));
        if !cert_path.exists() {
            let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
            let now = OffsetDateTime::now_utc();
            let mut params = CertificateParams::default();
            let mut name = DistinguishedName::new();
            name.push(DnType::OrganizationName, trust_domain);
            name.push(DnType::CommonName, "weft root CA");
            params.distinguished_name = name;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages =
                vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
            params.not_before = now - CLOCK_SKEW;
            params.not_after = now + ROOT_LIFETIME;
            let cert = params.self_signed(&key).map_err(|e| CaError::Sign(e.to_string()))?;
            write_private(&key_path, &key.serialize_pem())
                .map_err(|source| CaError::Io { path: key_path.clone(), source })?;
            std::fs::write(&cert_path, cert.pem()).map_err(|source| CaError::Io { path: cert_path.clone(), source })?;
        }
        let root = read(&cert_path)?;
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| material(&key_path, e))?;
        let issuer = Issuer::from_ca_cert_pem(&root, key).map_err(|e| material(&cert_path, e))?;
        Ok(CertificateAuthority {
            issuer,
            chain: vec![root.clone()],
            root,
            trust_domain: trust_domain.to_owned(),
            source: Source::SelfSigned(dir.to_owned()),
        })
    }

    fn plug_in(dir: &Path, trust_domain: &str) -> Result<CertificateAuthority, CaError> {
        let (cert_path, key_path) = (dir.join(PLUGIN_CERT), dir.join(PLUGIN_KEY));
        let (root_path, chain_path) = (dir.join(ROOT_CERT), dir.join(PLUGIN_CHAIN));
        let cert = read(&cert_path)?;
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| material(&key_path, e))?;
        let root = read(&root_path)?;
        if pem_blocks(&root).is_empty() {
            return Err(material(&root_path, "no PEM certificate"));
        }
        // cert-chain.pem holds the signing certificate and its issuers up to the root.
        let chain = pem_blocks(&read(&chain_path)?);
        if chain.is_empty() {
            return Err(material(&chain_path, "no PEM certificate"));
        }
        let issuer = Issuer::from_ca_cert_pem(&cert, key).map_err(|e| material(&cert_path, e))?;
        let mut full = chain;
        let root_block = pem_blocks(&root).remove(0);
        if full.last().map(|c| c.trim()) != Some(root_block.trim()) {
            full.push(root_block);
        }
        Ok(CertificateAuthority {
            issuer,
            chain: full,
            root,
            trust_domain: trust_domain.to_owned(),
            source: Source::PlugIn(dir.to_owned()),
        })
    }

    /// The root certificate(s), PEM: what workloads trust.
    pub fn root_pem(&self) -> &str {
        &self.root
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Where the signing material came from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Signs a workload certificate for `identity` with the public key of `csr_pem`, valid
    /// for `lifetime` (at most [`MAX_WORKLOAD_LIFETIME`]). The names the request asks for
    /// are ignored: the certificate carries `identity` only. Returns the PEM chain, leaf
    /// first and root last, as Istio's CSR API answers.
    pub fn sign(&self, csr_pem: &str, identity: &SpiffeId, lifetime: Duration) -> Result<Vec<String>, CaError> {
        if identity.trust_domain != self.trust_domain {
            return Err(CaError::Identity(identity.uri()));
        }
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::Csr(e.to_string()))?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.subject_alt_names =
            vec![SanType::URI(identity.uri().try_into().map_err(|e: rcgen::Error| CaError::Identity(e.to_string()))?)];
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + lifetime.min(MAX_WORKLOAD_LIFETIME);
        params.use_authority_key_identifier_extension = true;
        csr.params = params;
        let leaf = csr.signed_by(&self.issuer).map_err(|e| CaError::Sign(e.to_string()))?;
        let mut out = vec![leaf.pem()];
        out.extend(self.chain.iter().cloned());
        Ok(out)
    }
}

impl CertificateAuthority {
    /// A serving certificate for the control plane itself (its xDS and CA port), valid
    /// for these DNS names and IP addresses: (PEM chain leaf to root, PEM key).
    pub fn server_certificate(
        &self,
        dns_names: &[&str],
        ips: &[std::net::IpAddr],
        lifetime: Duration,
    ) -> Result<(String, String), CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let mut params = CertificateParams::default();
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName((*name).try_into().map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?));
        }
        params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + lifetime;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(|e| CaError::Sign(e.to_string()))?;
        let mut chain = cert.pem();
        for c in &self.chain {
            chain.push_str(c);
        }
        Ok((chain, key.serialize_pem()))
    }
}

/// A new key pair and a certificate signing request for `identity`, both PEM: what a
/// proxy sends the CA.
pub fn key_and_csr(identity: &SpiffeId) -> Result<(String, String), CaError> {
    let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.subject_alt_names =
        vec![SanType::URI(identity.uri().try_into().map_err(|e: rcgen::Error| CaError::Identity(e.to_string()))?)];
    let csr = params.serialize_request(&key).map_err(|e| CaError::Sign(e.to_string()))?;
    let csr = csr.pem().map_err(|e| CaError::Sign(e.to_string()))?;
    Ok((key.serialize_pem(), csr))
}

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// SPIFFE ids (URI SANs).
    pub spiffe_ids: Vec<String>,
    /// Serial number, hex.
    pub serial: String,
    /// Valid from, seconds since the epoch.
    pub not_before: i64,
    /// Valid until, seconds since the epoch.
    pub not_after: i64,
}

/// Reads the first certificate of a PEM text.
pub fn certificate_info(cert_pem: &str) -> Option<CertificateInfo> {
    let block = pem_blocks(cert_pem).into_iter().next()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(block.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(CertificateInfo {
        spiffe_ids: spiffe_ids(&block),
        serial: cert.raw_serial_as_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The SPIFFE ids (URI SANs) of a DER certificate.
pub fn spiffe_ids_der(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::FromDer;
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) else { return Vec::new() };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with("spiffe://") => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}

/// The SPIFFE ids (URI SANs) of a PEM certificate.
pub fn spiffe_ids(cert_pem: &str) -> Vec<String> {
    let Some(block) = pem_blocks(cert_pem).into_iter().next() else { return Vec::new() };
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(block.as_bytes()) else { return Vec::new() };
    spiffe_ids_der(&pem.contents)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, UnixTime};

    use super::*;

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId { trust_domain: "cluster.local".into(), namespace: ns.into(), service_account: sa.into() }
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        CertificateDer::from(parsed.contents)
    }

    /// Verifies `chain` (leaf first) as a client certificate against `root`, as mTLS will.
    fn verifies(chain: &[String], root: &str) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        for block in pem_blocks(root) {
            roots.add(der(&block)).unwrap_or_else(|e| panic!("{e}"));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let intermediates: Vec<_> = chain[1..].iter().map(|c| der(c)).collect();
        verifier.verify_client_cert(&der(&chain[0]), &intermediates, UnixTime::now()).is_ok()
    }

    #[test]
    fn a_root_is_created_once_kept_private_and_reused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local").unwrap_or_else(|e| panic!("{e}"));
        let mode = std::fs::metadata(dir.path().join(ROOT_KEY)).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        assert_eq!(mode, 0o600);
        let again = CertificateAuthority::load_or_create(dir.path(), "cluster.local").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ca.root_pem(), again.root_pem(), "a restart keeps the root of trust");
        assert_eq!(again.source(), &Source::SelfSigned(dir.path().to_owned()));
    }

    #[test]
    fn workload_certificates_carry_the_identity_the_ca_decides() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local").unwrap_or_else(|e| panic!("{e}"));
        // The request asks for another identity; the certificate carries the caller's.
        let (_key, csr) = key_and_csr(&id("default", "admin")).unwrap_or_else(|e| panic!("{e}"));
        let chain = ca.sign(&csr, &id("shop", "reviews"), DEFAULT_WORKLOAD_LIFETIME).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spiffe_ids(&chain[0]), ["spiffe://cluster.local/ns/shop/sa/reviews"]);
        assert_eq!(chain.len(), 2, "leaf and root");
        assert!(verifies(&chain, ca.root_pem()));
        let other = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let stranger =
            CertificateAuthority::load_or_create(other.path(), "cluster.local").unwrap_or_else(|e| panic!("{e}"));
        assert!(!verifies(&chain, stranger.root_pem()), "another root does not vouch for it");
        // Lifetime: 24 hours by default.
        let (_, parsed) = x509_parser::pem::parse_x509_pem(chain[0].as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let cert = parsed.parse_x509().unwrap_or_else(|e| panic!("{e}"));
        let validity = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(validity, (24 * 3600 + 60) as i64);
    }

    #[test]
    fn bad_requests_and_foreign_trust_domains_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local").unwrap_or_else(|e| panic!("{e}"));
        let bad = ca.sign(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            &id("a", "b"),
            DEFAULT_WORKLOAD_LIFETIME,
        );
        assert!(matches!(bad, Err(CaError::Csr(_))), "{bad:?}");
        let (_, csr) = key_and_csr(&id("a", "b")).unwrap_or_else(|e| panic!("{e}"));
        let foreign = SpiffeId { trust_domain: "other.example".into(), ..id("a", "b") };
        assert!(matches!(ca.sign(&csr, &foreign, DEFAULT_WORKLOAD_LIFETIME), Err(CaError::Identity(_))));
        assert!(SpiffeId::parse("spiffe://td/ns/a/sa/b").is_ok());
        assert!(SpiffeId::parse("spiffe://td/ns/a").is_err());
        assert!(SpiffeId::parse("https://td/ns/a/sa/b").is_err());
    }

    #[test]
    fn istios_plug_in_ca_signs_under_the_operators_root() {
        // An operator's root and intermediate, laid out as Istio's plug-in CA.
        let root_key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let mut root_params = CertificateParams::default();
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.distinguished_name.push(DnType::CommonName, "operator root");
        root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let root = root_params.self_signed(&root_key).unwrap_or_else(|e| panic!("{e}"));
        let root_issuer = Issuer::new(root_params, root_key);
        let ca_key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "cluster intermediate");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca_params.signed_by(&ca_key, &root_issuer).unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let write =
            |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{e}"));
        write(PLUGIN_CERT, &ca_cert.pem());
        write(PLUGIN_KEY, &ca_key.serialize_pem());
        write(ROOT_CERT, &root.pem());
        write(PLUGIN_CHAIN, &format!("{}{}", ca_cert.pem(), root.pem()));

        let ca = CertificateAuthority::load_or_create(dir.path(), "cluster.local").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ca.source(), &Source::PlugIn(dir.path().to_owned()));
        let (_, csr) = key_and_csr(&id("default", "web")).unwrap_or_else(|e| panic!("{e}"));
        let chain = ca.sign(&csr, &id("default", "web"), DEFAULT_WORKLOAD_LIFETIME).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(chain.len(), 3, "leaf, intermediate, root");
        assert!(verifies(&chain, &root.pem()));
        assert!(!dir.path().join(ROOT_KEY).exists(), "a plug-in CA creates nothing of its own");
    }
}
