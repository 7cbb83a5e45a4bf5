//! Running the control plane: load and watch the configuration, publish snapshots,
//! serve ADS and the debug endpoints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use weft_api::{Diagnostic, Parsed};

use crate::ads::{Ads, SyncStatus};
use crate::debug;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// Port of plaintext xDS, as Istio's.
pub const XDS_PORT: u16 = 15010;
/// Port of the control plane's metrics and debug endpoints, as Istio's.
pub const DEBUG_PORT: u16 = 15014;
/// How often the configuration directory is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Changes are applied once the files have been quiet this long...
pub const DEBOUNCE_QUIET: Duration = Duration::from_millis(100);
/// ...or at the latest this long after the first change.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(1);

/// Everything `weft control-plane` needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// Files and directories of Istio YAML.
    pub paths: Vec<PathBuf>,
    /// Where ADS listens.
    pub xds_address: SocketAddr,
    /// Where `/metrics` and `/debug/*` listen.
    pub debug_address: SocketAddr,
    /// The certificate authority and the TLS port, when enabled.
    pub security: Option<Security>,
    /// Mesh-wide settings (Istio's MeshConfig).
    pub mesh: crate::mesh::MeshConfig,
    /// The control-plane revision served (`--revision`; none: the default).
    pub revision: Option<String>,
}

/// The CA and the secure port (15012: xDS and Istio's certificate service over TLS).
#[derive(Debug, Clone)]
pub struct Security {
    /// Where the CA's root (or Istio's plug-in CA files, in `ca/`) and the workloads'
    /// bootstrap tokens (`tokens/`) are kept.
    pub state_dir: PathBuf,
    /// Where the TLS port listens.
    pub secure_address: SocketAddr,
    /// The mesh's trust domain (`cluster.local`).
    pub trust_domain: String,
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration could not be read.
    #[error(transparent)]
    Load(#[from] weft_config::LoadError),
    /// The configuration is invalid; nothing was served.
    #[error("the configuration has {} error(s); nothing is served until they are fixed", .0.iter().filter(|d| d.is_error()).count())]
    Invalid(Vec<Diagnostic>),
    /// A port could not be bound.
    #[error("cannot listen on {address}: {source} (is another control plane running?)")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("xDS server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The certificate authority could not start.
    #[error("certificate authority: {0}")]
    Ca(#[from] weft_tls::ca::CaError),
    /// Tokens or state could not be written.
    #[error("state directory: {0}")]
    State(#[from] std::io::Error),
}

/// Loads configuration and checks it as `weft analyze` would; errors refuse it.
pub fn load(paths: &[PathBuf]) -> Result<Parsed, ServerError> {
    let mut parsed = weft_config::load(paths)?;
    let analysis = weft_analyze::analyze(&parsed.resources);
    parsed.diagnostics.extend(analysis);
    if parsed.has_errors() {
        return Err(ServerError::Invalid(parsed.diagnostics));
    }
    Ok(parsed)
}

/// Runs until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let parsed = load(&config.paths)?;
    for d in parsed.diagnostics.iter().filter(|d| !d.is_error()) {
        tracing::warn!("{d}");
    }
    let metrics = Arc::new(Metrics::new());
    let status = Arc::new(SyncStatus::default());
    let trust_domain =
        config.security.as_ref().map_or(crate::snapshot::DEFAULT_TRUST_DOMAIN, |s| s.trust_domain.as_str());
    let first = Snapshot::new(1, parsed.resources).with_trust_domain(trust_domain).with_mesh(config.mesh.clone());
    for field in config.mesh.other.keys() {
        tracing::warn!("meshConfig {field} is not acted on yet");
    }
    let (tx, rx) = watch::channel(Arc::new(first));
    metrics.config_version(1);

    let xds = tokio::net::TcpListener::bind(config.xds_address)
        .await
        .map_err(|source| ServerError::Bind { address: config.xds_address, source })?;
    let debug_listener = tokio::net::TcpListener::bind(config.debug_address)
        .await
        .map_err(|source| ServerError::Bind { address: config.debug_address, source })?;
    tracing::info!(xds = %xds.local_addr().map_or(config.xds_address, |a| a), debug = %config.debug_address, "control plane serving");

    tokio::spawn(watch_config(config.paths.clone(), tx, metrics.clone()));
    tokio::spawn(debug::serve(debug_listener, rx.clone(), status.clone(), metrics.clone()));

    if let Some(security) = &config.security {
        let secure =
            secure_server(security.clone(), config.revision.clone(), rx.clone(), status.clone(), metrics.clone())
                .await?;
        tokio::spawn(async move {
            if let Err(e) = secure.await {
                tracing::error!("secure port failed: {e}");
            }
        });
    }
    let ads = Ads::new(rx, status, metrics).with_revision(config.revision.clone());
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(ads.into_service())
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(xds), shutdown)
        .await?;
    Ok(())
}

/// Starts the CA and returns the TLS server of the secure port (xDS and the certificate
/// service), bound and ready to be awaited.
async fn secure_server(
    security: Security,
    revision: Option<String>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    status: Arc<SyncStatus>,
    metrics: Arc<Metrics>,
) -> Result<impl std::future::Future<Output = Result<(), tonic::transport::Error>>, ServerError> {
    use crate::ca::{CertificateService, SERVER_NAMES, Tokens};
    let ca = Arc::new(weft_tls::ca::CertificateAuthority::load_or_create(
        &security.state_dir.join("ca"),
        &security.trust_domain,
    )?);
    let tokens = Arc::new(Tokens::new(&security.state_dir, &security.trust_domain));
    tokens.sync(&snapshots.borrow())?;
    let mut updates = snapshots.clone();
    let watched = tokens.clone();
    tokio::spawn(async move {
        while updates.changed().await.is_ok() {
            let snapshot = updates.borrow_and_update().clone();
            if let Err(e) = watched.sync(&snapshot) {
                tracing::error!("cannot write bootstrap tokens: {e}");
            }
        }
    });
    let ip = security.secure_address.ip();
    let ips: Vec<std::net::IpAddr> = if ip.is_unspecified() { Vec::new() } else { vec![ip] };
    let (chain, key) = ca.server_certificate(SERVER_NAMES, &ips, Duration::from_secs(365 * 24 * 3600))?;
    let listener = tokio::net::TcpListener::bind(security.secure_address)
        .await
        .map_err(|source| ServerError::Bind { address: security.secure_address, source })?;
    tracing::info!(secure = %security.secure_address, trust_domain = %security.trust_domain, ca = ?ca.source(), "certificate authority serving");
    // Client certificates are optional: the certificate service authenticates by token;
    // proxies holding a workload certificate use it for xDS, and are held to it.
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(chain, key))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca.root_pem()))
        .client_auth_optional(true);
    let ads = Ads::new(snapshots, status, metrics).with_revision(revision);
    let server = tonic::transport::Server::builder()
        .tls_config(tls)?
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(CertificateService::new(ca, tokens))
        .add_service(ads.into_service())
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    Ok(server)
}

/// `(path, modified, length)` of every configuration file: what a change changes.
/// What changes when a configuration file is added, removed or edited: each file under
/// `paths` with its modification time and size.
pub fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut out = Vec::new();
    for path in paths {
        for file in weft_config::files_under(path).unwrap_or_default() {
            let meta = std::fs::metadata(&file).ok();
            out.push((file, meta.as_ref().and_then(|m| m.modified().ok()), meta.map_or(0, |m| m.len())));
        }
    }
    out
}

/// Polls the configuration, debounces bursts of edits, and publishes each valid
/// result as a new snapshot. An invalid result is logged with its diagnostics and the
/// last good snapshot keeps being served.
async fn watch_config(paths: Vec<PathBuf>, tx: watch::Sender<Arc<Snapshot>>, metrics: Arc<Metrics>) {
    let mut seen = fingerprint(&paths);
    let mut version = 1;
    // The snapshot a change replaced. Freeing a large one takes a while, so it goes at
    // the next poll (a push to a thousand proxies takes less), not while the proxies
    // wait for the push.
    let mut retired: Option<Arc<Snapshot>> = None;
    loop {
        tokio::time::sleep(POLL_INTERVAL).await;
        drop(retired.take());
        let now = fingerprint(&paths);
        if now == seen {
            continue;
        }
        // Wait until the edits settle, but not forever.
        let started = tokio::time::Instant::now();
        let mut latest = now;
        loop {
            tokio::time::sleep(DEBOUNCE_QUIET).await;
            let again = fingerprint(&paths);
            if again == latest || started.elapsed() >= DEBOUNCE_MAX {
                latest = again;
                break;
            }
            latest = again;
        }
        seen = latest;
        match load(&paths) {
            Ok(parsed) => {
                version += 1;
                tracing::info!(version, resources = parsed.resources.len(), "configuration changed");
                metrics.config_version(version);
                let next = Snapshot::next(&tx.borrow(), version, parsed.resources);
                if let Some(change) = &next.endpoint_change {
                    tracing::info!(version, hosts = change.hosts.len(), "only endpoints changed");
                }
                retired = Some(tx.send_replace(Arc::new(next)));
                if tx.is_closed() {
                    return;
                }
            }
            Err(ServerError::Invalid(diagnostics)) => {
                metrics.config_rejected();
                tracing::error!("configuration change rejected; still serving version {version}");
                for d in diagnostics.iter().filter(|d| d.is_error()) {
                    tracing::error!("{d}");
                }
            }
            Err(e) => {
                metrics.config_rejected();
                tracing::error!("configuration change rejected: {e}; still serving version {version}");
            }
        }
    }
}
