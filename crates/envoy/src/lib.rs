//! Envoy v3 API helpers shared by the control plane and the proxy.
//!
//! Envoy's resources are protobufs; users read them as the JSON Envoy's admin endpoint
//! writes (`/config_dump`). [`to_json`] renders any resource that way, with Envoy's
//! field names, from the descriptors the `envoy-types` crate ships.

use std::sync::OnceLock;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy-descriptors.bin"));

fn pool() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| if DESCRIPTORS.is_empty() { None } else { DescriptorPool::decode(DESCRIPTORS).ok() }).as_ref()
}

/// A resource packed in an `Any` as proto3 JSON with Envoy's field names, `@type` first.
/// Without descriptors (a vendored build), only `@type` is rendered.
pub fn to_json(any: &Any) -> Value {
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    let rendered = pool().and_then(|pool| {
        let descriptor = pool.get_message_by_name(type_name)?;
        let message = DynamicMessage::decode(descriptor, any.value.as_slice()).ok()?;
        let options = SerializeOptions::new().use_proto_field_name(true).skip_default_fields(true);
        let mut out = serde_json::Serializer::new(Vec::new());
        message.serialize_with_options(&mut out, &options).ok()?;
        serde_json::from_slice::<Value>(&out.into_inner()).ok()
    });
    let mut object = serde_json::Map::new();
    object.insert("@type".into(), Value::String(any.type_url.clone()));
    if let Some(Value::Object(fields)) = rendered {
        object.extend(fields);
    }
    Value::Object(object)
}

/// A typed resource as Envoy's JSON.
pub fn message_to_json<M: Message + prost::Name>(message: &M) -> Value {
    to_json(&Any { type_url: M::type_url(), value: message.encode_to_vec() })
}

/// Istio's certificate service messages (`istio.v1.auth`), as its proto defines them.
pub mod stats;

pub mod istio_ca {
    use envoy_types::pb::google::protobuf::Struct;

    /// The gRPC method path of `CreateCertificate`.
    pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

    /// `IstioCertificateRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct IstioCertificateRequest {
        /// PEM-encoded certificate signing request.
        #[prost(string, tag = "1")]
        pub csr: String,
        /// Requested lifetime, in seconds (0: the default).
        #[prost(int64, tag = "3")]
        pub validity_duration: i64,
        /// Optional metadata.
        #[prost(message, optional, tag = "4")]
        pub metadata: Option<Struct>,
    }

    /// `IstioCertificateResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct IstioCertificateResponse {
        /// PEM certificates, leaf first, root last.
        #[prost(string, repeated, tag = "1")]
        pub cert_chain: Vec<String>,
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::google::protobuf::Duration;

    #[test]
    fn resources_render_with_envoys_field_names() {
        let cluster = Cluster {
            name: "outbound|9080||reviews.default.svc.cluster.local".into(),
            connect_timeout: Some(Duration { seconds: 10, nanos: 0 }),
            ..Default::default()
        };
        let json = super::message_to_json(&cluster);
        assert_eq!(json["@type"], "type.googleapis.com/envoy.config.cluster.v3.Cluster");
        assert_eq!(json["name"], "outbound|9080||reviews.default.svc.cluster.local");
        assert_eq!(json["connect_timeout"], "10s");
    }
}
