//! Istio's resource types (networking, security, telemetry, extensions), generated from
//! Istio's published CRDs by `scripts/gen-istio-api.py`.

pub mod types;

pub use types::*;
