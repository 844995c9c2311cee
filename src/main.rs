use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use dicom_gateway::cli::Cli;
use dicom_gateway::config::Config;
use dicom_gateway::{Listeners, shutdown, telemetry};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dicom-gateway: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> anyhow::Result<()> {
    let args = Cli::parse().serve_args();
    let cfg = Config::load(
        &args.overrides,
        std::env::var("DICOM_GATEWAY_API_TOKEN").ok(),
    )?;
    if args.print_config {
        print!("{}", cfg.to_redacted_toml());
        return Ok(());
    }
    telemetry::init();
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async {
        let listeners = Listeners {
            dicom: bind(cfg.dicom_listen, "DICOM").await?,
            http: bind(cfg.http_listen, "HTTP").await?,
        };
        let cancel = CancellationToken::new();
        shutdown::on_signals(cancel.clone()).context("installing signal handlers")?;
        dicom_gateway::run(cfg, listeners, cancel).await
    })
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}"))
}
