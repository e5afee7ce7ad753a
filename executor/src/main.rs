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
    shoal::shutdown::cancel_on_signal(shutdown.clone());
    shoal_executor::run(cli.config, shutdown).await?;
    Ok(())
}
