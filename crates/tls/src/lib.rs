//! The TLS crypto provider weft's control plane and proxy share.
//!
//! The default build uses rustls on aws-lc-rs. Other providers (the FIPS-validated
//! AWS-LC module, OpenSSL 3) arrive as cargo features; whichever is built in is reported
//! by [`provider_info`], which `weft version` and the admin endpoints print.

pub mod ca;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// What a build uses for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderInfo {
    /// The provider, such as `rustls/aws-lc-rs`.
    pub name: &'static str,
    /// Whether the provider runs in FIPS mode, as the provider itself reports it.
    pub fips: bool,
    /// The cipher suites the provider offers, by IANA name, most preferred first.
    pub cipher_suites: Vec<String>,
    /// The key exchange groups it offers, most preferred first.
    pub key_exchange_groups: Vec<String>,
}

/// The name of this build's provider.
#[cfg(feature = "openssl")]
pub const PROVIDER_NAME: &str = "rustls/openssl";
/// The name of this build's provider.
#[cfg(all(feature = "fips", not(feature = "openssl")))]
pub const PROVIDER_NAME: &str = "rustls/aws-lc-rs-fips";
/// The name of this build's provider.
#[cfg(not(any(feature = "fips", feature = "openssl")))]
pub const PROVIDER_NAME: &str = "rustls/aws-lc-rs";

/// The crypto provider of this build: rustls on aws-lc-rs by default, on the FIPS
/// validated AWS-LC module with the `fips` feature (only FIPS-approved suites and key
/// exchange groups), or on OpenSSL 3 with the `openssl` feature.
pub fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "openssl")]
    let p = rustls_openssl::default_provider();
    #[cfg(all(feature = "fips", not(feature = "openssl")))]
    let p = rustls::crypto::default_fips_provider();
    #[cfg(not(any(feature = "fips", feature = "openssl")))]
    let p = rustls::crypto::aws_lc_rs::default_provider();
    Arc::new(p)
}

/// Why FIPS mode cannot be entered.
#[derive(Debug, thiserror::Error)]
#[error(
    "FIPS mode was asked for, but the crypto provider {0} does not run in FIPS mode (build with --features fips, or with --features openssl on a host whose OpenSSL runs its FIPS provider)"
)]
pub struct NotFips(pub &'static str);

/// Checks that the provider runs in FIPS mode, for processes started in FIPS mode.
pub fn require_fips() -> Result<(), NotFips> {
    if provider().fips() { Ok(()) } else { Err(NotFips(PROVIDER_NAME)) }
}

/// SHA-256 of `data` in lower-case hex, computed by this build's crypto provider.
pub fn sha256_hex(data: &[u8]) -> String {
    use rustls::crypto::hash::HashAlgorithm;
    let hash = provider()
        .cipher_suites
        .iter()
        .filter_map(|s| s.tls13())
        .map(|s| s.common.hash_provider)
        .find(|h| h.algorithm() == HashAlgorithm::SHA256)
        .map(|h| h.hash(data));
    hash.map(|h| h.as_ref().iter().map(|b| format!("{b:02x}")).collect()).unwrap_or_default()
}

/// Describes the crypto provider of this build.
pub fn provider_info() -> ProviderInfo {
    let p = provider();
    ProviderInfo {
        name: PROVIDER_NAME,
        fips: p.fips(),
        cipher_suites: p.cipher_suites.iter().map(|s| format!("{:?}", s.suite())).collect(),
        key_exchange_groups: p.kx_groups.iter().map(|g| format!("{:?}", g.name())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_the_standard_digest() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    /// A TLS 1.3 handshake between a client and a server built on this build's provider.
    #[test]
    fn the_provider_completes_a_handshake() {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
        let cert = rcgen::generate_simple_self_signed(vec!["weft.test".to_owned()]).unwrap_or_else(|e| panic!("{e}"));
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(vec![der.clone()], key))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap_or_else(|e| panic!("{e}"));
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|e| panic!("{e}"));
        let name = ServerName::try_from("weft.test").unwrap_or_else(|e| panic!("{e}"));
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap_or_else(|e| panic!("{e}"));
        let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap_or_else(|e| panic!("{e}"));
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap_or_else(|e| panic!("{e}"));
            s.read_tls(&mut buf.as_slice()).unwrap_or_else(|e| panic!("{e}"));
            s.process_new_packets().unwrap_or_else(|e| panic!("{e}"));
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap_or_else(|e| panic!("{e}"));
            c.read_tls(&mut buf.as_slice()).unwrap_or_else(|e| panic!("{e}"));
            c.process_new_packets().unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    }

    #[cfg(feature = "fips")]
    #[test]
    fn the_fips_build_runs_the_validated_module_with_approved_algorithms_only() {
        let info = provider_info();
        assert_eq!(info.name, "rustls/aws-lc-rs-fips");
        assert!(info.fips, "the FIPS module reports it is not in FIPS mode");
        assert!(require_fips().is_ok());
        assert!(!info.cipher_suites.iter().any(|s| s.contains("CHACHA20")), "{:?}", info.cipher_suites);
        assert!(!info.key_exchange_groups.iter().any(|g| g == "X25519"), "{:?}", info.key_exchange_groups);
    }

    #[cfg(feature = "openssl")]
    #[test]
    fn the_openssl_build_reports_openssl_and_its_fips_state() {
        let info = provider_info();
        assert_eq!(info.name, "rustls/openssl");
        // This host's OpenSSL does not run its FIPS provider, so FIPS mode is refused.
        assert_eq!(info.fips, require_fips().is_ok());
        assert!(info.cipher_suites.iter().any(|s| s == "TLS13_AES_128_GCM_SHA256"), "{:?}", info.cipher_suites);
    }

    #[cfg(not(any(feature = "fips", feature = "openssl")))]
    #[test]
    fn the_default_build_refuses_fips_mode() {
        let e = require_fips().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("rustls/aws-lc-rs does not run in FIPS mode"), "{e}");
    }

    #[cfg(not(any(feature = "fips", feature = "openssl")))]
    #[test]
    fn the_default_build_offers_tls13_and_post_quantum_key_exchange() {
        let info = provider_info();
        assert_eq!(info.name, "rustls/aws-lc-rs");
        assert!(!info.fips, "the default build is not the FIPS module");
        assert!(info.cipher_suites.iter().any(|s| s == "TLS13_AES_128_GCM_SHA256"), "{:?}", info.cipher_suites);
        assert!(info.key_exchange_groups.iter().any(|g| g == "X25519MLKEM768"), "{:?}", info.key_exchange_groups);
    }
}
