//! Who is asking: a proxy's identity, read from its xDS node the way Istio's proxies
//! present it (`sidecar~10.0.0.1~reviews-v1.default~default.svc.cluster.local` plus
//! metadata), so a plain Envoy bootstrap works.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

/// What a proxy does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A workload's sidecar.
    Sidecar,
    /// A gateway (`router` in Istio's node ids).
    Gateway,
    /// A gRPC application using xDS directly (no proxy).
    Proxyless,
}

impl Role {
    /// The word Istio uses in node ids.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sidecar => "sidecar",
            Role::Gateway => "router",
            Role::Proxyless => "proxyless",
        }
    }
}

/// A proxy's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyIdentity {
    /// The node id as sent.
    pub id: String,
    /// Sidecar, gateway or proxyless client.
    pub role: Role,
    /// The proxy's IP address (from the node id).
    pub ip: String,
    /// The workload name (`WORKLOAD_NAME`, or the first part of the id's name).
    pub workload: String,
    /// The namespace (`NAMESPACE`, or the id's).
    pub namespace: String,
    /// The workload's labels (`LABELS`).
    pub labels: BTreeMap<String, String>,
    /// The service account (`SERVICE_ACCOUNT`).
    pub service_account: String,
    /// `INTERCEPTION_MODE` (`REDIRECT`, `TPROXY` or `NONE`).
    pub interception_mode: String,
    /// The control-plane revision the proxy asks for (`REVISION`, else its `istio.io/rev` label).
    pub revision: String,
    /// `ISTIO_VERSION`, when sent.
    pub istio_version: String,
    /// `CLUSTER_ID`: the cluster the workload runs in (Istio's default `Kubernetes`).
    pub cluster_id: String,
    /// The proxy has the SDS secrets `default` and `ROOTCA` (node metadata `SDS: true`,
    /// or xDS over mutual TLS with a workload certificate): mutual TLS is configured for
    /// it. A proxy without them is sent plaintext configuration only.
    pub sds: bool,
}

/// The node could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The request carried no node.
    #[error("the first request carried no node: set node.id in the proxy's bootstrap")]
    Missing,
    /// The node id is not in Istio's form.
    #[error("node id {0:?} is not TYPE~IP~NAME.NAMESPACE~NAMESPACE.svc.cluster.local (TYPE: sidecar or router)")]
    BadId(String),
}

impl ProxyIdentity {
    /// Reads the identity from a node. gRPC's xDS clients are recognised by their user
    /// agent (or `GENERATOR: grpc` metadata) and may use any id.
    pub fn from_node(node: Option<&Node>) -> Result<Self, NodeError> {
        let node = node.ok_or(NodeError::Missing)?;
        let meta = node.metadata.as_ref();
        let text = |key: &str| meta.and_then(|m| m.fields.get(key)).and_then(as_string).unwrap_or_default();
        let proxyless = node.user_agent_name.starts_with("gRPC")
            || node.user_agent_name.contains("grpc")
            || text("GENERATOR") == "grpc";
        let parts: Vec<&str> = node.id.split('~').collect();
        let (role, ip, name_ns) = match parts.as_slice() {
            [kind, ip, name, _domain] => {
                let role = match *kind {
                    "sidecar" => Role::Sidecar,
                    "router" => Role::Gateway,
                    _ if proxyless => Role::Proxyless,
                    _ => return Err(NodeError::BadId(node.id.clone())),
                };
                (if proxyless { Role::Proxyless } else { role }, ip.to_string(), name.to_string())
            }
            _ if proxyless => (Role::Proxyless, String::new(), String::new()),
            _ => return Err(NodeError::BadId(node.id.clone())),
        };
        let (id_name, id_ns) = name_ns.split_once('.').unwrap_or((&name_ns, ""));
        let labels: BTreeMap<String, String> = meta
            .and_then(|m| m.fields.get("LABELS"))
            .and_then(|v| match &v.kind {
                Some(Kind::StructValue(s)) => Some(struct_strings(s)),
                _ => None,
            })
            .unwrap_or_default();
        let namespace = Some(text("NAMESPACE")).filter(|n| !n.is_empty()).unwrap_or_else(|| id_ns.to_owned());
        let workload = Some(text("WORKLOAD_NAME")).filter(|n| !n.is_empty()).unwrap_or_else(|| id_name.to_owned());
        // The revision the proxy was set up for (or moved to) wins over its label.
        let revision = Some(text("REVISION"))
            .filter(|r| !r.is_empty())
            .or_else(|| labels.get("istio.io/rev").cloned())
            .unwrap_or_default();
        Ok(ProxyIdentity {
            id: node.id.clone(),
            role,
            ip,
            workload,
            namespace: if namespace.is_empty() { weft_api::resource::DEFAULT_NAMESPACE.to_owned() } else { namespace },
            labels,
            service_account: text("SERVICE_ACCOUNT"),
            interception_mode: Some(text("INTERCEPTION_MODE"))
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "REDIRECT".into()),
            revision,
            istio_version: text("ISTIO_VERSION"),
            cluster_id: Some(text("CLUSTER_ID")).filter(|c| !c.is_empty()).unwrap_or_else(|| "Kubernetes".into()),
            sds: text("SDS").eq_ignore_ascii_case("true"),
        })
    }
}

fn as_string(v: &Value) -> Option<String> {
    match &v.kind {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        Some(Kind::NumberValue(n)) => Some(n.to_string()),
        Some(Kind::BoolValue(b)) => Some(b.to_string()),
        _ => None,
    }
}

fn struct_strings(s: &Struct) -> BTreeMap<String, String> {
    s.fields.iter().filter_map(|(k, v)| Some((k.clone(), as_string(v)?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, meta: &[(&str, Value)]) -> Node {
        Node {
            id: id.into(),
            metadata: Some(Struct { fields: meta.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() }),
            ..Default::default()
        }
    }

    fn s(text: &str) -> Value {
        Value { kind: Some(Kind::StringValue(text.into())) }
    }

    #[test]
    fn reads_istio_node_ids_and_metadata() {
        let labels = Value {
            kind: Some(Kind::StructValue(Struct {
                fields: [("app".to_owned(), s("reviews")), ("version".to_owned(), s("v1"))].into_iter().collect(),
            })),
        };
        let n = node(
            "sidecar~127.0.10.3~reviews-v1.shop~shop.svc.cluster.local",
            &[("LABELS", labels), ("SERVICE_ACCOUNT", s("bookinfo-reviews")), ("INTERCEPTION_MODE", s("NONE"))],
        );
        let id = ProxyIdentity::from_node(Some(&n)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (id.role, id.ip.as_str(), id.workload.as_str(), id.namespace.as_str()),
            (Role::Sidecar, "127.0.10.3", "reviews-v1", "shop")
        );
        assert_eq!(id.labels.get("version").map(String::as_str), Some("v1"));
        assert_eq!(id.interception_mode, "NONE");
        assert_eq!(id.service_account, "bookinfo-reviews");
    }

    #[test]
    fn gateways_are_routers_and_bad_ids_say_what_is_expected() {
        let gw = ProxyIdentity::from_node(Some(&node(
            "router~127.0.20.1~ingress.istio-system~istio-system.svc.cluster.local",
            &[],
        )));
        assert_eq!(gw.map(|g| g.role), Ok(Role::Gateway));
        let bad =
            ProxyIdentity::from_node(Some(&node("my-envoy", &[]))).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(bad.contains("TYPE~IP~NAME.NAMESPACE"), "{bad}");
        assert_eq!(ProxyIdentity::from_node(None), Err(NodeError::Missing));
    }
}
