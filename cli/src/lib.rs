//! The `shoal` command-line client: `wasm run`, `job`, `node`, `data` and `devstack`.
//!
//! Each command group lives in `commands/`; `client` connects to the orchestrator and
//! `output` renders tables, JSON and YAML. Exit codes: the program's own exit code for
//! `wasm run`/`job run` when the job completed, 125 when the job did not complete
//! (failed, cancelled, timed out), 130 when Ctrl-C stopped the waiting, 1 for any other
//! error, 2 for usage errors (clap's, and [`UsageError`]), 0 when stdout was closed.

pub mod client;
pub mod commands;
pub mod output;
pub mod progress;

use clap::{Parser, Subcommand};
use tracing::Instrument as _;

/// Exit code when a waited-for job did not complete.
pub const EXIT_JOB_NOT_COMPLETED: u8 = 125;

/// Exit code for a command line that cannot work as given (clap's own code for its errors).
pub const EXIT_USAGE: u8 = 2;

/// A command line that cannot work as given, found after parsing (a local path that does
/// not exist, a relative mount target): exits [`EXIT_USAGE`], like clap's own errors.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Fails with a [`UsageError`].
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::UsageError(format!($($arg)*))))
    };
}

/// Whether `error` is a [`UsageError`], anywhere in its chain.
pub fn is_usage_error(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<UsageError>())
}

/// Shoal: run WebAssembly programs over your data, on a fleet of executors.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, propagate_version = true)]
pub struct Cli {
    /// The orchestrator's address; several, comma-separated, for replicas sharing one
    /// PostgreSQL database (the CLI finds the one that leads).
    #[arg(
        long,
        global = true,
        env = "SHOAL_ORCHESTRATOR",
        default_value = "http://127.0.0.1:7070",
        help_heading = "Connection"
    )]
    pub orchestrator: String,
    #[command(flatten)]
    pub security: shoal::net::auth::ClientSecurity,
    #[command(flatten)]
    pub timeouts: client::Timeouts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
pub enum Command {
    /// Run WebAssembly programs.
    #[command(subcommand)]
    Wasm(commands::wasm::WasmCommand),
    /// Submit, inspect, follow and stop jobs.
    #[command(subcommand)]
    Job(commands::job::JobCommand),
    /// Inspect executors.
    #[command(subcommand)]
    Node(commands::node::NodeCommand),
    /// Put data into the store and get it out.
    #[command(subcommand)]
    Data(commands::data::DataCommand),
    /// Run an orchestrator and executors in this process, ready for `shoal wasm run`.
    Devstack(commands::devstack::DevstackArgs),
    /// Print a shell completion script: `source <(shoal completion bash)`, or into
    /// ~/.zfunc/_shoal for zsh, ~/.config/fish/completions/shoal.fish for fish.
    Completion { shell: clap_complete::Shell },
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let target = client::Target {
        address: cli.orchestrator,
        security: cli.security,
        timeouts: cli.timeouts,
    };
    // A command that talks to the orchestrator is the root span of its trace: a job it
    // submits is traced from here through the orchestrator to the executor. The devstack
    // is a server, not a command to trace.
    let command = match cli.command {
        Command::Devstack(args) => return commands::devstack::run(args).await.map(|()| 0),
        Command::Completion { shell } => return print_completion(shell).map(|()| 0),
        command => command,
    };
    let span = tracing::info_span!(
        "command",
        otel.name = command_name(&command),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
    );
    let outcome = async {
        match command {
            Command::Wasm(command) => commands::wasm::run(&target, command).await,
            Command::Job(command) => commands::job::run(&target, command).await,
            Command::Node(command) => commands::node::run(&target, command).await.map(|()| 0),
            Command::Data(command) => commands::data::run(&target, command).await.map(|()| 0),
            Command::Devstack(args) => commands::devstack::run(args).await.map(|()| 0),
            Command::Completion { shell } => print_completion(shell).map(|()| 0),
        }
    }
    .instrument(span.clone())
    .await;
    let outcome = outcome.map_err(|error| {
        if client::is_deadline(&error) {
            let waited = shoal::spec::units::format_duration(target.timeouts.call_timeout);
            error.context(format!(
                "the orchestrator at {} did not answer within {waited} (--call-timeout)",
                target.address
            ))
        } else {
            error
        }
    });
    if !matches!(outcome, Ok(0)) {
        span.record("otel.status_code", "ERROR");
    }
    outcome
}

/// Prints the completion script for `shell`.
fn print_completion(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "shoal", &mut script);
    output::write_stdout(&script)
}

/// The span name of a command, e.g. `shoal wasm run`.
fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Wasm(_) => "shoal wasm run",
        Command::Job(command) => command.name(),
        Command::Node(_) => "shoal node",
        Command::Data(_) => "shoal data",
        Command::Devstack(_) => "shoal devstack",
        Command::Completion { .. } => "shoal completion",
    }
}

/// One line for an error: a gRPC status shows its message, not its debug form. A
/// connection dropped while a plaintext (`http://`) address was called gets a hint: an
/// orchestrator serving TLS ends a plaintext connection without a word.
pub fn describe_error(error: &anyhow::Error, orchestrator: &str) -> String {
    let mut text = format!("{error:#}");
    for cause in error.chain() {
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            let code = format!("{:?}", status.code());
            text = text.replace(
                &format!("{status}"),
                &format!("{} ({code})", status.message()),
            );
            break;
        }
    }
    let plaintext = orchestrator
        .split(',')
        .any(|address| address.trim().starts_with("http://"));
    let lower = text.to_ascii_lowercase();
    let dropped = [
        "broken pipe",
        "connection reset",
        "frame with invalid size",
        "connection closed",
    ]
    .iter()
    .any(|sign| lower.contains(sign));
    if plaintext && lower.contains("transport error") && dropped {
        text.push_str(
            " (the orchestrator closed a plaintext connection: if it serves TLS, use an \
             https:// address, with --tls-ca for a private CA)",
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::describe_error;

    /// A status shows its message and code; a dropped plaintext connection says what to
    /// try, and only when the address was plaintext.
    #[test]
    fn errors_are_described_with_what_to_do() {
        let refused = anyhow::Error::new(tonic::Status::not_found("no job x"));
        assert_eq!(
            describe_error(&refused, "http://127.0.0.1:7070"),
            "no job x (NotFound)"
        );
        let dropped = anyhow::Error::new(tonic::Status::unknown(
            "transport error: connection error: Connection reset by peer (os error 104)",
        ));
        let plaintext = describe_error(&dropped, "http://a:7070,http://b:7070");
        assert!(plaintext.contains("use an https:// address"), "{plaintext}");
        let tls = describe_error(&dropped, "https://a:7070");
        assert!(!tls.contains("https:// address"), "{tls}");
    }
}
