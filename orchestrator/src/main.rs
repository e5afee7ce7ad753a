//! `shoal-orchestrator`: parses its configuration, sets up logs and traces, binds and runs.

use std::io::Write as _;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The Shoal orchestrator daemon.
#[derive(Debug, Parser)]
#[command(name = "shoal-orchestrator", version, about)]
struct Cli {
    /// Address to serve gRPC on.
    #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:7070")]
    listen: String,
    /// Address to serve the trustless IPFS HTTP gateway on (`GET /ipfs/<cid>`); off if unset.
    #[arg(long, env = "SHOAL_GATEWAY_LISTEN")]
    gateway_listen: Option<String>,
    /// Log format: pretty or json.
    #[arg(long, env = "SHOAL_LOG_FORMAT", default_value = "pretty")]
    log_format: shoal::daemon::telemetry::LogFormat,
    /// Check the settings (flags and environment) and exit: 0 if the daemon would start
    /// with them, 2 with the reason if not. Nothing is bound, opened or created.
    #[arg(long)]
    check_config: bool,
    #[command(flatten)]
    config: shoal_orchestrator::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.check_config {
        shoal::daemon::telemetry::traces_requested()?;
        // A closed stdout (e.g. piped into `head`) is not an error of the configuration.
        let _ = writeln!(std::io::stdout(), "configuration ok: {:#?}", cli.config);
        return Ok(());
    }
    let telemetry = shoal::daemon::telemetry::init(shoal::daemon::telemetry::Options {
        format: cli.log_format,
        default_directives: "info",
        service_name: "shoal-orchestrator",
        process_fields: Vec::new(),
    })?;
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cli.listen))?;
    let gateway = match &cli.gateway_listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?,
        ),
        None => None,
    };
    let shutdown = CancellationToken::new();
    shoal::daemon::shutdown::cancel_on_signal(shutdown.clone());
    let result =
        shoal_orchestrator::run_with_gateway(listener, gateway, cli.config, shutdown).await;
    telemetry.shutdown().await;
    Ok(result?)
}
