//! The `weft` command.

mod agent;
mod demo_app;
mod migrate;
mod netns;
mod output;
mod proxy;
mod status;
mod tag;
mod up;
mod upgrade;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use weft_api::{Diagnostic, Level};

use output::Format;

/// weft: a service mesh that speaks Istio's APIs.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate Istio and Gateway API YAML, then check it as a whole (missing hosts,
    /// subsets and gateways, conflicts, unreachable rules, ...), with Istio's message codes.
    Analyze(AnalyzeArgs),
    /// Validate each resource against Istio's schemas and rules, without cross-checks.
    Validate(CheckArgs),
    /// Serve Envoy v3 xDS for the Istio configuration in PATH (watched for changes).
    ControlPlane(ControlPlaneArgs),
    /// Run a whole mesh on this machine from Istio YAML (default: the bundled Bookinfo).
    Up(up::UpArgs),
    /// A small HTTP application for examples and tests (echo, /status, /delay, call chains).
    DemoApp(demo_app::DemoAppArgs),
    /// Run the weft proxy (sidecar or gateway), configured by the control plane's xDS.
    Proxy(Box<proxy::ProxyArgs>),
    /// Serve a workload's certificate to an Envoy sidecar over SDS (Istio's node agent).
    Agent(agent::AgentArgs),
    /// Show each connected proxy's sync state (SYNCED, STALE, NACKED) per xDS type.
    ProxyStatus {
        /// The control plane's debug address.
        #[arg(long, default_value = "127.0.0.1:15014")]
        control_plane: std::net::SocketAddr,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Show what the control plane sends one proxy.
    ProxyConfig {
        /// What to show.
        #[arg(value_enum)]
        kind: ConfigKind,
        /// The proxy's node id, as `weft proxy-status` lists it.
        proxy: String,
        /// The control plane's debug address.
        #[arg(long, default_value = "127.0.0.1:15014")]
        control_plane: std::net::SocketAddr,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
    /// Revision tags: stable names (`prod-stable`) for control-plane revisions.
    Tag(tag::TagArgs),
    /// Upgrade the mesh to another control-plane revision (a canary upgrade of `weft
    /// up`'s mesh: batches, health checks, automatic rollback), or roll it back.
    Upgrade(upgrade::UpgradeArgs),
    /// Migrate an OpenShift Service Mesh 2 control plane: `weft migrate smcp FILE...`
    /// writes the OpenShift Service Mesh 3 Istio resource and reports what blocks the move.
    Migrate(migrate::MigrateArgs),
    /// Print the version, the git commit and the TLS crypto provider.
    Version {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Files or directories of YAML/JSON (directories are read recursively); `-` reads stdin.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

#[derive(Debug, clap::Args)]
struct AnalyzeArgs {
    #[command(flatten)]
    check: CheckArgs,
    /// Show findings at this level and above.
    #[arg(long, value_enum, default_value_t = Threshold::Info)]
    output_threshold: Threshold,
    /// Exit non-zero when a finding at this level or above is found.
    #[arg(long, value_enum, default_value_t = Threshold::Error)]
    failure_threshold: Threshold,
}

#[derive(Debug, clap::Args)]
struct ControlPlaneArgs {
    /// Files or directories of Istio YAML; directories are watched for changes.
    #[arg(long = "config", short = 'f', required = true, value_name = "PATH")]
    config: Vec<PathBuf>,
    /// Address of plaintext xDS (ADS).
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_address: std::net::SocketAddr,
    /// Address of /metrics and /debug endpoints.
    #[arg(long, default_value = "127.0.0.1:15014")]
    debug_address: std::net::SocketAddr,
    /// Address of the TLS port (xDS and Istio's certificate service); needs --state-dir.
    #[arg(long, requires = "state_dir")]
    secure_address: Option<std::net::SocketAddr>,
    /// Where the CA (`ca/`, or Istio's plug-in CA files there) and the workloads'
    /// bootstrap tokens (`tokens/<namespace>/<workload>.token`) are kept.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The mesh's trust domain (MeshConfig's trustDomain, when given, wins).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Istio's MeshConfig (the `mesh` key of the `istio` ConfigMap): trustDomain,
    /// trustDomainAliases, enableAutoMtls, meshMTLS.
    #[arg(long, value_name = "FILE")]
    mesh_config: Option<PathBuf>,
    /// Run in FIPS mode: refuse to start unless the TLS crypto provider runs in FIPS mode.
    #[arg(long)]
    fips: bool,
    /// The control-plane revision this one is (Istio's naming: `1-24-0`, no dots). It
    /// serves only proxies whose `istio.io/rev` label names it; without it, the default
    /// revision's proxies (no label, or `default`).
    #[arg(long, value_parser = revision_name)]
    revision: Option<String>,
}

/// A revision name: a DNS label (lower-case letters, digits, `-`), as Istio requires.
pub(crate) fn revision_name(s: &str) -> Result<String, String> {
    if weft_api::cel::is_dns_label(s) && s.len() <= 63 && !s.chars().any(|c| c.is_ascii_uppercase()) {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not a revision name: lower-case letters, digits and '-' (1-24-0), no dots"))
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ConfigKind {
    Clusters,
    Listeners,
    Routes,
    Endpoints,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Threshold {
    Info,
    Warning,
    Error,
}

impl Threshold {
    fn admits(self, level: Level) -> bool {
        match self {
            Threshold::Info => true,
            Threshold::Warning => level <= Level::Warning,
            Threshold::Error => level == Level::Error,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Analyze(args) => {
            let parsed = weft_config::load(&args.check.paths)?;
            let mut findings = parsed.diagnostics;
            findings.extend(weft_analyze::analyze(&parsed.resources));
            weft_analyze::sort(&mut findings);
            let shown: Vec<Diagnostic> =
                findings.iter().filter(|d| args.output_threshold.admits(d.level)).cloned().collect();
            let failed = findings.iter().any(|d| args.failure_threshold.admits(d.level));
            output::diagnostics(args.check.output, &shown, true)?;
            if shown.is_empty() {
                eprintln!("✔ No validation issues found when analyzing {} resources.", parsed.resources.len());
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Validate(args) => {
            let parsed = weft_config::load(&args.paths)?;
            let shown: Vec<Diagnostic> =
                parsed.diagnostics.iter().filter(|d| d.level <= Level::Warning).cloned().collect();
            output::diagnostics(args.output, &shown, false)?;
            if !parsed.has_errors() {
                eprintln!("✔ {} resources are valid.", parsed.resources.len());
            }
            Ok(if parsed.has_errors() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::ControlPlane(args) => control_plane(args),
        Command::Proxy(args) => proxy::run(*args),
        Command::Agent(args) => agent::run(args),
        Command::Up(args) => up::run(args),
        Command::Migrate(args) => migrate::run(args),
        Command::Tag(args) => tag::run(args),
        Command::Upgrade(args) => upgrade::run(args),
        Command::DemoApp(args) => demo_app::run(args),
        Command::ProxyStatus { control_plane, output } => {
            let syncz = status::fetch(control_plane, "/debug/syncz")?;
            match output {
                Format::Text => print!("{}", status::proxy_status(&syncz)),
                _ => output::value(output, &syncz)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::ProxyConfig { kind, proxy, control_plane, output } => {
            let dump = status::fetch(control_plane, &status::config_dump_path(&proxy))?;
            let kind = format!("{kind:?}").to_lowercase();
            match output {
                Format::Text => print!("{}", status::proxy_config(&kind, &dump)),
                _ => output::value(output, &dump[kind.as_str()])?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Version { output } => {
            output::version(output)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Logs to stderr, at `RUST_LOG`'s level (info by default).
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn control_plane(args: ControlPlaneArgs) -> anyhow::Result<ExitCode> {
    if args.fips {
        weft_tls::require_fips()?;
    }
    init_logging();
    let mesh = match &args.mesh_config {
        Some(path) => match weft_controlplane::mesh::load(path) {
            Ok(mesh) => mesh,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::FAILURE);
            }
        },
        None => weft_controlplane::mesh::MeshConfig::default(),
    };
    let trust_domain = mesh.trust_domain.clone().unwrap_or(args.trust_domain);
    let config = weft_controlplane::server::Config {
        mesh,
        paths: args.config,
        xds_address: args.xds_address,
        debug_address: args.debug_address,
        security: match (args.secure_address, args.state_dir) {
            (Some(secure_address), Some(state_dir)) => {
                Some(weft_controlplane::server::Security { state_dir, secure_address, trust_domain })
            }
            _ => None,
        },
        revision: args.revision,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(weft_controlplane::server::run(config, async {
        let _ = tokio::signal::ctrl_c().await;
    }));
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(weft_controlplane::server::ServerError::Invalid(diagnostics)) => {
            for d in diagnostics.iter().filter(|d| d.is_error()) {
                eprintln!("{} [{}] {d}", d.level, d.code);
            }
            eprintln!("error: the configuration is invalid; the control plane did not start");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}
