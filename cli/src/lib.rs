//! The `shoal` command-line client: `wasm run`, `job`, `node`, `data` and `devstack`.
//!
//! Each command group lives in `commands/`; `client` connects to the orchestrator and
//! `output` renders tables, JSON and YAML. Exit codes: the program's own exit code for
//! `wasm run`/`job run` when the job completed, 125 when the job did not complete
//! (failed, cancelled, timed out), 1 for any other error, 2 for usage errors.

pub mod client;
pub mod commands;
pub mod output;

use clap::{Parser, Subcommand};
use tracing::Instrument as _;

/// Exit code when a waited-for job did not complete.
pub const EXIT_JOB_NOT_COMPLETED: u8 = 125;

/// Shoal: run WebAssembly programs over your data, on a fleet of executors.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, propagate_version = true)]
pub struct Cli {
    /// The orchestrator's address.
    #[arg(
        long,
        global = true,
        env = "SHOAL_ORCHESTRATOR",
        default_value = "http://127.0.0.1:7070"
    )]
    pub orchestrator: String,
    #[command(flatten)]
    pub security: shoal::net::auth::ClientSecurity,
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
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let target = client::Target {
        address: cli.orchestrator,
        security: cli.security,
    };
    // A command that talks to the orchestrator is the root span of its trace: a job it
    // submits is traced from here through the orchestrator to the executor. The devstack
    // is a server, not a command to trace.
    let command = match cli.command {
        Command::Devstack(args) => return commands::devstack::run(args).await.map(|()| 0),
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
        }
    }
    .instrument(span.clone())
    .await;
    if !matches!(outcome, Ok(0)) {
        span.record("otel.status_code", "ERROR");
    }
    outcome
}

/// The span name of a command, e.g. `shoal wasm run`.
fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Wasm(_) => "shoal wasm run",
        Command::Job(command) => command.name(),
        Command::Node(_) => "shoal node",
        Command::Data(_) => "shoal data",
        Command::Devstack(_) => "shoal devstack",
    }
}

/// One line for an error: a gRPC status shows its message, not its debug form.
pub fn describe_error(error: &anyhow::Error) -> String {
    for cause in error.chain() {
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            let code = format!("{:?}", status.code());
            return format!("{error:#}").replace(
                &format!("{status}"),
                &format!("{} ({code})", status.message()),
            );
        }
    }
    format!("{error:#}")
}
