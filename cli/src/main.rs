//! `shoal`: the command-line client. All logic lives in the library; this parses arguments,
//! runs the command and turns the outcome into an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Parsed before any runtime exists, so `--help`, `--version` and usage errors cost no
    // threads. A command is a client making a few calls: one thread does it and starts
    // fastest. The devstack runs an orchestrator and executors: it gets every core.
    let cli = shoal_cli::Cli::parse();
    let runtime = if matches!(cli.command, shoal_cli::Command::Devstack(_)) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(error) => {
            shoal_cli::errln!("Error: cannot start the async runtime: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: shoal_cli::Cli) -> std::process::ExitCode {
    let options = shoal::daemon::telemetry::Options {
        format: shoal::daemon::telemetry::LogFormat::Pretty,
        default_directives: "warn",
        service_name: "shoal-cli",
        process_fields: Vec::new(),
    };
    // Unusable trace settings must not stop anyone from using the CLI: it runs untraced.
    let telemetry = shoal::daemon::telemetry::init(options.clone()).unwrap_or_else(|error| {
        shoal_cli::errln!("Warning: {error}; traces are off");
        shoal::daemon::telemetry::init_untraced(options)
    });
    let orchestrator = cli.orchestrator.clone();
    let code = match shoal_cli::run(cli).await {
        Ok(code) => std::process::ExitCode::from(code),
        // `shoal job list | head -1`: the reader has what it wanted.
        Err(error) if shoal_cli::output::is_closed_stdout(&error) => {
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            shoal_cli::errln!(
                "Error: {}",
                shoal_cli::describe_error(&error, &orchestrator)
            );
            if shoal_cli::is_usage_error(&error) {
                std::process::ExitCode::from(shoal_cli::EXIT_USAGE)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    };
    telemetry.shutdown().await;
    code
}
