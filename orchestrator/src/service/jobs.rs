//! JobService: submitting, inspecting, watching and cancelling jobs, and fetching results.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures::Stream;
use shoal::proto::job_service_server::JobService;
use shoal::proto::{
    CancelJobRequest, CancelJobResponse, DownloadResultsRequest, ExecutionResult, GetJobRequest,
    GetJobResponse, GetLogsRequest, JobEvent, ListExecutionsRequest, ListExecutionsResponse,
    ListJobsRequest, ListJobsResponse, LogChunk, SubmitJobRequest, SubmitJobResponse,
    WatchJobRequest, job_event,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use super::storage::DownloadStream;
use super::{cid, job_id};
use crate::Orchestrator;
use crate::error::{Error, Result};
use shoal::spec::source::Source;
use shoal::spec::{ShardOrigin, ValidSpec};

/// Events read from the store per round trip.
const EVENT_PAGE: usize = 256;

/// Most `stored_cids` one submission may name (a job has at most 256 mounts and a program).
const MAX_STORED_CIDS: usize = 512;

/// JobService implementation.
#[derive(Debug, Clone)]
pub struct JobApi(Arc<Orchestrator>);

impl JobApi {
    pub fn new(orchestrator: Arc<Orchestrator>) -> Self {
        JobApi(orchestrator)
    }

    /// The job a request names: its whole id, or a unique prefix of it.
    async fn job_id(&self, text: &str) -> Result<String> {
        // A whole id in any spelling the id type takes (hyphenless too) first.
        if let Ok(id) = super::full_job_id(text) {
            return Ok(id);
        }
        match super::job_id_prefix(text) {
            Some(prefix) => self.0.read(|c| c.job_with_prefix(&prefix)).await,
            None => super::full_job_id(text),
        }
    }

    /// Validates and accepts a job: it is QUEUED once this returns, or already SCHEDULED
    /// when it was placed in the same commit (nothing else waited).
    async fn submit(
        &self,
        request: SubmitJobRequest,
    ) -> Result<Response<SubmitJobResponse>, Status> {
        let SubmitJobRequest {
            spec,
            idempotency_key: key,
            stored_cids,
        } = request;
        let spec = spec.ok_or_else(|| {
            Status::from(crate::error::Error::InvalidArgument(
                "spec: is required".into(),
            ))
        })?;
        let spec = ValidSpec::accept(spec, self.0.config().spec_defaults()).map_err(Error::from)?;
        let key_ok = key.len() <= 128 && key.bytes().all(|b| b.is_ascii_graphic());
        if !key_ok {
            return Err(Status::from(crate::error::Error::InvalidArgument(
                "idempotency_key: at most 128 printable ASCII characters, no spaces".into(),
            )));
        }
        // A retried submission is answered before anything is listed again (an S3 prefix
        // may list differently by now).
        if !key.is_empty()
            && let Some(job) = self.0.read(|c| c.resubmission(&key, spec.spec())).await?
        {
            // The first submission may still be committing, or have failed to.
            self.0.durable().await?;
            return Ok(Response::new(SubmitJobResponse { job: Some(job) }));
        }
        if stored_cids.len() > MAX_STORED_CIDS {
            return Err(Status::from(crate::error::Error::InvalidArgument(format!(
                "stored_cids: {} entries; at most {MAX_STORED_CIDS}",
                stored_cids.len()
            ))));
        }
        let stored_cids = stored_cids
            .iter()
            .enumerate()
            .map(|(i, text)| cid(&format!("stored_cids[{i}]"), text))
            .collect::<Result<Vec<_>>>()?;
        let content = self.0.content();
        // Before the spec's own CIDs: the client hashed these instead of uploading them, and
        // is told which ones to send (all of them at once, by index).
        let mut missing = Vec::new();
        for (i, cid) in stored_cids.iter().enumerate() {
            if !content.contains(cid).await.map_err(Status::from)? {
                missing.push(i);
            }
        }
        if let Some(&first) = missing.first() {
            return Err(missing_stored_cids(&missing, &stored_cids[first]));
        }
        // Every CID the job names must already be stored, or it could never run (URLs are
        // fetched by the executor) — unless IPFS gateways are configured, which executors
        // fetch the CIDs the store lacks from.
        let gateways = !self.0.config().ipfs_gateways.is_empty();
        let raw = spec.spec();
        let listed = spec
            .shard()
            .into_iter()
            .flat_map(|shard| match &shard.origin {
                ShardOrigin::List(sources) => sources
                    .iter()
                    .enumerate()
                    .map(|(j, source)| {
                        let i = shard.index;
                        (
                            format!("inputs[{i}].sources[{j}]"),
                            &raw.inputs[i].sources[j],
                            source,
                        )
                    })
                    .collect::<Vec<_>>(),
                // A sharded directory is listed below, which needs it in the store.
                ShardOrigin::Source(_) => Vec::new(),
            });
        let sources =
            std::iter::once(("program".to_owned(), &raw.program, spec.program()))
                .chain(spec.inputs().map(|(i, input, source)| {
                    (format!("inputs[{i}].source"), &input.source, source)
                }))
                .chain(listed);
        for (field, source, parsed) in sources {
            if let Source::Cid(cid) = parsed
                && !gateways
                && !content.contains(cid).await.map_err(Status::from)?
            {
                return Err(Status::from(crate::error::Error::NotFound(format!(
                    "{field}: {source} is not in the store and no IPFS gateway is configured; upload it first"
                ))));
            }
        }
        if spec.shard().is_some() {
            // Listing costs a store or S3 walk: not for a submission the queue would refuse.
            self.0.read(|c| c.check_room()).await?;
        }
        let (spec, shards) = super::shards::list_shards(&self.0, spec).await?;
        let trace_context = shoal::daemon::telemetry::context_map(&tracing::Span::current());
        let (job, new) = self
            .0
            .apply(|c| {
                let now = SystemTime::now();
                let (job, new) = c.submit_sharded(spec, &key, trace_context, shards, now)?;
                if new {
                    c.place_if_first(&job.id, now);
                }
                Ok((c.job(&job.id)?.clone(), new))
            })
            .await?;
        if !new {
            // Made by a concurrent submission with the same key, perhaps not yet durable.
            self.0.durable().await?;
        }
        tracing::info!(job_id = %job.id, "job accepted");
        Ok(Response::new(SubmitJobResponse { job: Some(job) }))
    }
}

/// NOT_FOUND for a submission whose `stored_cids` the store lacks: the message names the
/// first, the metadata lists every one by index.
fn missing_stored_cids(missing: &[usize], first: &shoal::content::cid::ContentId) -> Status {
    let indices = missing
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut status = Status::not_found(format!(
        "stored_cids[{}]: {first} is not in the store ({} of the listed CIDs are missing); upload them and submit again",
        missing[0],
        missing.len()
    ));
    if let Ok(value) = indices.parse() {
        status
            .metadata_mut()
            .insert(shoal::protocol::MISSING_STORED_CIDS, value);
    }
    status
}

type EventStream = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<SubmitJobResponse>, Status> {
        // The job's trace starts here, under the caller's span when it sent one; the span's
        // context is stored with the job so scheduling, possibly after a restart, and the
        // executor's spans join the same trace.
        let span = tracing::info_span!(
            "submit",
            otel.kind = "server",
            job_id = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_message = tracing::field::Empty,
        );
        shoal::daemon::telemetry::set_parent(
            &span,
            shoal::daemon::telemetry::remote_parent(request.metadata()),
        );
        let submitted = self
            .submit(request.into_inner())
            .instrument(span.clone())
            .await;
        match &submitted {
            Ok(response) => {
                if let Some(job) = &response.get_ref().job {
                    span.record("job_id", job.id.as_str());
                }
            }
            Err(status) => {
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_message", status.message());
            }
        }
        submitted
    }

    async fn get_job(
        &self,
        request: Request<GetJobRequest>,
    ) -> Result<Response<GetJobResponse>, Status> {
        let id = self.job_id(&request.into_inner().job_id).await?;
        let job = self.0.read(|c| c.job(&id).cloned()).await?;
        Ok(Response::new(GetJobResponse { job: Some(job) }))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let request = request.into_inner();
        if !request.page_token.is_empty() {
            job_id(&request.page_token).map_err(|_| {
                Status::from(crate::error::Error::InvalidArgument(
                    "page_token is not one this server issued".into(),
                ))
            })?;
        }
        let (jobs, next_page_token) = self.0.read(|c| c.list_jobs(&request)).await;
        Ok(Response::new(ListJobsResponse {
            jobs,
            next_page_token,
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<CancelJobResponse>, Status> {
        let request = request.into_inner();
        let id = self.job_id(&request.job_id).await?;
        if request.reason.len() > shoal::spec::limits::MAX_REASON_BYTES {
            return Err(Status::from(crate::error::Error::InvalidArgument(format!(
                "reason: at most {} bytes (it is stored with the job and shown in listings)",
                shoal::spec::limits::MAX_REASON_BYTES
            ))));
        }
        let job = self
            .0
            .apply(|c| c.cancel(&id, &request.reason, SystemTime::now()))
            .await?;
        tracing::info!(job_id = %id, "job cancelled");
        Ok(Response::new(CancelJobResponse { job: Some(job) }))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let request = request.into_inner();
        let id = self.job_id(&request.job_id).await?;
        self.0.read(|c| c.job(&id).map(|_| ())).await?;
        let (tx, rx) = mpsc::channel(64);
        let orchestrator = self.0.clone();
        self.0.spawn(async move {
            let result = watch(
                &orchestrator,
                &id,
                request.from_sequence,
                request.states_only,
                &tx,
            )
            .await;
            orchestrator.unsubscribe(&id);
            if let Err(error) = result {
                let _ = tx.send(Err(error.into())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type GetLogsStream = LogStream;

    async fn get_logs(
        &self,
        request: Request<GetLogsRequest>,
    ) -> Result<Response<Self::GetLogsStream>, Status> {
        let request = request.into_inner();
        let id = self.job_id(&request.job_id).await?;
        let job = self.0.read(|c| c.job(&id).cloned()).await?;
        let partitioned = job.spec.as_ref().is_some_and(|s| s.partitions > 0);
        let execution_id = if !request.execution_id.is_empty() {
            request.execution_id
        } else if partitioned {
            // Each partition has logs of its own; there is no one execution to default to.
            return Err(Status::from(Error::FailedPrecondition(format!(
                "job {id} has partitions: name one of their executions (ListExecutions; `shoal job logs {id} --partition I`)"
            ))));
        } else {
            job.execution_id
        };
        let (tx, rx) = mpsc::channel(64);
        let store = self.0.store().clone();
        self.0.spawn(async move {
            let mut next = 1;
            loop {
                let events = match store.events(&id, next, EVENT_PAGE).await {
                    Ok(events) => events,
                    Err(error) => {
                        let _ = tx.send(Err(error.into())).await;
                        return;
                    }
                };
                let count = events.len();
                for event in events {
                    next = event.sequence + 1;
                    if let Some(job_event::Event::Log(chunk)) = event.event
                        && chunk.execution_id == execution_id
                        && tx.send(Ok(chunk)).await.is_err()
                    {
                        return;
                    }
                }
                if count < EVENT_PAGE {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_executions(
        &self,
        request: Request<ListExecutionsRequest>,
    ) -> Result<Response<ListExecutionsResponse>, Status> {
        let request = request.into_inner();
        let id = self.job_id(&request.job_id).await?;
        let executions = match request.partition {
            None => self.0.read(|c| c.executions_of(&id)).await?,
            Some(index) => self.0.read(|c| c.partition_executions(&id, index)).await?,
        };
        Ok(Response::new(ListExecutionsResponse { executions }))
    }

    type DownloadResultsStream = DownloadStream;

    async fn download_results(
        &self,
        request: Request<DownloadResultsRequest>,
    ) -> Result<Response<Self::DownloadResultsStream>, Status> {
        let request = request.into_inner();
        let id = self.job_id(&request.job_id).await?;
        let result = self
            .0
            .read(|c| -> Result<Option<ExecutionResult>> {
                let job = c.job(&id)?;
                if let Some(result) = &job.result {
                    return Ok(Some(result.clone()));
                }
                // A failed job may still have partial results (stdout, stderr).
                Ok(c.execution(&job.execution_id)
                    .ok()
                    .and_then(|e| e.result.clone()))
            })
            .await?
            .unwrap_or_default();
        if !result.published_to.is_empty() {
            return Err(Status::from(crate::error::Error::FailedPrecondition(
                format!(
                    "job {id}'s results were published to {}, not to this store; fetch them from \
                 there (`shoal job get` does)",
                    result.published_to
                ),
            )));
        }
        let result_cid = Some(result.result_cid)
            .filter(|cid| !cid.is_empty())
            .ok_or_else(|| {
                Status::from(crate::error::Error::FailedPrecondition(format!(
                    "job {id} has no results (yet)"
                )))
            })?;
        let cid = cid("result_cid", &result_cid)?;
        let content = self.0.content();
        let stream = self
            .0
            .once_committed(|| content.download(&cid, &request.path, 0))
            .await?;
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Sends a job's events from `from` on: the stored history first, then new events as they
/// become durable, until the event that makes the job terminal.
async fn watch(
    orchestrator: &Orchestrator,
    job_id: &str,
    from: u64,
    states_only: bool,
    tx: &mpsc::Sender<Result<JobEvent, Status>>,
) -> Result<()> {
    // Subscribe before reading, so an event committed in between still wakes us.
    let mut changes = orchestrator.subscribe(job_id);
    let shutdown = orchestrator.shutdown_token().clone();
    let mut next = from.max(1);
    loop {
        changes.borrow_and_update();
        let events = orchestrator
            .store()
            .events(job_id, next, EVENT_PAGE)
            .await?;
        let count = events.len();
        for event in events {
            next = event.sequence + 1;
            let terminal = matches!(
                &event.event,
                Some(job_event::Event::StateChange(change)) if change.state().is_terminal()
            );
            let is_log = matches!(&event.event, Some(job_event::Event::Log(_)));
            if !(states_only && is_log) && tx.send(Ok(event)).await.is_err() {
                return Ok(());
            }
            if terminal {
                return Ok(());
            }
        }
        if count == EVENT_PAGE {
            continue;
        }
        // Resuming after the end of a finished job: nothing more will come.
        let (terminal, last) = orchestrator
            .read(|c| {
                c.job(job_id).map(|j| {
                    (
                        j.state().is_terminal(),
                        c.last_sequence(job_id).unwrap_or(0),
                    )
                })
            })
            .await?;
        if terminal && next > last {
            return Ok(());
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return Ok(()) },
            _ = tx.closed() => return Ok(()),
            _ = shutdown.cancelled() => return Err(Error::ShuttingDown),
        }
    }
}
