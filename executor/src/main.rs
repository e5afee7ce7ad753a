//! `shoal-executor`: parses its configuration, sets up logging and runs.

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The Shoal executor daemon.
#[derive(Debug, Parser)]
#[command(name = "shoal-executor", version, about)]
struct Cli {
    /// Log format: pretty or json.
    #[arg(long, env = "SHOAL_LOG_FORMAT", default_value = "pretty")]
    log_format: shoal::telemetry::LogFormat,
    #[command(flatten)]
    config: shoal_executor::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    shoal::telemetry::init(cli.log_format, "info");
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_on_signal(shutdown.clone()));
    shoal_executor::run(cli.config, shutdown).await?;
    Ok(())
}

async fn shutdown_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::error!(%error, "cannot watch SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
