//! `weft agent`: the node agent for an Envoy sidecar. It obtains the workload's
//! certificate from the control plane's CA (bootstrap token, renewal at half-life) and
//! serves it to Envoy over SDS on a Unix socket, as Istio's agent does. Envoy's bootstrap
//! names the socket in a cluster called `sds-grpc` and sets node metadata `SDS: "true"`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `weft agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The Unix socket Envoy's `sds-grpc` cluster connects to.
    #[arg(long)]
    sds_socket: PathBuf,
    /// The control plane's secure port (15012).
    #[arg(long)]
    ca_address: String,
    /// The mesh's root certificate (the control plane's `STATE/ca/root-cert.pem`).
    #[arg(long)]
    ca_root_cert: PathBuf,
    /// This workload's bootstrap token (the control plane's `STATE/tokens/NS/NAME.token`).
    #[arg(long)]
    token_file: PathBuf,
    /// The workload's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The workload's service account (the CA decides from the token; this is what is asked).
    #[arg(long, default_value = "default")]
    service_account: String,
    /// The mesh's trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Lifetime to ask for; the certificate is renewed at half of it (e.g. 24h).
    #[arg(long, default_value = "24h", value_parser = crate::proxy::parse_duration)]
    cert_lifetime: Duration,
    /// Run in FIPS mode: refuse to start unless the TLS crypto provider runs in FIPS mode.
    #[arg(long)]
    fips: bool,
}

/// Runs the agent until Ctrl-C or SIGTERM.
pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    if args.fips {
        weft_tls::require_fips()?;
    }
    crate::init_logging();
    let identity = weft_proxy::identity::IdentityConfig {
        ca_address: args.ca_address,
        root_cert: args.ca_root_cert,
        token_file: args.token_file,
        identity: weft_tls::ca::SpiffeId {
            trust_domain: args.trust_domain,
            namespace: args.namespace,
            service_account: args.service_account,
        },
        lifetime: args.cert_lifetime,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(weft_proxy::sds::run_agent(identity, &args.sds_socket, async {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }))?;
    Ok(ExitCode::SUCCESS)
}
