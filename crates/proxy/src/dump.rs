//! `/config_dump` as Envoy writes it: one entry per xDS type with the accepted
//! resources, their versions, and the resources themselves as proto3 JSON.

use serde_json::{Value, json};
use weft_envoy::to_json;

use crate::Shared;
use crate::state::types;

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
