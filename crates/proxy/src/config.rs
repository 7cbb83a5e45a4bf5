//! The proxy's one configuration struct: built from flags in one place, printed at
//! start-up, shown at `/server_info`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Istio's xDS plaintext port.
pub const DEFAULT_XDS_PORT: u16 = 15010;
/// Envoy's admin port.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:15000";
/// Istio's readiness port.
pub const DEFAULT_READINESS_PORT: u16 = 15021;
/// How long in-flight requests may take to finish after SIGTERM.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Which xDS protocol the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdsProtocol {
    /// Incremental (delta) ADS.
    Delta,
    /// State-of-the-world ADS.
    StateOfTheWorld,
}

/// How the proxy describes itself to the control plane (Istio's node conventions).
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// `sidecar~<ip>~<name>.<namespace>~<namespace>.svc.cluster.local`.
    pub id: String,
    /// `<workload>.<namespace>`.
    pub cluster: String,
    /// `NAMESPACE`.
    pub namespace: String,
    /// `LABELS`.
    pub labels: Vec<(String, String)>,
    /// `WORKLOAD_NAME`.
    pub workload_name: String,
    /// `SERVICE_ACCOUNT`.
    pub service_account: String,
    /// `REVISION` (the control-plane revision the workload belongs to).
    pub revision: String,
    /// `CLUSTER_ID`: the cluster the workload runs in (Istio's default `Kubernetes`).
    pub cluster_id: String,
    /// `INTERCEPTION_MODE`: `NONE` (explicit listeners) or `REDIRECT` (iptables).
    pub interception_mode: String,
    /// `SDS`: the proxy has a workload certificate for the SDS secrets `default` and
    /// `ROOTCA`, so the control plane may configure mutual TLS for it.
    pub sds: bool,
}

/// Changes the log level at run time (`POST /logging?level=debug`).
pub type SetLogLevel = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Everything the proxy needs to start.
#[derive(Clone)]
pub struct ProxyConfig {
    /// `host:port` of the control plane's ADS.
    pub xds_address: String,
    /// Delta or state of the world.
    pub protocol: XdsProtocol,
    /// The node.
    pub node: NodeInfo,
    /// Admin endpoint.
    pub admin_address: SocketAddr,
    /// Readiness endpoint (`/healthz/ready`), if any.
    pub readiness_address: Option<SocketAddr>,
    /// Prometheus endpoint (`/stats/prometheus`, Istio's 15020), if any.
    pub stats_address: Option<SocketAddr>,
    /// Grace period for in-flight requests on shutdown.
    pub drain_grace: Duration,
    /// Worker threads (reported; the runtime is built by the caller).
    pub concurrency: usize,
    /// Log level control.
    pub set_log_level: SetLogLevel,
    /// Where to obtain the workload certificate, if the proxy has an identity.
    pub identity: Option<crate::identity::IdentityConfig>,
    /// Speak xDS over mutual TLS with the workload certificate (to the secure port).
    pub xds_mtls: bool,
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("xds_address", &self.xds_address)
            .field("protocol", &self.protocol)
            .field("node", &self.node)
            .field("admin_address", &self.admin_address)
            .field("readiness_address", &self.readiness_address)
            .field("drain_grace", &self.drain_grace)
            .field("concurrency", &self.concurrency)
            .field("identity", &self.identity)
            .field("xds_mtls", &self.xds_mtls)
            .finish()
    }
}
