//! `weft-proxy`: the weft proxy alone, for sidecar and gateway images. It takes the same
//! arguments as `weft proxy` and runs the same code, without the control plane, the CLI's
//! other commands and their dependencies in the executable.

#[path = "../proxy.rs"]
mod proxy;

use std::process::ExitCode;

use clap::Parser;

/// The weft proxy (sidecar or gateway), configured by the control plane's xDS.
#[derive(Debug, Parser)]
#[command(name = "weft-proxy", version)]
struct Cli {
    #[command(flatten)]
    args: proxy::ProxyArgs,
}

fn main() -> ExitCode {
    match proxy::run(Cli::parse().args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
