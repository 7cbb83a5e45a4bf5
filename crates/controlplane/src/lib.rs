//! The weft control plane.
//!
//! Owns the service registry built from a `MeshSnapshot`, the pure translation of that
//! snapshot into Envoy v3 resources per proxy, the ADS server, and the certificate
//! authority. It must not know how the proxy works inside: its only contract with the
//! data plane is standard Envoy v3 xDS.
