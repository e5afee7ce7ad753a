//! An orchestrator in the test's own process: opened on a temporary data directory, served
//! on a listener bound to `127.0.0.1:0` (so no port is picked before it is bound), with
//! gRPC clients, and its executor API at hand to drive `Connect` over an in-memory stream.
//! Every wait is for an event (a watch stream, a message), with a generous timeout.

use std::sync::Arc;
use std::time::Duration;

use shoal::content::local_tree::TreeBounds;
use shoal::net::auth::{AuthChannel, CallerMetadata};
use shoal::proto::executor_service_client::ExecutorServiceClient;
use shoal::proto::job_service_client::JobServiceClient;
use shoal::proto::node_service_client::NodeServiceClient;
use shoal::proto::storage_service_client::StorageServiceClient;
use shoal::proto::{
    Capacity, Execution, ExecutorMessage, Feature, GetJobRequest, Job, JobSpec,
    ListExecutionsRequest, OrchestratorMessage, Register, Registered, SubmitJobRequest,
    WatchJobRequest, executor_message, job_event, orchestrator_message,
};
use shoal_orchestrator::service::executors::{ConnectStream, ExecutorApi};
use shoal_orchestrator::{Config, Listeners, Orchestrator};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Generous upper bound for anything a test waits for.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// A running in-process orchestrator; shut down when dropped.
pub struct InProcess {
    pub address: String,
    pub orchestrator: Arc<Orchestrator>,
    pub jobs: JobServiceClient<AuthChannel>,
    pub storage: StorageServiceClient<AuthChannel>,
    pub nodes: NodeServiceClient<AuthChannel>,
    shutdown: CancellationToken,
    served: Option<tokio::task::JoinHandle<()>>,
    pub dir: tempfile::TempDir,
}

impl InProcess {
    /// An orchestrator with the default settings but for what `configure` changes.
    pub async fn start(configure: impl FnOnce(&mut Config)) -> InProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::with_data_dir(dir.path().join("data"));
        configure(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        let listeners = Listeners {
            grpc: listener,
            gateway: None,
            metrics: None,
        };
        let shutdown = CancellationToken::new();
        let orchestrator = shoal_orchestrator::open(
            config,
            listeners.addresses(),
            &tokio::sync::watch::channel(None).0,
            shutdown.clone(),
        )
        .await
        .expect("open the orchestrator");
        let served = tokio::spawn({
            let (orchestrator, shutdown) = (orchestrator.clone(), shutdown.clone());
            async move {
                if let Err(error) =
                    shoal_orchestrator::serve(orchestrator, listeners, shutdown).await
                {
                    panic!("the orchestrator failed: {error}");
                }
            }
        });
        let channel = tonic::transport::Endpoint::from_shared(address.clone())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let channel = AuthChannel::new(channel.into(), CallerMetadata::default());
        InProcess {
            jobs: JobServiceClient::new(channel.clone()),
            storage: StorageServiceClient::new(channel.clone()),
            nodes: NodeServiceClient::new(channel),
            address,
            orchestrator,
            shutdown,
            served: Some(served),
            dir,
        }
    }

    /// The executor API, to serve a `Connect` over any stream.
    pub fn executor_api(&self) -> ExecutorApi {
        ExecutorApi::new(self.orchestrator.clone())
    }

    /// Uploads a tiny valid module (it never runs: the executors here are driven by hand)
    /// and returns its CID.
    pub async fn program(&mut self) -> String {
        let path = self.dir.path().join("program.wasm");
        std::fs::write(&path, wat::parse_str("(module)").expect("wat")).expect("write");
        shoal::content::transfer::upload_path(&mut self.storage, &path, TreeBounds::LOCAL, None)
            .await
            .expect("upload")
            .cid
    }

    /// Submits a job of `program` and returns its id.
    pub async fn submit(&mut self, program: &str) -> String {
        let spec = JobSpec {
            program: program.to_owned(),
            ..Default::default()
        };
        let request = SubmitJobRequest {
            spec: Some(spec),
            idempotency_key: String::new(),
            stored_cids: Vec::new(),
        };
        let job = self.jobs.submit_job(request).await.expect("submit");
        job.into_inner().job.expect("a job").id
    }

    /// Waits for the job's terminal state change on its watch stream; returns the job.
    pub async fn wait_terminal(&mut self, job_id: &str) -> Job {
        let request = WatchJobRequest {
            job_id: job_id.to_owned(),
            from_sequence: 0,
            states_only: true,
        };
        let mut events = self
            .jobs
            .watch_job(request)
            .await
            .expect("watch")
            .into_inner();
        let ended = async {
            while let Some(event) = events.next().await {
                let event = event.expect("an event");
                if let Some(job_event::Event::StateChange(change)) = event.event
                    && change.state().is_terminal()
                {
                    return;
                }
            }
            panic!("the watch ended before job {job_id} did");
        };
        tokio::time::timeout(TIMEOUT, ended)
            .await
            .unwrap_or_else(|_| panic!("job {job_id} did not end within {TIMEOUT:?}"));
        let request = GetJobRequest {
            job_id: job_id.to_owned(),
        };
        let job = self.jobs.get_job(request).await.expect("get");
        job.into_inner().job.expect("a job")
    }

    /// The job's executions, oldest first.
    pub async fn executions(&mut self, job_id: &str) -> Vec<Execution> {
        let request = ListExecutionsRequest {
            job_id: job_id.to_owned(),
            partition: None,
        };
        let listed = self.jobs.list_executions(request).await.expect("list");
        listed.into_inner().executions
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(served) = self.served.take() {
            served.abort();
        }
    }
}

/// An executor's message with no report number (handshakes, heartbeats).
pub fn message(message: executor_message::Message) -> ExecutorMessage {
    ExecutorMessage {
        message: Some(message),
        sequence: 0,
    }
}

/// A `Register` for executor `id` with `slots` slots and 1 GiB, naming no features (an
/// executor from before they were named).
pub fn register(id: &str, slots: u32) -> ExecutorMessage {
    register_with(id, slots, &[])
}

/// A `Register` like [`register`]'s, naming `features`.
pub fn register_with(id: &str, slots: u32, features: &[Feature]) -> ExecutorMessage {
    message(executor_message::Message::Register(Register {
        executor_id: id.into(),
        protocol_version: 1,
        capacity: Some(Capacity {
            slots,
            memory_bytes: 1 << 30,
        }),
        instance_id: id.into(),
        features: features.iter().map(|f| *f as i32).collect(),
        ..Default::default()
    }))
}

/// An executor driven by hand: what it sends, and what it is sent after `Registered`.
pub struct HandExecutor<S> {
    pub uplink: mpsc::Sender<ExecutorMessage>,
    pub inbound: S,
}

/// Registers `id` over the network, as a real executor does; the status if it is refused.
pub async fn network_executor(
    address: &str,
    id: &str,
    slots: u32,
) -> Result<HandExecutor<tonic::Streaming<OrchestratorMessage>>, Status> {
    let channel = tonic::transport::Endpoint::from_shared(address.to_owned())
        .expect("address")
        .connect()
        .await
        .expect("connect");
    let (uplink, rx) = mpsc::channel(64);
    uplink.send(register(id, slots)).await.expect("register");
    let mut inbound = ExecutorServiceClient::new(channel)
        .connect(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = inbound.message().await?.expect("an answer");
    assert!(matches!(
        first.message,
        Some(orchestrator_message::Message::Registered(_))
    ));
    Ok(HandExecutor { uplink, inbound })
}

/// Registers `id` through the executor API's inner function, over an in-memory stream: no
/// network, no HTTP/2; the status if it is refused.
pub async fn in_memory_executor(
    api: &ExecutorApi,
    id: &str,
    slots: u32,
) -> Result<HandExecutor<ConnectStream>, Status> {
    in_memory_registered(api, register(id, slots))
        .await
        .map(|(executor, _)| executor)
}

/// Like [`in_memory_executor`], with `register` as the first message; also returns the
/// `Registered` answer.
pub async fn in_memory_registered(
    api: &ExecutorApi,
    register: ExecutorMessage,
) -> Result<(HandExecutor<ConnectStream>, Registered), Status> {
    let (uplink, rx) = mpsc::channel(64);
    uplink.send(register).await.expect("register");
    let mut inbound = api.serve(ReceiverStream::new(rx).map(Ok)).await?;
    let first = inbound.next().await.expect("an answer")?;
    let Some(orchestrator_message::Message::Registered(registered)) = first.message else {
        panic!("the first answer is not Registered: {first:?}");
    };
    Ok((HandExecutor { uplink, inbound }, registered))
}
