//! `weft proxy`: the sidecar or gateway, configured only by the control plane's xDS.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, reload};
use weft_proxy::{NodeInfo, ProxyConfig, XdsProtocol};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Role {
    /// A workload's sidecar (`sidecar~` node ids).
    Sidecar,
    /// A gateway (`router~` node ids).
    Router,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Protocol {
    /// Incremental xDS.
    Delta,
    /// State-of-the-world xDS.
    Sotw,
}

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// The control plane's xDS address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_address: String,
    /// xDS protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Delta)]
    xds_protocol: Protocol,
    /// The node id; by default Istio's form built from --role, --ip, --workload-name and --namespace.
    #[arg(long)]
    node_id: Option<String>,
    /// Sidecar or gateway (only used to build the default node id).
    #[arg(long, value_enum, default_value_t = Role::Sidecar)]
    role: Role,
    /// The workload's IP (only used to build the default node id).
    #[arg(long, default_value = "127.0.0.1")]
    ip: IpAddr,
    /// The workload's name (WORKLOAD_NAME).
    #[arg(long, default_value = "")]
    workload_name: String,
    /// The workload's namespace (NAMESPACE).
    #[arg(long, default_value = "default")]
    namespace: String,
    /// A workload label, `key=value` (LABELS); repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// The workload's service account (SERVICE_ACCOUNT).
    #[arg(long, default_value = "default")]
    service_account: String,
    /// The control-plane revision the workload belongs to.
    #[arg(long, default_value = "")]
    revision: String,
    /// How traffic reaches the proxy: NONE (explicit listeners) or REDIRECT (iptables).
    #[arg(long, default_value = "NONE")]
    interception_mode: String,
    /// Admin endpoint (/config_dump, /clusters, /stats, /ready, ...).
    #[arg(long, default_value = weft_proxy::config::DEFAULT_ADMIN_ADDRESS)]
    admin_address: SocketAddr,
    /// Readiness endpoint (/healthz/ready), e.g. 0.0.0.0:15021.
    #[arg(long)]
    readiness_address: Option<SocketAddr>,
    /// Prometheus endpoint (/stats/prometheus: Istio's standard metrics and the proxy's
    /// own), e.g. 0.0.0.0:15020. The admin endpoint serves it too.
    #[arg(long)]
    stats_address: Option<SocketAddr>,
    /// The cluster the workload runs in (CLUSTER_ID; the source_cluster and
    /// destination_cluster of its metrics).
    #[arg(long, default_value = "Kubernetes")]
    cluster_id: String,
    /// How long in-flight requests may take to finish after SIGTERM (e.g. 5s).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_grace: Duration,
    /// Worker threads (default: one per core).
    #[arg(long)]
    concurrency: Option<usize>,
    /// The control plane's secure port, where the workload certificate comes from
    /// (needs --ca-root-cert and --token-file).
    #[arg(long, requires_all = ["ca_root_cert", "token_file"])]
    ca_address: Option<String>,
    /// The mesh's root certificate (the control plane's `STATE/ca/root-cert.pem`).
    #[arg(long)]
    ca_root_cert: Option<std::path::PathBuf>,
    /// This workload's bootstrap token (the control plane's `STATE/tokens/NS/NAME.token`).
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
    /// The mesh's trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Speak xDS over mutual TLS with the workload certificate (point --xds-address at
    /// the control plane's secure port).
    #[arg(long, requires = "ca_address")]
    xds_mtls: bool,
    /// Run in FIPS mode: refuse to start unless the TLS crypto provider runs in FIPS mode
    /// (a `fips` build, or an `openssl` build on a host whose OpenSSL runs its FIPS provider).
    #[arg(long)]
    fips: bool,
    /// Lifetime to ask for; the certificate is renewed at half of it (e.g. 24h).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cert_lifetime: Duration,
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    weft_api::duration::parse(text)
}

pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let initial = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let (filter, handle) = reload::Layer::new(initial);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    let set_log_level: weft_proxy::config::SetLogLevel = Arc::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| format!("invalid level {level:?}: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    let mut labels = Vec::new();
    for l in &args.labels {
        let (k, v) = l.split_once('=').ok_or_else(|| anyhow::anyhow!("--label {l:?}: expected KEY=VALUE"))?;
        labels.push((k.to_owned(), v.to_owned()));
    }
    let workload = if args.workload_name.is_empty() {
        labels.iter().find(|(k, _)| k == "app").map_or("workload".to_owned(), |(_, v)| v.clone())
    } else {
        args.workload_name.clone()
    };
    let role = match args.role {
        Role::Sidecar => "sidecar",
        Role::Router => "router",
    };
    let ns = &args.namespace;
    let id =
        args.node_id.clone().unwrap_or_else(|| format!("{role}~{}~{workload}.{ns}~{ns}.svc.cluster.local", args.ip));
    if args.fips {
        weft_tls::require_fips()?;
    }
    let concurrency = args.concurrency.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let identity = match (args.ca_address, args.ca_root_cert, args.token_file) {
        (Some(ca_address), Some(root_cert), Some(token_file)) => Some(weft_proxy::identity::IdentityConfig {
            ca_address,
            root_cert,
            token_file,
            identity: weft_tls::ca::SpiffeId {
                trust_domain: args.trust_domain,
                namespace: ns.clone(),
                service_account: args.service_account.clone(),
            },
            lifetime: args.cert_lifetime,
        }),
        _ => None,
    };
    let config = ProxyConfig {
        xds_address: args.xds_address,
        protocol: match args.xds_protocol {
            Protocol::Delta => XdsProtocol::Delta,
            Protocol::Sotw => XdsProtocol::StateOfTheWorld,
        },
        node: NodeInfo {
            id,
            cluster: format!("{workload}.{ns}"),
            namespace: ns.clone(),
            labels,
            workload_name: workload,
            service_account: args.service_account,
            revision: args.revision,
            interception_mode: args.interception_mode,
            cluster_id: args.cluster_id,
            sds: identity.is_some(),
        },
        admin_address: args.admin_address,
        readiness_address: args.readiness_address,
        stats_address: args.stats_address,
        drain_grace: args.drain_grace,
        concurrency,
        set_log_level,
        identity,
        xds_mtls: args.xds_mtls,
    };
    // One worker: a single-threaded runtime, with no work-stealing machinery to pay for.
    let runtime = if concurrency <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(concurrency).enable_all().build()?
    };
    runtime.block_on(async {
        weft_proxy::run(config, async {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}
