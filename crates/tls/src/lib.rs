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

/// The crypto provider of this build.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
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
        name: "rustls/aws-lc-rs",
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

    #[test]
    fn the_default_build_offers_tls13_and_post_quantum_key_exchange() {
        let info = provider_info();
        assert_eq!(info.name, "rustls/aws-lc-rs");
        assert!(!info.fips, "the default build is not the FIPS module");
        assert!(info.cipher_suites.iter().any(|s| s == "TLS13_AES_128_GCM_SHA256"), "{:?}", info.cipher_suites);
        assert!(info.key_exchange_groups.iter().any(|g| g == "X25519MLKEM768"), "{:?}", info.key_exchange_groups);
    }
}
