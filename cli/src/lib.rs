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
    pub security: shoal::auth::ClientSecurity,
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
    match cli.command {
        Command::Wasm(command) => commands::wasm::run(&target, command).await,
        Command::Job(command) => commands::job::run(&target, command).await,
        Command::Node(command) => commands::node::run(&target, command).await.map(|()| 0),
        Command::Data(command) => commands::data::run(&target, command).await.map(|()| 0),
        Command::Devstack(args) => commands::devstack::run(args).await.map(|()| 0),
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
