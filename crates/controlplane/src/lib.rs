//! The weft control plane.
//!
//! Owns the service registry built from the mesh's configuration, the pure translation
//! of that configuration into Envoy v3 resources per proxy, and the ADS server. It must
//! not know how the proxy works inside: its only contract with the data plane is
//! standard Envoy v3 xDS.

pub mod ads;
pub mod ca;
pub mod cache;
pub mod debug;
pub mod grpc;
pub mod held;
pub mod memory;
pub mod mesh;
pub mod metrics;
pub mod node;
pub mod registry;
pub mod server;
pub mod snapshot;
pub mod testing;
pub mod translate;
pub mod wire;
