//! `shoal`: the command-line client. All logic lives in the library; this parses arguments,
//! runs the command and turns the outcome into an exit code.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = shoal_cli::Cli::parse();
    shoal::telemetry::init(shoal::telemetry::LogFormat::Pretty, "warn");
    match shoal_cli::run(cli).await {
        Ok(code) => std::process::ExitCode::from(code),
        Err(error) => {
            eprintln!("Error: {}", shoal_cli::describe_error(&error));
            std::process::ExitCode::FAILURE
        }
    }
}
