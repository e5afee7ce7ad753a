//! Connecting to the orchestrator.

use std::time::Duration;

use anyhow::Context as _;
use shoal::net::auth::AuthChannel;
use shoal::net::leader::Replicas;
use shoal::proto::job_service_client::JobServiceClient;
use shoal::proto::node_service_client::NodeServiceClient;
use shoal::proto::storage_service_client::StorageServiceClient;

/// Largest message the CLI accepts.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Clients of every service over one connection.
#[derive(Debug, Clone)]
pub struct Clients {
    pub jobs: JobServiceClient<AuthChannel>,
    pub storage: StorageServiceClient<AuthChannel>,
    pub nodes: NodeServiceClient<AuthChannel>,
    /// How long an upload or download may move no byte before it is given up
    /// (`--call-timeout`): see [`unless_stalled`].
    pub stall_timeout: Duration,
}

impl Clients {
    /// One job, by id or unique prefix.
    pub async fn job(&mut self, job_id: &str) -> anyhow::Result<shoal::proto::Job> {
        self.jobs
            .get_job(shoal::proto::GetJobRequest {
                job_id: job_id.to_owned(),
            })
            .await?
            .into_inner()
            .job
            .context("the orchestrator returned no job")
    }

    /// Every execution of a job, oldest first.
    pub async fn executions(
        &mut self,
        job_id: String,
    ) -> anyhow::Result<Vec<shoal::proto::Execution>> {
        self.partition_executions(job_id, None).await
    }

    /// The executions of a job (of one partition of it), oldest first.
    pub async fn partition_executions(
        &mut self,
        job_id: String,
        partition: Option<u32>,
    ) -> anyhow::Result<Vec<shoal::proto::Execution>> {
        let request = shoal::proto::ListExecutionsRequest { job_id, partition };
        Ok(self
            .jobs
            .list_executions(request)
            .await?
            .into_inner()
            .executions)
    }
}

/// Where the orchestrator is, how to prove ourselves to it, and how long to wait for it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http(s)://host:port`; a bare `host:port` means http.
    pub address: String,
    pub security: shoal::net::auth::ClientSecurity,
    pub timeouts: Timeouts,
}

/// How long the CLI waits for the orchestrator.
#[derive(Debug, Clone, Copy, clap::Args)]
#[command(next_help_heading = "Connection")]
pub struct Timeouts {
    /// Longest wait to connect (TCP, TLS and HTTP/2 handshakes together).
    #[arg(
        long,
        global = true,
        env = "SHOAL_CONNECT_TIMEOUT",
        default_value = "5s",
        value_parser = shoal::spec::units::parse_duration
    )]
    pub connect_timeout: Duration,
    /// Longest wait for the answer to a call that answers at once (submit, get, list,
    /// stop, cordon...). Watching, logs, uploads, downloads, `data cp` of a URL or S3
    /// object, `data pin` and `node drain` take as long as their work does, but an upload,
    /// download or log read that moves nothing for this long ends.
    #[arg(
        long,
        global = true,
        env = "SHOAL_CALL_TIMEOUT",
        default_value = "30s",
        value_parser = shoal::spec::units::parse_duration
    )]
    pub call_timeout: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
        }
    }
}

impl Target {
    /// A target with no token and no TLS (the devstack's own orchestrator).
    pub fn plain(address: &str) -> Self {
        Target {
            address: address.to_owned(),
            security: Default::default(),
            timeouts: Timeouts::default(),
        }
    }
}

/// Whether the call deadline applies to `method`: every call but the streams and the
/// calls whose work takes as long as it takes.
fn answers_at_once(method: &str) -> bool {
    !matches!(
        method,
        "WatchJob"
            | "GetLogs"
            | "DownloadResults"
            | "Upload"
            | "Download"
            | "CopyFromUrl"
            | "CopyFromS3"
            | "Pin"
            | "Drain"
    )
}

/// Whether `error` is a call that ran out of its deadline.
pub fn is_deadline(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<tonic::Status>().is_some_and(ran_out))
}

/// Whether `status` ends a call that ran out of its deadline: the server's answer, or the
/// channel's own timer (which tonic reports as CANCELLED).
pub fn ran_out(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::DeadlineExceeded
        || (status.code() == tonic::Code::Cancelled
            && status.message() == tonic::TimeoutExpired(()).to_string())
}

/// Connects to the orchestrator at `target`, with its token and TLS settings. Given
/// several addresses (replicas on one PostgreSQL database, or a name that resolves to
/// several), it asks each which one leads and starts there; calls then follow the leader
/// (see `shoal::net::leader`).
pub async fn connect(target: &Target) -> anyhow::Result<Clients> {
    let deadline = shoal::net::auth::CallDeadline {
        timeout: target.timeouts.call_timeout,
        applies_to: answers_at_once,
    };
    let bearer = target.security.bearer()?.with_deadline(deadline);
    let limit = target.timeouts.connect_timeout;
    let configure = |endpoint: tonic::transport::Endpoint| {
        endpoint
            .connect_timeout(limit)
            .tcp_nodelay(true)
            // A watch is a long quiet stream: pings find a dead orchestrator under it.
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
    };
    let replicas = target.security.replicas(&target.address, configure)?;
    let single = match replicas.addresses().collect::<Vec<_>>().as_slice() {
        [url] => Some(url.to_string()),
        _ => None,
    };
    let replicas = match single {
        Some(url) => {
            // One orchestrator: connected to now, so a wrong address fails here.
            let endpoint = configure(target.security.endpoint(&url)?);
            let channel = connect_one(&endpoint, &url, limit).await?;
            Replicas::new(vec![(url, channel)])
        }
        None => {
            find_leader(&replicas, limit).await?;
            replicas
        }
    };
    let channel = AuthChannel::new(replicas, bearer);
    Ok(Clients {
        jobs: JobServiceClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
        storage: StorageServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        nodes: NodeServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
        stall_timeout: target.timeouts.call_timeout,
    })
}

const HINT: &str = "set --orchestrator or SHOAL_ORCHESTRATOR";

/// Connects to one orchestrator now, so a wrong address fails here and says so.
async fn connect_one(
    endpoint: &tonic::transport::Endpoint,
    url: &str,
    limit: Duration,
) -> anyhow::Result<tonic::transport::Channel> {
    // The connect timeout covers TCP alone: a port that accepts and never speaks HTTP/2
    // would hang the handshake forever.
    match tokio::time::timeout(limit, endpoint.connect()).await {
        Ok(connected) => {
            connected.with_context(|| format!("cannot reach the orchestrator at {url} ({HINT})"))
        }
        Err(_) => anyhow::bail!(
            "cannot reach the orchestrator at {url}: no answer within {} (--connect-timeout; {HINT})",
            shoal::spec::units::format_duration(limit)
        ),
    }
}

/// Points `replicas` at the one that serves jobs (the leader): the first whose health says
/// SERVING, else the first that answers at all (a leader with a full disk, or none elected
/// yet: calls retry and follow the leader once there is one). Fails only if none answers.
async fn find_leader(replicas: &Replicas, limit: Duration) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let service = shoal::proto::job_service_server::SERVICE_NAME;
    let mut answered = None;
    let mut failures = Vec::new();
    for index in 0..replicas.addresses().count() {
        replicas.prefer(index);
        let address = replicas.current().to_owned();
        let mut health = tonic_health::pb::health_client::HealthClient::new(replicas.clone());
        let request = tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        };
        match tokio::time::timeout(limit, health.check(request)).await {
            Ok(Ok(answer)) if answer.get_ref().status() == ServingStatus::Serving => {
                replicas.prefer(index);
                return Ok(());
            }
            Ok(Ok(_)) => {
                answered.get_or_insert(index);
            }
            Ok(Err(status)) if status.code() != tonic::Code::Unavailable => {
                answered.get_or_insert(index);
            }
            Ok(Err(status)) => failures.push(format!("{address}: {}", status.message())),
            Err(_) => failures.push(format!(
                "{address}: no answer within {}",
                shoal::spec::units::format_duration(limit)
            )),
        }
    }
    match answered {
        Some(index) => {
            replicas.prefer(index);
            Ok(())
        }
        None => anyhow::bail!(
            "cannot reach any of the orchestrators ({HINT}): {}",
            failures.join("; ")
        ),
    }
}

/// Runs `transfer` (an upload or a download that counts the bytes it moves into `moved`),
/// failing it with DEADLINE_EXCEEDED once no byte has moved for `idle`. Transfers take as
/// long as their size needs, so they have no deadline; but a server that takes the call
/// and then stops reading or sending (a hung orchestrator) would hold one forever, HTTP/2
/// pings and all, as its connection stays up.
pub async fn unless_stalled<T>(
    idle: Duration,
    moved: &std::sync::atomic::AtomicU64,
    transfer: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    use std::sync::atomic::Ordering;
    let watchdog = async {
        let mut seen = moved.load(Ordering::Relaxed);
        let mut since = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(idle / 4).await;
            let now = moved.load(Ordering::Relaxed);
            if now != seen {
                (seen, since) = (now, tokio::time::Instant::now());
            } else if since.elapsed() >= idle {
                return;
            }
        }
    };
    tokio::select! {
        done = transfer => done,
        () = watchdog => Err(tonic::Status::deadline_exceeded(format!(
            "no data moved for {}",
            shoal::spec::units::format_duration(idle)
        ))
        .into()),
    }
}
