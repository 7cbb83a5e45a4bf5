//! `/config_dump` as Envoy writes it: one entry per xDS type with the accepted
//! resources, their versions, and the resources themselves as proto3 JSON.

use std::sync::OnceLock;

use envoy_types::pb::google::protobuf::Any;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Value, json};

use crate::Shared;
use crate::state::types;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy-descriptors.bin"));

fn pool() -> Option<&'static DescriptorPool> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| if DESCRIPTORS.is_empty() { None } else { DescriptorPool::decode(DESCRIPTORS).ok() }).as_ref()
}

/// A resource as proto3 JSON with Envoy's field names, `@type` first.
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

/// The whole dump; `resource` narrows it to one section (`dynamic_active_clusters`, ...).
pub fn config_dump(shared: &Shared, resource: Option<&str>) -> Value {
    let Ok(store) = shared.store.lock() else { return json!({"configs": []}) };
    let version = |t: &str| store.versions.get(t).cloned().unwrap_or_default();
    let node = &shared.config.node;
    let bootstrap = json!({
        "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
        "bootstrap": {
            "node": {
                "id": node.id,
                "cluster": node.cluster,
                "user_agent_name": "weft",
                "metadata": {
                    "NAMESPACE": node.namespace,
                    "LABELS": node.labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<String, Value>>(),
                    "INTERCEPTION_MODE": node.interception_mode,
                },
            },
            "dynamic_resources": {"ads_config": {"api_type": match shared.config.protocol {
                crate::XdsProtocol::Delta => "DELTA_GRPC",
                crate::XdsProtocol::StateOfTheWorld => "GRPC",
            }}},
        },
    });
    let clusters: Vec<Value> = store
        .raw(types::CLUSTER)
        .into_iter()
        .map(|(_, v, any)| json!({"version_info": v, "cluster": to_json(any)}))
        .collect();
    let listeners: Vec<Value> = store
        .raw(types::LISTENER)
        .into_iter()
        .map(|(name, v, any)| json!({"name": name, "active_state": {"version_info": v, "listener": to_json(any)}}))
        .collect();
    let routes: Vec<Value> = store
        .raw(types::ROUTE)
        .into_iter()
        .map(|(_, v, any)| json!({"version_info": v, "route_config": to_json(any)}))
        .collect();
    let endpoints: Vec<Value> = store
        .raw(types::ENDPOINT)
        .into_iter()
        .map(|(_, v, any)| json!({"version_info": v, "endpoint_config": to_json(any)}))
        .collect();
    let sections = [
        (
            "dynamic_active_clusters",
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            clusters,
            version(types::CLUSTER),
        ),
        (
            "dynamic_listeners",
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            listeners,
            version(types::LISTENER),
        ),
        ("dynamic_route_configs", "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", routes, String::new()),
        (
            "dynamic_endpoint_configs",
            "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
            endpoints,
            String::new(),
        ),
    ];
    if let Some(wanted) = resource {
        let configs: Vec<Value> =
            sections.into_iter().filter(|(key, ..)| *key == wanted).flat_map(|(_, _, items, _)| items).collect();
        return json!({ "configs": configs });
    }
    let mut configs = vec![bootstrap];
    for (key, type_url, items, version) in sections {
        let mut section = serde_json::Map::new();
        section.insert("@type".into(), Value::String(type_url.into()));
        if !version.is_empty() {
            section.insert("version_info".into(), Value::String(version));
        }
        section.insert(key.into(), Value::Array(items));
        configs.push(Value::Object(section));
    }
    json!({ "configs": configs })
}
