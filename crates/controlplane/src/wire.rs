//! xDS responses written straight from the shared encoded resources.
//!
//! A proxy's first response at 10 000 services carries 30 000 resources, 14 MB. Built as
//! a prost message, each resource is first copied out of the translation (its `Any`, its
//! name, its version) and then encoded again: tens of thousands of short-lived
//! allocations per proxy, which a thousand proxies interleave with the long-lived
//! configuration until the heap is more holes than data. Here a response is encoded
//! once, into one buffer of its exact size: its own fields by prost, then each resource
//! as an entry of the repeated `resources` field, written with prost's encoding
//! functions from the shared `Any`. Concatenated encodings of a message are that
//! message merged, so the result decodes as the whole message does (its fields in
//! another order than prost's, and of the same length).

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use hyper::body::Bytes;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len, message};
use tonic::Status;

use crate::cache::Encoded;
use crate::grpc::frame_with;

/// `resources` in both responses (`repeated Any` and `repeated Resource`).
const RESOURCES: u32 = 2;
/// `Resource.version`, `Resource.resource` and `Resource.name`.
const RESOURCE_VERSION: u32 = 1;
const RESOURCE_RESOURCE: u32 = 2;
const RESOURCE_NAME: u32 = 3;

/// A resource's version in a delta response: its hash, in hex.
pub fn version(hash: u64) -> [u8; 16] {
    let mut out = [0; 16];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((hash >> ((15 - i) * 4)) & 0xf) as usize];
    }
    out
}

fn str_len(tag: u32, value: &[u8]) -> usize {
    key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
}

fn put_str(tag: u32, value: &[u8], buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(value);
}

/// The length of one `Resource` (name, version, the resource itself).
fn resource_len(name: &str, e: &Encoded) -> usize {
    str_len(RESOURCE_VERSION, &[0; 16])
        + message::encoded_len(RESOURCE_RESOURCE, &*e.any)
        + str_len(RESOURCE_NAME, name.as_bytes())
}

/// A delta response, framed for gRPC: `fields` (everything but its resources), then
/// `resources` with their names and versions.
pub fn delta(fields: &DeltaDiscoveryResponse, resources: &[(&Arc<str>, &Encoded)]) -> Result<Bytes, Status> {
    let entries: usize = resources
        .iter()
        .map(|(name, e)| {
            let len = resource_len(name, e);
            key_len(RESOURCES) + encoded_len_varint(len as u64) + len
        })
        .sum();
    frame_with(fields.encoded_len() + entries, |buf| {
        fields.encode(buf)?;
        for (name, e) in resources {
            encode_key(RESOURCES, WireType::LengthDelimited, buf);
            encode_varint(resource_len(name, e) as u64, buf);
            put_str(RESOURCE_VERSION, &version(e.hash), buf);
            message::encode(RESOURCE_RESOURCE, &*e.any, buf);
            put_str(RESOURCE_NAME, name.as_bytes(), buf);
        }
        Ok(())
    })
}

/// A state-of-the-world response, framed for gRPC: `fields` (everything but its
/// resources), then `resources`.
pub fn sotw(fields: &DiscoveryResponse, resources: &[&Encoded]) -> Result<Bytes, Status> {
    let entries: usize = resources.iter().map(|e| message::encoded_len(RESOURCES, &*e.any)).sum();
    frame_with(fields.encoded_len() + entries, |buf| {
        fields.encode(buf)?;
        for e in resources {
            message::encode(RESOURCES, &*e.any, buf);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::ControlPlane;
    use envoy_types::pb::envoy::service::discovery::v3::Resource;
    use envoy_types::pb::google::protobuf::Any;

    fn encoded(type_url: &str, value: &[u8], hash: u64) -> Encoded {
        Encoded { any: Arc::new(Any { type_url: type_url.into(), value: value.to_vec() }), hash }
    }

    /// The message in a gRPC frame.
    fn unframe<M: Message + Default>(framed: &Bytes) -> M {
        let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
        assert_eq!((framed[0], framed.len()), (0, 5 + len));
        M::decode(&framed[5..]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_delta_response_decodes_as_the_message_prost_would_build() {
        let a = encoded("type.googleapis.com/x", b"first", 0x0123_4567_89ab_cdef);
        let b = encoded("type.googleapis.com/x", &[7; 300], 42);
        let (na, nb): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("outbound|80||b.default.svc.cluster.local"));
        let fields = DeltaDiscoveryResponse {
            system_version_info: "12".into(),
            type_url: "type.googleapis.com/x".into(),
            removed_resources: vec!["gone".into()],
            nonce: "3-4".into(),
            control_plane: Some(ControlPlane { identifier: "weft".into() }),
            ..Default::default()
        };
        let framed = delta(&fields, &[(&na, &a), (&nb, &b)]).unwrap_or_else(|e| panic!("{e}"));
        let expected = DeltaDiscoveryResponse {
            resources: [(&na, &a), (&nb, &b)]
                .iter()
                .map(|(n, e)| Resource {
                    name: n.to_string(),
                    version: format!("{:016x}", e.hash),
                    resource: Some((*e.any).clone()),
                    ..Default::default()
                })
                .collect(),
            ..fields
        };
        assert_eq!(unframe::<DeltaDiscoveryResponse>(&framed), expected);
    }

    #[test]
    fn a_state_of_the_world_response_decodes_as_the_message_prost_would_build() {
        let a = encoded("type.googleapis.com/y", b"one", 1);
        let b = encoded("type.googleapis.com/y", &[1; 200], 2);
        let fields = DiscoveryResponse { version_info: "7-abc".into(), nonce: "1-1".into(), ..Default::default() };
        let framed = sotw(&fields, &[&a, &b]).unwrap_or_else(|e| panic!("{e}"));
        let expected = DiscoveryResponse { resources: vec![(*a.any).clone(), (*b.any).clone()], ..fields };
        assert_eq!(unframe::<DiscoveryResponse>(&framed), expected);
        assert_eq!(framed.len(), 5 + expected.encoded_len(), "the same bytes as prost's");
    }
}
