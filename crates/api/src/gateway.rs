//! Kubernetes Gateway API types (gateway.networking.k8s.io), from the `gateway-api` crate.

pub use gateway_api::gateways::GatewaySpec;
pub use gateway_api::grpcroutes::GrpcRouteSpec;
pub use gateway_api::httproutes::HttpRouteSpec;
pub use gateway_api::referencegrants::ReferenceGrantSpec;
