//! The control plane's own metrics, with Istio's pilot names where Istio has one, so
//! existing dashboards read them: pushes, rejections, connected proxies, convergence.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The label set of per-type metrics: `type` is `cds`, `eds`, `lds` or `rds`.
type TypeLabel = Vec<(&'static str, String)>;

/// Every metric the control plane exports on `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    pushes: Family<TypeLabel, Counter>,
    rejects: Family<TypeLabel, Counter>,
    connected: Gauge,
    convergence: Histogram,
    config_version: Gauge,
    config_rejected: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn short(type_url: &str) -> String {
    match type_url.rsplit('.').next().unwrap_or("") {
        "Cluster" => "cds",
        "ClusterLoadAssignment" => "eds",
        "Listener" => "lds",
        "RouteConfiguration" => "rds",
        _ => "other",
    }
    .to_owned()
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let pushes = Family::<TypeLabel, Counter>::default();
        let rejects = Family::<TypeLabel, Counter>::default();
        let connected = Gauge::default();
        let convergence = Histogram::new([0.01, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0]);
        let config_version = Gauge::default();
        let config_rejected = Counter::default();
        registry.register("pilot_xds_pushes", "Pushes to proxies, by xDS type", pushes.clone());
        registry.register(
            "pilot_total_xds_rejects",
            "Configuration rejected by proxies (NACKs), by xDS type",
            rejects.clone(),
        );
        registry.register("pilot_xds", "Proxies connected over xDS", connected.clone());
        registry.register(
            "pilot_proxy_convergence_time",
            "Seconds from sending configuration to a proxy until it acknowledged it",
            convergence.clone(),
        );
        registry.register("weft_config_version", "Version of the configuration being served", config_version.clone());
        registry.register("weft_config_rejected", "Configuration changes rejected as invalid", config_rejected.clone());
        Metrics {
            registry: Mutex::new(registry),
            pushes,
            rejects,
            connected,
            convergence,
            config_version,
            config_rejected,
        }
    }

    /// A response of `type_url` was sent.
    pub fn pushed(&self, type_url: &str) {
        self.pushes.get_or_create(&vec![("type", short(type_url))]).inc();
    }

    /// A proxy rejected a response of `type_url`.
    pub fn nack(&self, type_url: &str) {
        self.rejects.get_or_create(&vec![("type", short(type_url))]).inc();
    }

    /// A proxy connected (+1) or left (-1).
    pub fn connected(&self, delta: i64) {
        self.connected.inc_by(delta);
    }

    /// A proxy acknowledged configuration `elapsed` after it was sent.
    pub fn converged(&self, elapsed: Duration) {
        self.convergence.observe(elapsed.as_secs_f64());
    }

    /// The served configuration is now `version`.
    pub fn config_version(&self, version: u64) {
        self.config_version.set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    /// An invalid configuration change was refused.
    pub fn config_rejected(&self) {
        self.config_rejected.inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}
