//! Stand-ins for tests and experiments: proxy identities without an xDS stream.

use crate::node::{ProxyIdentity, Role};

/// A proxy in namespace `default` at `127.0.0.9`, in local mode (no traffic capture).
pub fn proxy(role: Role, labels: &[(&str, &str)]) -> ProxyIdentity {
    ProxyIdentity {
        id: format!("{}~127.0.0.9~client.default~default.svc.cluster.local", role.as_str()),
        role,
        ip: "127.0.0.9".into(),
        workload: "client".into(),
        namespace: "default".into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        service_account: String::new(),
        interception_mode: "NONE".into(),
        revision: String::new(),
        istio_version: String::new(),
        cluster_id: "Kubernetes".into(),
        sds: false,
    }
}
