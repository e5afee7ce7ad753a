//! `shoal devstack`: an orchestrator and N executors in this process, with an embedded
//! store, so `shoal wasm run` works with no setup at all.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use shoal::proto::{ListNodesRequest, NodeState};
use tokio_util::sync::CancellationToken;

use crate::client::{Target, connect};

#[derive(Debug, Args)]
pub struct DevstackArgs {
    /// Address for the orchestrator's gRPC endpoint (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Also serve the trustless IPFS gateway here, e.g. 127.0.0.1:8080 (port 0 picks one).
    #[arg(long)]
    pub gateway_listen: Option<String>,
    /// How many executors to run.
    #[arg(long, default_value_t = 2)]
    pub executors: u32,
    /// Executions each executor runs at once.
    #[arg(long, default_value_t = 2)]
    pub slots: u32,
    /// A label for every executor, KEY=VALUE (repeatable). Each executor is also labelled
    /// devstack.index=N.
    #[arg(long = "executor-label")]
    pub executor_labels: Vec<String>,
    /// Most stdout (and stderr) each execution keeps, e.g. 64MiB.
    #[arg(long, default_value = "64MiB", value_parser = shoal::spec::units::parse_size)]
    pub log_cap: u64,
    /// Most bytes of outputs and logs each execution may publish, e.g. 10GiB.
    #[arg(long, default_value = "10GiB", value_parser = shoal::spec::units::parse_size)]
    pub max_output: u64,
    /// Most input bytes each execution may fetch, e.g. 10GiB.
    #[arg(long, default_value = "10GiB", value_parser = shoal::spec::units::parse_size)]
    pub max_input: u64,
    /// Time each execution may spend fetching its program and inputs.
    #[arg(long, default_value = "10m", value_parser = shoal::spec::units::parse_duration)]
    pub staging_timeout: std::time::Duration,
    /// S3 endpoint the orchestrator and executors use where a source names none.
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// Path-style S3 addressing for the orchestrator and executors.
    #[arg(long)]
    pub s3_path_style: bool,
    #[command(flatten)]
    pub urls: shoal::data::http::UrlPolicyArgs,
    /// Keep the content store's blocks in s3://bucket/prefix instead of the data directory.
    #[arg(long, value_parser = shoal::spec::source::S3Location::parse)]
    pub content_store: Option<shoal::spec::source::S3Location>,
    /// An IPFS trustless gateway to fetch CIDs the store lacks from (repeatable).
    #[arg(long = "ipfs-gateway", value_parser = shoal::data::ipfs::parse_gateway)]
    pub ipfs_gateways: Vec<url::Url>,
    /// Keep the orchestrator's state in this PostgreSQL database
    /// (`postgres://user:password@host:port/database`) instead of the data directory.
    #[arg(long, value_parser = shoal_orchestrator::config::StoreUrl::parse)]
    pub store: Option<shoal_orchestrator::config::StoreUrl>,
    /// Keep state here instead of a temporary directory removed on exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

pub async fn run(args: DevstackArgs) -> anyhow::Result<()> {
    let temp;
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("shoal-devstack-")
                .tempdir()?;
            temp.path().to_owned()
        }
    };
    // First of all: a second devstack on this directory would break the running one (its
    // executors would clear the first one's input cache).
    let _lock = shoal::daemon::lock::DirLock::acquire(&data_dir)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    let gateway = match &args.gateway_listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address}"))?,
        ),
        None => None,
    };
    let gateway_address = gateway.as_ref().and_then(|g| g.local_addr().ok());
    let mut orchestrator_config =
        shoal_orchestrator::Config::with_data_dir(data_dir.join("orchestrator"));
    orchestrator_config.ipfs_gateways = args.ipfs_gateways.clone();
    orchestrator_config.content_store = args.content_store.clone();
    orchestrator_config.store = args.store.clone();
    orchestrator_config.urls = args.urls.clone();
    orchestrator_config.s3.endpoint = args.s3_endpoint.clone();
    orchestrator_config.s3.force_path_style = args.s3_path_style;
    let token = shutdown.clone();
    tasks.spawn(async move {
        shoal_orchestrator::run_with_gateway(listener, gateway, orchestrator_config, token)
            .await
            .map_err(anyhow::Error::from)
    });
    // The executors start once the orchestrator serves: started with it, they would each
    // log its "not serving yet" while it loads its state, and redial.
    tokio::select! {
        ready = wait_until_ready(&address, 0) => ready?,
        Some(result) = tasks.join_next() => {
            shutdown.cancel();
            result??;
            anyhow::bail!("the orchestrator stopped while starting");
        }
    }
    for index in 0..args.executors {
        let mut config = shoal_executor::Config::new(
            address.clone(),
            format!("devstack-{index}"),
            data_dir.join(format!("executor-{index}")),
        );
        config.slots = args.slots;
        config.log_cap = args.log_cap;
        config.max_input_bytes = args.max_input;
        config.max_output_bytes = args.max_output;
        config.staging_timeout = args.staging_timeout;
        // The orchestrator stops with the devstack, so waiting for executions gains nothing.
        config.drain_timeout = Duration::ZERO;
        config.urls = args.urls.clone();
        config.s3.endpoint = args.s3_endpoint.clone();
        config.s3.force_path_style = args.s3_path_style;
        config.label = args.executor_labels.clone();
        // One process, one trust domain: a module compiled by one executor is loaded by
        // the others instead of being compiled again.
        config.module_cache = Some(data_dir.join("modules"));
        config.label.push(format!("devstack.index={index}"));
        let token = shutdown.clone();
        tasks.spawn(async move {
            shoal_executor::run(config, token)
                .await
                .map_err(anyhow::Error::from)
        });
    }

    // A part that stops while the others start (an executor refused by the lock of another
    // daemon's work directory, say) says why, rather than leaving the wait to time out.
    tokio::select! {
        ready = wait_until_ready(&address, args.executors as usize) => ready?,
        Some(result) = tasks.join_next() => {
            shutdown.cancel();
            result??;
            anyhow::bail!("a devstack component stopped while starting");
        }
    }
    crate::outln!(
        "Shoal devstack ready: orchestrator at {address} with {} executor(s)",
        args.executors
    );
    crate::outln!("Data directory: {}", data_dir.display());
    if let Some(address) = gateway_address {
        crate::outln!("IPFS gateway at http://{address}/ipfs/");
    }
    crate::outln!("Point the CLI at it with:");
    crate::outln!("  export SHOAL_ORCHESTRATOR={address}");
    crate::outln!("Press Ctrl-C to stop.");

    tokio::select! {
        _ = shoal::daemon::shutdown::signal() => {}
        Some(result) = tasks.join_next() => {
            shutdown.cancel();
            result??;
            anyhow::bail!("a devstack component stopped unexpectedly");
        }
    }
    crate::errln!("Stopping the devstack");
    shutdown.cancel();
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

/// Waits until the orchestrator serves and `executors` executors have registered (with 0:
/// until it serves), so the first job runs at once. Asks the
/// orchestrator every 50 ms: the executors run in this process and register within a few
/// milliseconds, and the API has no stream of node changes to wait on. UNAVAILABLE is an
/// orchestrator still starting (on the PostgreSQL store, it answers so until it leads).
async fn wait_until_ready(address: &str, executors: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut clients = connect(&Target::plain(address)).await?;
    loop {
        let (serving, nodes) = match clients.nodes.list_nodes(ListNodesRequest {}).await {
            Ok(listed) => (true, listed.into_inner().nodes),
            Err(status) if status.code() == tonic::Code::Unavailable => (false, Vec::new()),
            Err(status) => return Err(status.into()),
        };
        let connected = nodes
            .iter()
            .filter(|n| n.state() == NodeState::Connected)
            .count();
        if serving && connected >= executors {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            if !serving {
                anyhow::bail!("the orchestrator did not serve within 60s");
            }
            anyhow::bail!("only {connected} of {executors} executors connected within 60s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
