//! The weft proxy: sidecar and gateway data plane.
//!
//! Knows only xDS, never Istio YAML. The xDS client ([`xds`]) compiles what the control
//! plane sends ([`model`]) into an immutable [`state::DataPlane`]; listeners
//! ([`listeners`]) accept connections and run HTTP ([`http`]) or TCP ([`tcp`]) proxying
//! against it; [`upstream`] owns pools, load balancing and resilience; [`admin`] serves
//! Envoy's admin endpoints. Control work (xDS, admin) never runs on the request path:
//! a request reads the configuration through one atomic pointer.

pub mod access_log;
pub mod admin;
pub mod body;
pub mod config;
pub mod dump;
pub mod fetch;
pub mod http;
pub mod identity;
pub mod listeners;
pub mod model;
pub mod reply;
pub mod sds;
pub mod secrets;
pub mod state;
pub mod stats;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod xds;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

pub use config::{NodeInfo, ProxyConfig, XdsProtocol};
use listeners::ListenerManager;
use state::{DataPlane, Store};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// An admin or readiness address is taken.
    #[error("cannot bind the {what} endpoint to {address}: {source} (is another proxy running there?)")]
    Bind { what: &'static str, address: std::net::SocketAddr, source: std::io::Error },
}

/// State shared by the xDS client, the listeners and the admin endpoint.
#[derive(Debug)]
pub struct Shared {
    /// The configuration requests read.
    pub data: ArcSwap<DataPlane>,
    /// Accepted xDS resources.
    pub store: Mutex<Store>,
    /// Running listeners.
    pub listeners: Mutex<ListenerManager>,
    /// Counters.
    pub stats: stats::Stats,
    /// Istio's standard metrics.
    pub metrics: telemetry::IstioMetrics,
    /// Finished spans on their way to a collector.
    pub spans: trace::export::Exporter,
    /// Start-up configuration.
    pub config: ProxyConfig,
    /// Set once the first complete configuration is applied.
    pub ready: AtomicBool,
    /// `POST /quitquitquit`.
    pub quit: Notify,
    /// Process start.
    pub started: Instant,
    /// The workload's certificate, when the proxy has an identity.
    pub identity: secrets::Secrets,
    /// Listeners that could not be bound, with the reason (shown by `/ready`).
    pub bind_errors: Mutex<Vec<String>>,
    /// Set to true when the proxy drains; every open HTTP connection holds a receiver,
    /// and the drain waits until none is left.
    pub drain: tokio::sync::watch::Sender<bool>,
    /// The control plane the proxy follows; `POST /control_plane` moves it.
    pub control_plane: ArcSwap<ControlPlane>,
    /// Wakes the xDS client when the proxy moves to another control plane.
    pub moved: Notify,
    /// The revision the connected control plane says it is (its responses'
    /// `control_plane.identifier`); empty until it says.
    pub served_revision: Mutex<String>,
}

/// The control plane a proxy follows: where its xDS and its CA are, and the revision it
/// belongs to. A canary upgrade moves a running proxy from one to another: the xDS
/// stream reconnects to the new one while listeners, connections and in-flight requests
/// carry on with the configuration they have (the revisions share the root of trust, so
/// the certificate stays valid; renewals go to the new CA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlane {
    /// `host:port` of ADS.
    pub xds_address: String,
    /// `host:port` of the CA, when the proxy has an identity.
    pub ca_address: Option<String>,
    /// The revision (or tag) the proxy tells the control plane it belongs to.
    pub revision: String,
}

impl ControlPlane {
    /// The one a proxy starts with.
    pub fn of(config: &ProxyConfig) -> ControlPlane {
        ControlPlane {
            xds_address: config.xds_address.clone(),
            ca_address: config.identity.as_ref().map(|i| i.ca_address.clone()),
            revision: config.node.revision.clone(),
        }
    }
}

impl Shared {
    /// New shared state with an empty configuration.
    pub fn new(config: ProxyConfig) -> Shared {
        let identity = secrets::Secrets::default();
        Shared {
            control_plane: ArcSwap::from_pointee(ControlPlane::of(&config)),
            moved: Notify::new(),
            served_revision: Mutex::new(String::new()),
            data: ArcSwap::from_pointee(DataPlane::default()),
            store: Mutex::new(Store::new(identity.clone())),
            listeners: Mutex::new(ListenerManager::default()),
            stats: stats::Stats::default(),
            metrics: telemetry::IstioMetrics::new(&config.node),
            spans: trace::export::Exporter::default(),
            config,
            ready: AtomicBool::new(false),
            quit: Notify::new(),
            started: Instant::now(),
            identity,
            bind_errors: Mutex::new(Vec::new()),
            drain: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        *self.drain.borrow()
    }

    /// Whether the proxy has a complete configuration (and its certificate, when it has
    /// an identity) and is not draining.
    pub fn is_ready(&self) -> bool {
        let identity_ok = self.config.identity.is_none() || self.identity.current().is_some();
        self.ready.load(Ordering::Relaxed) && identity_ok && !self.is_draining()
    }
}

/// Runs the proxy until `shutdown` completes (or `POST /quitquitquit`), then drains:
/// listeners close, in-flight requests get up to the drain grace period to finish.
pub async fn run(config: ProxyConfig, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    tracing::info!(?config, "starting weft proxy");
    let admin_address = config.admin_address;
    let readiness_address = config.readiness_address;
    let stats_address = config.stats_address;
    let grace = config.drain_grace;
    let shared = Arc::new(Shared::new(config));
    let admin = admin::bind(admin_address).await.map_err(|source| StartError::Bind {
        what: "admin",
        address: admin_address,
        source,
    })?;
    tokio::spawn(admin::serve_admin(shared.clone(), admin));
    if let Some(address) = readiness_address {
        let listener =
            admin::bind(address).await.map_err(|source| StartError::Bind { what: "readiness", address, source })?;
        tokio::spawn(admin::serve_readiness(shared.clone(), listener));
    }
    if let Some(address) = stats_address {
        let listener =
            admin::bind(address).await.map_err(|source| StartError::Bind { what: "Prometheus", address, source })?;
        tokio::spawn(admin::serve_readiness(shared.clone(), listener));
    }
    let client = tokio::spawn(xds::run(shared.clone()));
    let identity = shared.config.identity.clone().map(|c| {
        let follow = shared.clone();
        let first = c.ca_address.clone();
        let ca = move || follow.control_plane.load().ca_address.clone().unwrap_or_else(|| first.clone());
        tokio::spawn(identity::maintain(shared.identity.clone(), c, ca))
    });
    tokio::select! {
        () = shutdown => {}
        () = shared.quit.notified() => {}
    }
    tracing::info!(?grace, "draining: listeners closed, waiting for in-flight requests");
    shared.drain.send_replace(true);
    client.abort();
    if let Some(task) = identity {
        task.abort();
    }
    if let Ok(mut listeners) = shared.listeners.lock() {
        listeners.stop_all();
    }
    if tokio::time::timeout(grace, shared.drain.closed()).await.is_err() {
        tracing::warn!("drain grace period over; closing the remaining connections");
    }
    Ok(())
}
