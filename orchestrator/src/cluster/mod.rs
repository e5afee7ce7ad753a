//! The orchestrator's in-memory view of jobs, executions and executors, and every transition
//! between their states.
//!
//! `Cluster` does no I/O. Each transition records its effects (records to persist, messages
//! for executors, watchers to wake, whether to run the scheduler); the caller persists them
//! and only then lets them out (see `Orchestrator::apply`), so nothing outside the
//! orchestrator ever acts on a state that is not yet durable.
//!
//! The transitions are grouped by what they are about: `jobs` (submit, cancel),
//! `scheduling` (placing queued jobs, queue timeouts, the assignment), `executors`
//! (register, heartbeat, drain, cordon, the lease sweep, acknowledgements) and
//! `executions` (the executors' reports, and how an execution's end decides its job's).
//! This file holds the state itself, its restore from the store, and the queries.

mod executions;
mod executors;
mod jobs;
mod partitions;
mod scheduling;
mod shards;
#[cfg(test)]
mod testing;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use shoal::proto::{
    Capacity, Execution, ExecutionResult, Failure, FailureKind, Job, JobEvent, JobState,
    ListJobsRequest, Node, NodeState, OrchestratorMessage, StateChange, job_event,
    orchestrator_message,
};
use shoal::spec::{JobRules, ValidSpec};

use crate::error::{Error, Result};
use crate::metrics::{self, Metrics};
use crate::records::{Snapshot, Write};

/// The stream a message is for: an executor, and the generation of its registration (a
/// message for an earlier stream of the same executor is not delivered on a later one).
/// The service layer owns the streams themselves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Recipient {
    pub executor_id: String,
    pub generation: u64,
}

/// Timing and bounds the state machine needs.
#[derive(Debug, Clone, Copy)]
pub struct ClusterConfig {
    pub heartbeat_interval: Duration,
    /// An executor silent (or disconnected) for this long is lost.
    pub lease: Duration,
    /// Most jobs waiting in the queue; submissions past it get RESOURCE_EXHAUSTED.
    pub max_queued: usize,
    /// An assignment the executor has not acknowledged (reported on) within this long is
    /// taken back: cancelled there, failed EXECUTOR_LOST and retried under the job's policy.
    pub ack_timeout: Duration,
    /// The most an executor may claim in `Register.capacity`; a registration claiming
    /// more is refused (a lying executor would otherwise draw every job to itself).
    pub max_capacity: Capacity,
    /// The most log bytes kept per execution and stream (stdout, stderr); chunks past it are
    /// dropped, whatever the executor sends.
    pub max_log_bytes: u64,
}

impl Default for ClusterConfig {
    /// The orchestrator's defaults.
    fn default() -> Self {
        ClusterConfig {
            heartbeat_interval: Duration::from_secs(2),
            lease: Duration::from_secs(10),
            max_queued: 100_000,
            ack_timeout: Duration::from_secs(5),
            max_capacity: Capacity {
                slots: 256,
                memory_bytes: 1 << 40,
            },
            max_log_bytes: 64 << 20,
        }
    }
}

/// What a batch of transitions wants done once it is durable.
#[derive(Default)]
pub struct Effects {
    pub writes: Vec<Write>,
    pub messages: Vec<(Recipient, OrchestratorMessage)>,
    /// Jobs with new events, and their latest sequence number.
    pub events: Vec<(String, u64)>,
    /// Capacity or the queue changed: run the scheduler.
    pub schedule: bool,
    /// Partitioned jobs whose partitions have all ended: their result trees are to be
    /// built (then [`Cluster::partitions_finished`]).
    pub finalize: Vec<String>,
    /// The `AssignBatch` among `messages` that further executions of a job placed on a
    /// stream join, by stream and job.
    open_batches: HashMap<(Recipient, String), usize>,
}

struct JobEntry {
    job: Job,
    /// The typed values of the job's spec the scheduler and the retry rule use.
    rules: JobRules,
    last_sequence: u64,
    queued_since: SystemTime,
    /// `Waiting` events recorded in this stay in the queue (capped at [`MAX_WAITING_NOTES`]).
    waiting_notes: u32,
    /// A fanned-out job's partitions (`spec.partitions` > 0).
    partitions: Option<Box<partitions::Partitions>>,
}

/// Most `Waiting` events one stay in the queue records: enough for a person to follow why a
/// job waits, few enough that a flapping fleet cannot grow a job's history without end.
const MAX_WAITING_NOTES: u32 = 32;

struct NodeLink {
    generation: u64,
    /// The executor process that registered this stream (`Register.instance_id`).
    instance_id: String,
    /// The highest report sequence number received on this stream.
    received_through: u64,
    /// What the executor said it can do in its `Register`.
    features: shoal::proto::Features,
}

struct NodeEntry {
    node: Node,
    link: Option<NodeLink>,
    last_seen: Instant,
    /// The memory its executions' jobs ask for, summed: kept up to date as executions are
    /// added to and removed from `node.running_execution_ids`, because every placement
    /// reads it.
    allocated_memory: u64,
}

impl NodeEntry {
    fn new(node: Node, last_seen: Instant) -> Self {
        NodeEntry {
            node,
            link: None,
            last_seen,
            allocated_memory: 0,
        }
    }

    /// Counts an execution whose job asks for `memory` against this executor.
    fn add_running(&mut self, execution_id: String, memory: u64) {
        self.node.running_execution_ids.push(execution_id);
        self.allocated_memory = self.allocated_memory.saturating_add(memory);
    }

    /// No longer counts the execution, if it was counted.
    fn remove_running(&mut self, execution_id: &str, memory: u64) {
        let before = self.node.running_execution_ids.len();
        self.node
            .running_execution_ids
            .retain(|id| id != execution_id);
        if self.node.running_execution_ids.len() < before {
            self.allocated_memory = self.allocated_memory.saturating_sub(memory);
        }
    }
}

/// All jobs, executions and executors.
pub struct Cluster {
    config: ClusterConfig,
    jobs: BTreeMap<String, JobEntry>,
    executions: HashMap<String, Execution>,
    /// Queued job ids; ids are time-ordered, so iteration order is FIFO.
    queue: BTreeSet<String>,
    nodes: BTreeMap<String, NodeEntry>,
    /// Next expected log offset per (execution, stream), to drop resent chunks.
    log_offsets: HashMap<(String, i32), u64>,
    /// Assignments sent but not yet acknowledged by their executor, and when they were
    /// made (see [`ClusterConfig::ack_timeout`]).
    unacknowledged: HashMap<String, SystemTime>,
    /// Job ids by the idempotency key they were submitted with.
    idempotency_keys: HashMap<String, String>,
    next_generation: u64,
    effects: Effects,
    metrics: std::sync::Arc<Metrics>,
}

impl Cluster {
    /// Rebuilds the state from the store after a (re)start. Executors are all disconnected
    /// until they register again; those that do not come back within a lease lose their
    /// executions.
    pub fn restore(snapshot: Snapshot, config: ClusterConfig, now: Instant) -> Self {
        let mut cluster = Cluster {
            config,
            jobs: BTreeMap::new(),
            executions: HashMap::new(),
            queue: BTreeSet::new(),
            nodes: BTreeMap::new(),
            log_offsets: snapshot.log_ends.into_iter().collect(),
            unacknowledged: HashMap::new(),
            idempotency_keys: HashMap::new(),
            next_generation: 1,
            effects: Effects::default(),
            metrics: std::sync::Arc::new(Metrics::new()),
        };
        let sequences: HashMap<_, _> = snapshot.last_sequences.into_iter().collect();
        // Unfinished jobs whose stored spec no longer passes the checks (they tightened
        // since it was accepted): failed below, saying why, rather than run on guesses.
        let mut unusable = Vec::new();
        for job in snapshot.jobs {
            let rules = match job.spec.clone().map(ValidSpec::effective) {
                Some(Ok(spec)) => spec.rules().clone(),
                Some(Err(error)) => {
                    if !job.state().is_terminal() {
                        unusable.push((job.id.clone(), error.to_string()));
                    }
                    JobRules::default()
                }
                None => {
                    if !job.state().is_terminal() {
                        unusable.push((job.id.clone(), "the job has no spec".to_owned()));
                    }
                    JobRules::default()
                }
            };
            if job.state() == JobState::Queued {
                cluster.queue.insert(job.id.clone());
            }
            if !job.idempotency_key.is_empty() {
                cluster
                    .idempotency_keys
                    .insert(job.idempotency_key.clone(), job.id.clone());
            }
            let queued_since = job
                .updated_at
                .and_then(|t| SystemTime::try_from(t).ok())
                .unwrap_or_else(SystemTime::now);
            let last_sequence = sequences.get(&job.id).copied().unwrap_or(0);
            cluster.jobs.insert(
                job.id.clone(),
                JobEntry {
                    job,
                    rules,
                    last_sequence,
                    queued_since,
                    waiting_notes: 0,
                    partitions: None,
                },
            );
        }
        for (job_id, reason) in unusable {
            cluster.queue.remove(&job_id);
            let message = format!("the stored spec is no longer valid: {reason}");
            let failure = Failure::new(FailureKind::Internal, message.clone());
            let now = SystemTime::now();
            cluster.set_job_state(&job_id, JobState::Failed, message, Some(failure), None, now);
        }
        for mut node in snapshot.nodes {
            node.state = NodeState::Disconnected as i32;
            node.running_execution_ids.clear();
            cluster
                .nodes
                .insert(node.id.clone(), NodeEntry::new(node, now));
        }
        for execution in snapshot.executions {
            if !execution.state().is_terminal() {
                let memory = cluster.memory_of(&execution.job_id);
                let entry = cluster
                    .nodes
                    .entry(execution.executor_id.clone())
                    .or_insert_with(|| {
                        let node = Node {
                            id: execution.executor_id.clone(),
                            state: NodeState::Disconnected as i32,
                            ..Default::default()
                        };
                        NodeEntry::new(node, now)
                    });
                entry.add_running(execution.id.clone(), memory);
            }
            cluster.executions.insert(execution.id.clone(), execution);
        }
        cluster.restore_partitions(snapshot.shards.into_iter().collect());
        cluster.effects.schedule = true;
        cluster
    }

    /// Replaces the state with what the store holds, after commits failed (a full disk):
    /// the transitions whose writes were lost are forgotten with them, so no executor slot
    /// stays held by an assignment that was never sent. The caller must end every executor
    /// stream: reports sent on them may have been lost with the failed commits, and
    /// registering again (with the executions still running and the recent finished
    /// reports) is the reconciliation that recovers them. Until then executors count as
    /// disconnected, with a lease to come back, as after a restart; generations go on from
    /// where they were, so no message for an old stream reaches a new one.
    pub fn reload(&mut self, snapshot: Snapshot, now: Instant) {
        let mut fresh = Cluster::restore(snapshot, self.config, now);
        fresh.metrics = self.metrics.clone();
        fresh.next_generation = self.next_generation;
        *self = fresh;
    }

    /// The metrics this state machine updates.
    pub fn metrics(&self) -> std::sync::Arc<Metrics> {
        self.metrics.clone()
    }

    /// Sets the gauges that describe the present state, for a scrape.
    pub fn refresh_metrics(&self) {
        let mut by_state: HashMap<JobState, i64> = HashMap::new();
        for entry in self.jobs.values() {
            *by_state.entry(entry.job.state()).or_default() += 1;
        }
        for state in (1..=8).filter_map(|n| JobState::try_from(n).ok()) {
            let count = by_state.get(&state).copied().unwrap_or(0);
            self.metrics
                .jobs
                .get_or_create(&metrics::job_state(state))
                .set(count);
        }
        self.metrics.queue_depth.set(self.queue.len() as i64);
        let connected = self
            .nodes
            .values()
            .filter(|n| n.link.is_some() && n.node.state() == NodeState::Connected)
            .count();
        self.metrics.executors_connected.set(connected as i64);
        self.metrics
            .executor_slots_free
            .set(i64::try_from(self.free_slots()).unwrap_or(i64::MAX));
    }

    /// Takes the effects recorded since the last call.
    pub fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.effects)
    }

    /// The id of the one job whose id starts with `prefix` (as git and docker take a
    /// unique prefix): NOT_FOUND if none does, INVALID_ARGUMENT naming a few if several do.
    pub fn job_with_prefix(&self, prefix: &str) -> Result<String> {
        let mut matches = self
            .jobs
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .map(|(id, _)| id)
            .take_while(|id| id.starts_with(prefix));
        let Some(first) = matches.next() else {
            return Err(Error::NotFound(format!("no job id starts with {prefix}")));
        };
        let others: Vec<&String> = matches.take(3).collect();
        if others.is_empty() {
            return Ok(first.clone());
        }
        let mut shown = vec![first.as_str()];
        shown.extend(others.iter().take(2).map(|id| id.as_str()));
        let more = if others.len() > 2 { ", ..." } else { "" };
        Err(Error::InvalidArgument(format!(
            "job id prefix {prefix} is ambiguous: {}{more}; give more of it",
            shown.join(", ")
        )))
    }

    /// One job.
    pub fn job(&self, id: &str) -> Result<&Job> {
        self.jobs
            .get(id)
            .map(|e| &e.job)
            .ok_or_else(|| Error::NotFound(format!("no job {id}")))
    }

    /// The latest event sequence number of a job.
    pub fn last_sequence(&self, id: &str) -> Result<u64> {
        self.jobs
            .get(id)
            .map(|e| e.last_sequence)
            .ok_or_else(|| Error::NotFound(format!("no job {id}")))
    }

    /// One execution.
    pub fn execution(&self, id: &str) -> Result<&Execution> {
        self.executions
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("no execution {id}")))
    }

    /// Jobs newest first, filtered and paginated as `request` says.
    pub fn list_jobs(&self, request: &ListJobsRequest) -> (Vec<Job>, String) {
        let page_size = match request.page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let states: HashSet<i32> = request.states.iter().copied().collect();
        let range = if request.page_token.is_empty() {
            self.jobs.range::<String, _>(..)
        } else {
            self.jobs.range::<String, _>(..request.page_token.clone())
        };
        let mut jobs = Vec::new();
        let mut next = String::new();
        for entry in range.rev().map(|(_, entry)| entry) {
            let job = &entry.job;
            if !states.is_empty() && !states.contains(&job.state) {
                continue;
            }
            if !request
                .labels
                .iter()
                .all(|(k, v)| job.spec.as_ref().and_then(|s| s.labels.get(k)) == Some(v))
            {
                continue;
            }
            if jobs.len() == page_size {
                // There is at least one more match: the next page starts after this one.
                next = jobs.last().map(|j: &Job| j.id.clone()).unwrap_or_default();
                break;
            }
            jobs.push(listed(job));
        }
        (jobs, next)
    }

    /// The executions of one partition of a partitioned job, oldest first.
    pub fn partition_executions(&self, job_id: &str, index: u32) -> Result<Vec<Execution>> {
        let count = self.job(job_id)?.spec.as_ref().map_or(0, |s| s.partitions);
        if count == 0 {
            return Err(Error::InvalidArgument(format!(
                "partition: job {job_id} has no partitions"
            )));
        }
        if index >= count {
            return Err(Error::InvalidArgument(format!(
                "partition: {index} is past the job's {count} partitions (0 to {})",
                count - 1
            )));
        }
        let mut executions = self.executions_of(job_id)?;
        executions.retain(|e| e.partition == index);
        Ok(executions)
    }

    /// Every execution of a job, oldest first.
    pub fn executions_of(&self, job_id: &str) -> Result<Vec<Execution>> {
        self.job(job_id)?;
        let mut executions: Vec<_> = self
            .executions
            .values()
            .filter(|e| e.job_id == job_id)
            .cloned()
            .collect();
        executions.sort_by_key(|e| e.attempt);
        Ok(executions)
    }

    /// Every known executor, connected ones first.
    pub fn nodes(&self) -> Vec<Node> {
        let mut nodes: Vec<_> = self.nodes.values().map(|e| self.node_view(e)).collect();
        nodes.sort_by_key(|n| (n.state != NodeState::Connected as i32, n.id.clone()));
        nodes
    }

    /// One executor.
    pub fn node(&self, id: &str) -> Result<Node> {
        self.nodes
            .get(id)
            .map(|e| self.node_view(e))
            .ok_or_else(|| Error::NotFound(format!("no executor {id}")))
    }

    fn node_view(&self, entry: &NodeEntry) -> Node {
        let mut node = entry.node.clone();
        node.allocated = Some(self.allocated(entry));
        node
    }

    fn allocated(&self, entry: &NodeEntry) -> Capacity {
        Capacity {
            slots: u32::try_from(entry.node.running_execution_ids.len()).unwrap_or(u32::MAX),
            memory_bytes: entry.allocated_memory,
        }
    }

    /// The memory the job of `job_id` asks for each execution (0 for a job not held).
    fn memory_of(&self, job_id: &str) -> u64 {
        self.jobs.get(job_id).map_or(0, |j| j.rules.memory_bytes)
    }

    /// Appends a state-change event and persists the job.
    fn set_job_state(
        &mut self,
        job_id: &str,
        state: JobState,
        message: String,
        failure: Option<Failure>,
        result: Option<ExecutionResult>,
        now: SystemTime,
    ) {
        let Some(entry) = self.jobs.get_mut(job_id) else {
            return;
        };
        let job = &mut entry.job;
        job.state = state as i32;
        job.updated_at = Some(shoal::proto::timestamp(now));
        if state.is_terminal() {
            self.metrics
                .jobs_finished
                .get_or_create(&metrics::job_state(state))
                .inc();
        }
        if state == JobState::Queued {
            entry.queued_since = now;
            entry.waiting_notes = 0;
            job.failure = None;
        }
        if failure.is_some() {
            job.failure = failure.clone();
        }
        if result.is_some() {
            job.result = result.clone();
        }
        job.status_message = message.clone();
        let change = StateChange {
            state: state as i32,
            execution_id: job.execution_id.clone(),
            message,
            failure,
            result,
            partitions: job.partitions,
        };
        let job = job.clone();
        self.effects.writes.push(Write::Job(job));
        self.push_event(job_id, job_event::Event::StateChange(change), now);
    }

    fn push_event(&mut self, job_id: &str, event: job_event::Event, now: SystemTime) {
        let Some(entry) = self.jobs.get_mut(job_id) else {
            return;
        };
        entry.last_sequence += 1;
        let sequence = entry.last_sequence;
        self.effects.writes.push(Write::Event {
            job_id: job_id.to_owned(),
            event: JobEvent {
                sequence,
                time: Some(shoal::proto::timestamp(now)),
                event: Some(event),
            },
        });
        self.effects.events.push((job_id.to_owned(), sequence));
    }

    fn send_to(&mut self, executor_id: &str, message: orchestrator_message::Message) {
        if let Some(link) = self.nodes.get(executor_id).and_then(|n| n.link.as_ref()) {
            let recipient = Recipient {
                executor_id: executor_id.to_owned(),
                generation: link.generation,
            };
            self.effects.messages.push((
                recipient,
                OrchestratorMessage {
                    message: Some(message),
                },
            ));
        }
    }

    /// Whether an execution is the one in charge of its job (or of its partition) now.
    fn is_current(&self, execution: &Execution) -> bool {
        self.jobs.get(&execution.job_id).is_some_and(|j| {
            !j.job.state().is_terminal()
                && match &j.partitions {
                    Some(_) => self.current_partition(execution).is_some(),
                    None => j.job.execution_id == execution.id,
                }
        })
    }

    /// Whether a job fans out to partitions.
    fn is_partitioned(&self, job_id: &str) -> bool {
        self.jobs
            .get(job_id)
            .is_some_and(|j| j.partitions.is_some())
    }

    fn live_node(&mut self, executor_id: &str, generation: u64) -> Option<&mut NodeEntry> {
        self.nodes
            .get_mut(executor_id)
            .filter(|n| n.link.as_ref().is_some_and(|l| l.generation == generation))
    }
}

/// Most bytes of text an executor's report may store (a failure message, a publish
/// location); the rest is cut.
const MAX_REPORTED_TEXT: usize = 4096;

/// Executor ids name executors in listings, logs and metrics: 1-253 characters of letters,
/// digits, `.`, `_` and `-` (a host name fits), so no id can carry a NUL, a newline or a
/// `/` into them (a forged row in `node list`, say).
fn check_executor_id(id: &str) -> Result<()> {
    let fine = !id.is_empty()
        && id.len() <= 253
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if fine {
        return Ok(());
    }
    let shown: String = id.chars().take(64).collect();
    Err(Error::InvalidArgument(format!(
        "register.executor_id {shown:?} must be 1-253 characters of letters, digits, '.', '_' \
         and '-'"
    )))
}

/// A job as a listing shows it: whole, but for a sharded input's `sources` (up to 10,000
/// of them, in every job of a page), which `GetJob` gives.
fn listed(job: &Job) -> Job {
    let sharded = |spec: &shoal::proto::JobSpec| spec.inputs.iter().any(|i| !i.sources.is_empty());
    if !job.spec.as_ref().is_some_and(sharded) {
        return job.clone();
    }
    let mut job = job.clone();
    if let Some(spec) = job.spec.as_mut() {
        for input in &mut spec.inputs {
            input.sources.clear();
        }
    }
    job
}
