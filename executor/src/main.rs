//! `shoal-executor`: parses its configuration, sets up logs and traces, and runs.

use std::io::Write as _;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The Shoal executor daemon.
#[derive(Debug, Parser)]
#[command(name = "shoal-executor", version, about)]
struct Cli {
    /// Log format: pretty or json.
    #[arg(long, env = "SHOAL_LOG_FORMAT", default_value = "pretty")]
    log_format: shoal::daemon::telemetry::LogFormat,
    /// Check the settings (flags and environment) and exit: 0 if the daemon would start
    /// with them, 2 with the reason if not. Nothing is bound, opened or created.
    #[arg(long)]
    check_config: bool,
    #[command(flatten)]
    config: shoal_executor::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.check_config {
        cli.config.check()?;
        shoal::daemon::telemetry::traces_requested()?;
        // A closed stdout (e.g. piped into `head`) is not an error of the configuration.
        let _ = writeln!(std::io::stdout(), "configuration ok: {:#?}", cli.config);
        return Ok(());
    }
    let telemetry = shoal::daemon::telemetry::init(shoal::daemon::telemetry::Options {
        format: cli.log_format,
        default_directives: "info",
        service_name: "shoal-executor",
        process_fields: vec![("executor_id", cli.config.executor_id.clone())],
    })?;
    let shutdown = CancellationToken::new();
    shoal::daemon::shutdown::cancel_on_signal(shutdown.clone());
    let result = shoal_executor::run(cli.config, shutdown).await;
    telemetry.shutdown().await;
    Ok(result?)
}
