//! The weft proxy: sidecar and gateway data plane.
//!
//! Knows only xDS, never Istio YAML. Listeners, HTTP/TCP proxying, routing, load
//! balancing, resilience, mTLS, authorization, metrics and the admin endpoint live here.
