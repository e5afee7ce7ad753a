//! `shoal`: the command-line client. All logic lives in the library; this parses arguments,
//! runs the command and turns the outcome into an exit code.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = shoal_cli::Cli::parse();
    let options = shoal::daemon::telemetry::Options {
        format: shoal::daemon::telemetry::LogFormat::Pretty,
        default_directives: "warn",
        service_name: "shoal-cli",
        process_fields: Vec::new(),
    };
    // Unusable trace settings must not stop anyone from using the CLI: it runs untraced.
    let telemetry = shoal::daemon::telemetry::init(options.clone()).unwrap_or_else(|error| {
        eprintln!("Warning: {error}; traces are off");
        shoal::daemon::telemetry::init_untraced(options)
    });
    let code = match shoal_cli::run(cli).await {
        Ok(code) => std::process::ExitCode::from(code),
        // `shoal job list | head -1`: the reader has what it wanted.
        Err(error) if shoal_cli::output::is_closed_stdout(&error) => {
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("Error: {}", shoal_cli::describe_error(&error));
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
