//! The orchestrator's in-memory view of jobs, executions and executors, and every transition
//! between their states.
//!
//! `Cluster` does no I/O. Each transition records its effects (records to persist, messages
//! for executors, watchers to wake, whether to run the scheduler); the caller persists them
//! and only then lets them out (see `Orchestrator::apply`), so nothing outside the
//! orchestrator ever acts on a state that is not yet durable.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::time::{Duration, Instant, SystemTime};

use shoal::proto::{
    Capacity, Execution, ExecutionFinished, ExecutionResult, ExecutionState, Failure, FailureKind,
    Job, JobEvent, JobSpec, JobState, ListJobsRequest, LogChunk, Node, NodeState,
    OrchestratorMessage, Register, StateChange, job_event, orchestrator_message,
};
use shoal::selector::Selector;
use shoal::spec::{self, SpecDefaults};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::metrics::{self, Metrics};
use crate::store::{Snapshot, Write};

/// Where messages for one connected executor go (its Connect response stream), and the
/// switch that ends that stream if it stays full (a stuck executor is disconnected; its
/// reconnection reconciles what it missed).
#[derive(Debug, Clone)]
pub struct ExecutorSender {
    pub tx: mpsc::Sender<Result<OrchestratorMessage, tonic::Status>>,
    pub stuck: tokio_util::sync::CancellationToken,
}

impl ExecutorSender {
    pub fn new(tx: mpsc::Sender<Result<OrchestratorMessage, tonic::Status>>) -> Self {
        ExecutorSender {
            tx,
            stuck: tokio_util::sync::CancellationToken::new(),
        }
    }
}

/// Timing and defaults the state machine needs.
#[derive(Debug, Clone, Copy)]
pub struct ClusterConfig {
    pub heartbeat_interval: Duration,
    /// An executor silent (or disconnected) for this long is lost.
    pub lease: Duration,
    pub defaults: SpecDefaults,
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
            defaults: SpecDefaults {
                timeout: Duration::from_secs(3600),
                queue_timeout: Duration::from_secs(24 * 3600),
            },
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
    pub messages: Vec<(ExecutorSender, OrchestratorMessage)>,
    /// Jobs with new events, and their latest sequence number.
    pub events: Vec<(String, u64)>,
    /// Capacity or the queue changed: run the scheduler.
    pub schedule: bool,
}

struct JobEntry {
    job: Job,
    last_sequence: u64,
    queued_since: SystemTime,
}

struct NodeLink {
    generation: u64,
    sender: ExecutorSender,
    /// The executor process that registered this stream (`Register.instance_id`).
    instance_id: String,
    /// The highest report sequence number received on this stream.
    received_through: u64,
}

struct NodeEntry {
    node: Node,
    link: Option<NodeLink>,
    last_seen: Instant,
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
        for job in snapshot.jobs {
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
                    last_sequence,
                    queued_since,
                },
            );
        }
        for mut node in snapshot.nodes {
            node.state = NodeState::Disconnected as i32;
            node.running_execution_ids.clear();
            cluster.nodes.insert(
                node.id.clone(),
                NodeEntry {
                    node,
                    link: None,
                    last_seen: now,
                },
            );
        }
        for execution in snapshot.executions {
            if !execution.state().is_terminal() {
                let entry = cluster
                    .nodes
                    .entry(execution.executor_id.clone())
                    .or_insert_with(|| NodeEntry {
                        node: Node {
                            id: execution.executor_id.clone(),
                            state: NodeState::Disconnected as i32,
                            ..Default::default()
                        },
                        link: None,
                        last_seen: now,
                    });
                entry.node.running_execution_ids.push(execution.id.clone());
            }
            cluster.executions.insert(execution.id.clone(), execution);
        }
        cluster.effects.schedule = true;
        cluster
    }

    /// Replaces the state with what the store holds, after commits failed (a full disk):
    /// the transitions whose writes were lost are forgotten with them, so no executor slot
    /// stays held by an assignment that was never sent. Every executor stream is ended:
    /// reports sent on them may have been lost with the failed commits, and registering
    /// again (with the executions still running and the recent finished reports) is the
    /// reconciliation that recovers them. Until then executors count as disconnected, with
    /// a lease to come back, as after a restart.
    pub fn reload(&mut self, snapshot: Snapshot, now: Instant) {
        for link in self.nodes.values().filter_map(|n| n.link.as_ref()) {
            link.sender.stuck.cancel();
        }
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

    // ---- queries ----

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
            jobs.push(job.clone());
        }
        (jobs, next)
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
        let mut allocated = Capacity::default();
        for id in &entry.node.running_execution_ids {
            allocated.slots += 1;
            allocated.memory_bytes += self
                .executions
                .get(id)
                .and_then(|e| self.jobs.get(&e.job_id))
                .map(|j| job_memory(&j.job))
                .unwrap_or(0);
        }
        allocated
    }

    // ---- job transitions ----

    /// Accepts a validated spec: the job is QUEUED.
    /// `trace_context` is the W3C context of the job's trace (empty when traces are off).
    pub fn submit(
        &mut self,
        spec: JobSpec,
        trace_context: HashMap<String, String>,
        now: SystemTime,
    ) -> Result<Job> {
        self.submit_once(spec, "", trace_context, now)
            .map(|(job, _)| job)
    }

    /// Like [`submit`](Self::submit), with the client's idempotency key (empty for none):
    /// a key already used returns its job instead (`false`: not new); with a different
    /// spec it is refused.
    pub fn submit_once(
        &mut self,
        mut spec: JobSpec,
        idempotency_key: &str,
        trace_context: HashMap<String, String>,
        now: SystemTime,
    ) -> Result<(Job, bool)> {
        spec::validate(&spec)?;
        if let Some(id) = self.idempotency_keys.get(idempotency_key) {
            let existing = self.job(id)?.clone();
            let mut defaulted = spec.clone();
            spec::apply_defaults(&mut defaulted, self.config.defaults);
            if existing.spec.as_ref() != Some(&defaulted) {
                return Err(Error::AlreadyExists(format!(
                    "idempotency_key was used for job {id}, with a different spec"
                )));
            }
            return Ok((existing, false));
        }
        if self.queue.len() >= self.config.max_queued {
            return Err(Error::ResourceExhausted(format!(
                "the queue is full ({} jobs waiting); try again later",
                self.queue.len()
            )));
        }
        spec::apply_defaults(&mut spec, self.config.defaults);
        let memory = spec.resources.map(|r| r.memory_bytes).unwrap_or(0);
        let largest = self
            .nodes
            .values()
            .filter_map(|n| n.node.capacity.map(|c| c.memory_bytes))
            .max();
        if let Some(largest) = largest
            && memory > largest
        {
            // Known executors could never take it: say so now, not after the queue timeout.
            return Err(Error::InvalidArgument(format!(
                "resources.memory_bytes: {} is more than any executor offers (the largest \
                 offers {})",
                shoal::units::format_size(memory),
                shoal::units::format_size(largest)
            )));
        }
        let id = shoal::ids::JobId::new().to_string();
        let job = Job {
            id: id.clone(),
            spec: Some(spec),
            state: JobState::Unspecified as i32,
            created_at: Some(shoal::proto::timestamp(now)),
            trace_context,
            idempotency_key: idempotency_key.to_owned(),
            ..Default::default()
        };
        if !idempotency_key.is_empty() {
            self.idempotency_keys
                .insert(idempotency_key.to_owned(), id.clone());
        }
        self.jobs.insert(
            id.clone(),
            JobEntry {
                job,
                last_sequence: 0,
                queued_since: now,
            },
        );
        self.set_job_state(&id, JobState::Queued, "queued".into(), None, None, now);
        self.queue.insert(id.clone());
        self.metrics.jobs_submitted.inc();
        self.effects.schedule = true;
        Ok((self.job(&id)?.clone(), true))
    }

    /// Places a just-submitted job in the submitting transition when no other job waits, so
    /// at low load a job is accepted and assigned after one commit rather than two (the
    /// submit's, then the scheduler's; B3 in docs/PERFORMANCE.md). Behind other queued
    /// jobs it is left to the scheduler loop, which places the queue oldest first, many
    /// jobs per pass.
    pub fn place_if_first(&mut self, job_id: &str, now: SystemTime) {
        if self.queue.len() == 1 && self.queue.contains(job_id) {
            self.schedule_placements(now);
        }
    }

    /// Cancels a job. A queued job ends at once; a running one is told to stop and the job
    /// is CANCELLED now, while its execution records the executor's confirmation later.
    pub fn cancel(&mut self, job_id: &str, reason: &str, now: SystemTime) -> Result<Job> {
        let job = self.job(job_id)?;
        if job.state().is_terminal() {
            return Err(Error::FailedPrecondition(format!(
                "job {job_id} is already {}",
                job.state().short_name()
            )));
        }
        let execution_id = job.execution_id.clone();
        self.queue.remove(job_id);
        if let Some(execution) = self.executions.get(&execution_id)
            && !execution.state().is_terminal()
        {
            let executor_id = execution.executor_id.clone();
            self.send_to(
                &executor_id,
                orchestrator_message::Message::Cancel(shoal::proto::Cancel {
                    execution_id: execution_id.clone(),
                    reason: reason.to_owned(),
                }),
            );
        }
        let message = if reason.is_empty() {
            "cancelled by a user".to_owned()
        } else {
            format!("cancelled: {reason}")
        };
        let failure = Failure::new(FailureKind::Cancelled, message.clone());
        self.set_job_state(
            job_id,
            JobState::Cancelled,
            message,
            Some(failure),
            None,
            now,
        );
        Ok(self.job(job_id)?.clone())
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
            self.effects.messages.push((
                link.sender.clone(),
                OrchestratorMessage {
                    message: Some(message),
                },
            ));
        }
    }

    // ---- scheduling ----

    /// Places queued jobs, oldest first, on connected executors with a free slot, enough
    /// memory and matching labels; fails jobs past their queue timeout; records for every
    /// job left waiting why it waits. This full pass runs on every sweep tick.
    pub fn schedule(&mut self, now: SystemTime) {
        self.schedule_pass(now, true);
    }

    /// Places what fits after a change (a submission, a freed slot, a new executor): like
    /// [`schedule`](Self::schedule), but once no executor has a free slot the rest of the
    /// queue is left for the next full pass, so a deep queue costs nothing per completion.
    pub fn schedule_placements(&mut self, now: SystemTime) {
        self.schedule_pass(now, false);
    }

    /// Free slots on executors that take work.
    fn free_slots(&self) -> u64 {
        self.nodes
            .values()
            .filter(|n| {
                n.link.is_some() && n.node.state() == NodeState::Connected && !n.node.cordoned
            })
            .map(|n| {
                let capacity = n.node.capacity.unwrap_or_default().slots;
                u64::from(capacity.saturating_sub(self.allocated(n).slots))
            })
            .sum()
    }

    fn schedule_pass(&mut self, now: SystemTime, full: bool) {
        let mut unplaceable: HashMap<(Vec<String>, u64), String> = HashMap::new();
        let mut free_slots = self.free_slots();
        let mut cursor: Option<String> = None;
        loop {
            let next = match &cursor {
                None => self.queue.iter().next(),
                Some(after) => self
                    .queue
                    .range::<str, _>((Bound::Excluded(after.as_str()), Bound::Unbounded))
                    .next(),
            };
            let Some(job_id) = next.cloned() else { break };
            cursor = Some(job_id.clone());
            let Some(entry) = self.jobs.get(&job_id) else {
                self.queue.remove(&job_id);
                continue;
            };
            let spec = entry.job.spec.as_ref();
            let shape = (
                spec.map(|s| s.constraints.clone()).unwrap_or_default(),
                job_memory(&entry.job),
            );
            let placed = match unplaceable.get(&shape) {
                Some(reason) => Err(reason.clone()),
                None => self.placement(spec.unwrap_or(&JobSpec::default())),
            };
            let reason = match placed {
                Ok(executor_id) => {
                    self.assign(&job_id, &executor_id, now);
                    free_slots = free_slots.saturating_sub(1);
                    continue;
                }
                Err(_) if !full && free_slots == 0 => break,
                Err(reason) => reason,
            };
            let queue_timeout = spec
                .and_then(|s| s.queue_timeout)
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or(self.config.defaults.queue_timeout);
            let waited = now.duration_since(entry.queued_since).unwrap_or_default();
            let stale_reason = entry.job.status_message != reason;
            unplaceable.entry(shape).or_insert_with(|| reason.clone());
            if waited >= queue_timeout {
                self.queue.remove(&job_id);
                let message = format!(
                    "not scheduled within the queue timeout of {}: {reason}",
                    shoal::units::format_duration(queue_timeout)
                );
                let failure = Failure::new(FailureKind::QueueTimeout, message.clone());
                self.set_job_state(
                    &job_id,
                    JobState::TimedOut,
                    message,
                    Some(failure),
                    None,
                    now,
                );
            } else if stale_reason {
                // Not an event, but persisted so `describe` says why the job waits.
                if let Some(entry) = self.jobs.get_mut(&job_id) {
                    entry.job.status_message = reason;
                    self.effects.writes.push(Write::Job(entry.job.clone()));
                }
            }
        }
    }

    /// The executor to run `spec` on, or why there is none. Among fitting executors, the
    /// one with the most free slots wins, which spreads work across the fleet.
    fn placement(&self, spec: &JobSpec) -> std::result::Result<String, String> {
        let selector = Selector::parse(&spec.constraints, "constraints").unwrap_or_default();
        let memory = spec.resources.map(|r| r.memory_bytes).unwrap_or(0);
        let live: Vec<&NodeEntry> = self
            .nodes
            .values()
            .filter(|n| n.link.is_some() && n.node.state() == NodeState::Connected)
            .collect();
        let connected: Vec<&NodeEntry> =
            live.iter().copied().filter(|n| !n.node.cordoned).collect();
        if connected.is_empty() {
            if !live.is_empty() {
                return Err(format!(
                    "waiting for an executor: all {} connected are cordoned",
                    live.len()
                ));
            }
            return Err("waiting for an executor to connect: none is connected".into());
        }
        let mut unmet: BTreeMap<String, usize> = BTreeMap::new();
        let mut best: Option<(u32, &NodeEntry)> = None;
        let mut too_small = 0;
        let mut largest = 0;
        for entry in &connected {
            if let Some(requirement) = selector.first_unmet(&entry.node.labels) {
                *unmet.entry(requirement.to_string()).or_default() += 1;
                continue;
            }
            let capacity = entry.node.capacity.unwrap_or_default();
            largest = largest.max(capacity.memory_bytes);
            if capacity.memory_bytes < memory {
                too_small += 1;
                continue;
            }
            let allocated = self.allocated(entry);
            let free_slots = capacity.slots.saturating_sub(allocated.slots);
            let free_memory = capacity.memory_bytes.saturating_sub(allocated.memory_bytes);
            if free_slots > 0 && free_memory >= memory && best.is_none_or(|(s, _)| free_slots > s) {
                best = Some((free_slots, entry));
            }
        }
        if let Some((_, entry)) = best {
            return Ok(entry.node.id.clone());
        }
        let total = connected.len();
        if unmet.values().sum::<usize>() == total {
            let detail = unmet
                .iter()
                .map(|(req, n)| format!("`{req}` is not met by {n} of them"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(format!(
                "no connected executor satisfies the constraints ({total} connected): {detail}"
            ));
        }
        if too_small + unmet.values().sum::<usize>() == total {
            return Err(format!(
                "the job needs {} of memory; the largest matching executor offers {}",
                shoal::units::format_size(memory),
                shoal::units::format_size(largest)
            ));
        }
        Err("waiting for a free slot on a matching executor".into())
    }

    fn assign(&mut self, job_id: &str, executor_id: &str, now: SystemTime) {
        self.queue.remove(job_id);
        let Some(entry) = self.jobs.get_mut(job_id) else {
            return;
        };
        entry.job.attempts += 1;
        let attempt = entry.job.attempts;
        let waited = now.duration_since(entry.queued_since).unwrap_or_default();
        self.metrics
            .scheduling_latency
            .observe(waited.as_secs_f64());
        let execution_id = shoal::ids::ExecutionId::new().to_string();
        entry.job.execution_id = execution_id.clone();
        let spec = entry.job.spec.clone();
        // The placement, as a span of the job's trace and the parent of the execution's
        // spans on the executor. Only for traced jobs: an untraced one logs nothing here.
        let trace_context = if entry.job.trace_context.is_empty() {
            HashMap::new()
        } else {
            let span = tracing::info_span!(
                "schedule",
                job_id,
                execution_id,
                executor_id,
                attempt,
                queue_wait_ms = waited.as_millis() as u64,
            );
            shoal::telemetry::set_parent_from_map(&span, &entry.job.trace_context);
            shoal::telemetry::context_map(&span)
        };
        let execution = Execution {
            id: execution_id.clone(),
            job_id: job_id.to_owned(),
            executor_id: executor_id.to_owned(),
            attempt,
            state: ExecutionState::Scheduled as i32,
            created_at: Some(shoal::proto::timestamp(now)),
            ..Default::default()
        };
        self.effects
            .writes
            .push(Write::Execution(execution.clone()));
        self.executions.insert(execution_id.clone(), execution);
        tracing::info!(
            job_id,
            execution_id,
            executor_id,
            attempt,
            "execution assigned"
        );
        if let Some(node) = self.nodes.get_mut(executor_id) {
            node.node.running_execution_ids.push(execution_id.clone());
        }
        self.unacknowledged.insert(execution_id.clone(), now);
        self.set_job_state(
            job_id,
            JobState::Scheduled,
            format!("assigned to executor {executor_id} (attempt {attempt})"),
            None,
            None,
            now,
        );
        self.send_to(
            executor_id,
            orchestrator_message::Message::Assign(shoal::proto::Assign {
                execution_id,
                job_id: job_id.to_owned(),
                spec,
                attempt,
                trace_context,
            }),
        );
    }

    // ---- executor transitions ----

    /// An executor (re)connected. Returns the link generation that later calls must quote.
    /// Executions it still runs stay with it; executions it should run but does not report
    /// are lost; executions it runs that nobody wants any more are cancelled.
    pub fn register(
        &mut self,
        register: Register,
        sender: ExecutorSender,
        now: SystemTime,
        instant: Instant,
    ) -> Result<u64> {
        check_executor_id(&register.executor_id)?;
        if register.version.len() > 64 || register.instance_id.len() > 64 {
            return Err(Error::InvalidArgument(
                "register.version and register.instance_id must be at most 64 bytes".into(),
            ));
        }
        let claimed = register.capacity.unwrap_or_default();
        let bound = self.config.max_capacity;
        if claimed.slots > bound.slots || claimed.memory_bytes > bound.memory_bytes {
            return Err(Error::InvalidArgument(format!(
                "register.capacity claims {} slots and {} of memory; this orchestrator takes at \
                 most {} slots and {} per executor (--max-executor-slots, --max-executor-memory)",
                claimed.slots,
                shoal::units::format_size(claimed.memory_bytes),
                bound.slots,
                shoal::units::format_size(bound.memory_bytes)
            )));
        }
        for (key, value) in &register.labels {
            shoal::selector::label_key(key).map_err(Error::InvalidArgument)?;
            shoal::selector::label_value(value).map_err(Error::InvalidArgument)?;
        }
        // Another process with the same id must not take over a live stream: each would
        // fail the other's executions as lost on every reconnect. The same process
        // registering again (its old stream not yet noticed broken) replaces it.
        if let Some(node) = self.nodes.get(&register.executor_id)
            && let Some(link) = &node.link
            && link.instance_id != register.instance_id
        {
            return Err(Error::AlreadyExists(format!(
                "executor id {} is already connected from another executor process; every \
                 executor needs its own id (--executor-id). This one is refused until that \
                 stream ends or sends nothing for the lease ({:?})",
                register.executor_id, self.config.lease
            )));
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let id = register.executor_id.clone();
        let reported: HashSet<String> = register.running_execution_ids.iter().cloned().collect();
        let recently_finished = register.recently_finished;
        let previous: Vec<String> = self
            .nodes
            .get(&id)
            .map(|n| n.node.running_execution_ids.clone())
            .unwrap_or_default();
        let entry = self.nodes.entry(id.clone()).or_insert_with(|| NodeEntry {
            node: Node {
                id: id.clone(),
                ..Default::default()
            },
            link: None,
            last_seen: instant,
        });
        entry.node.state = NodeState::Connected as i32;
        entry.node.labels = register.labels;
        entry.node.capacity = register.capacity;
        entry.node.version = register.version;
        entry.node.connected_at = Some(shoal::proto::timestamp(now));
        entry.node.last_heartbeat = Some(shoal::proto::timestamp(now));
        entry.link = Some(NodeLink {
            generation,
            sender,
            instance_id: register.instance_id,
            // Reports up to here were acknowledged on an earlier stream: they count as
            // arrived (heartbeats quote the process's numbers, not the stream's).
            received_through: register.acknowledged_through,
        });
        entry.last_seen = instant;
        self.effects.writes.push(Write::Node(entry.node.clone()));

        // Reports lost with the previous stream land first, so those executions are not
        // mistaken for lost ones below.
        for finished in recently_finished {
            self.execution_finished(&id, finished, now);
        }
        for execution_id in previous.iter().filter(|e| !reported.contains(*e)) {
            self.fail_execution(
                execution_id,
                Failure::new(
                    FailureKind::ExecutorLost,
                    format!("executor {id} reconnected without this execution"),
                ),
                now,
            );
        }
        for execution_id in &reported {
            // Reporting it running proves the assignment arrived.
            self.unacknowledged.remove(execution_id);
        }
        self.cancel_unwanted(&id, &reported);
        self.effects.schedule = true;
        Ok(generation)
    }

    /// Cancels, on the executor, the executions it says it runs that are not its current
    /// ones here (ended, superseded by a retry, or unknown).
    fn cancel_unwanted<'a>(
        &mut self,
        executor_id: &str,
        running: impl IntoIterator<Item = &'a String>,
    ) {
        for execution_id in running {
            let wanted = self.executions.get(execution_id).is_some_and(|e| {
                e.executor_id == executor_id && !e.state().is_terminal() && self.is_current(e)
            });
            if !wanted {
                self.send_to(
                    executor_id,
                    orchestrator_message::Message::Cancel(shoal::proto::Cancel {
                        execution_id: execution_id.clone(),
                        reason: "the orchestrator no longer expects this execution".into(),
                    }),
                );
            }
        }
    }

    fn is_current(&self, execution: &Execution) -> bool {
        self.jobs
            .get(&execution.job_id)
            .is_some_and(|j| j.job.execution_id == execution.id && !j.job.state().is_terminal())
    }

    fn live_node(&mut self, executor_id: &str, generation: u64) -> Option<&mut NodeEntry> {
        self.nodes
            .get_mut(executor_id)
            .filter(|n| n.link.as_ref().is_some_and(|l| l.generation == generation))
    }

    /// An executor's stream ended. Its executions wait a lease for it to come back.
    pub fn disconnected(&mut self, executor_id: &str, generation: u64, instant: Instant) {
        if let Some(entry) = self.live_node(executor_id, generation) {
            entry.link = None;
            entry.node.state = NodeState::Disconnected as i32;
            entry.last_seen = instant;
            let node = entry.node.clone();
            self.effects.writes.push(Write::Node(node));
        }
    }

    /// Any message from an executor proves it alive.
    pub fn touch(&mut self, executor_id: &str, generation: u64, now: SystemTime, instant: Instant) {
        if let Some(entry) = self.live_node(executor_id, generation) {
            entry.last_seen = instant;
            entry.node.last_heartbeat = Some(shoal::proto::timestamp(now));
        }
    }

    /// The executor takes no new work.
    pub fn draining(&mut self, executor_id: &str, generation: u64) {
        if let Some(entry) = self.live_node(executor_id, generation) {
            entry.node.state = NodeState::Draining as i32;
            let node = entry.node.clone();
            self.effects.writes.push(Write::Node(node));
        }
    }

    /// Cordons (no new work) or uncordons an executor.
    pub fn set_cordoned(&mut self, executor_id: &str, cordoned: bool) -> Result<Node> {
        let entry = self
            .nodes
            .get_mut(executor_id)
            .ok_or_else(|| Error::NotFound(format!("no executor {executor_id}")))?;
        if entry.node.cordoned != cordoned {
            entry.node.cordoned = cordoned;
            let node = entry.node.clone();
            self.effects.writes.push(Write::Node(node));
            self.effects.schedule |= !cordoned;
        }
        self.node(executor_id)
    }

    /// How many executions an executor runs now.
    pub fn running_on(&self, executor_id: &str) -> usize {
        self.nodes
            .get(executor_id)
            .map_or(0, |n| n.node.running_execution_ids.len())
    }

    /// Stops the executions still running on an executor (a drain past its grace period):
    /// each is cancelled there and failed as EXECUTOR_LOST, so it is retried elsewhere under
    /// its job's retry policy. Returns how many.
    pub fn evict(&mut self, executor_id: &str, reason: &str, now: SystemTime) -> usize {
        let running = self
            .nodes
            .get(executor_id)
            .map(|n| n.node.running_execution_ids.clone())
            .unwrap_or_default();
        for execution_id in &running {
            self.send_to(
                executor_id,
                orchestrator_message::Message::Cancel(shoal::proto::Cancel {
                    execution_id: execution_id.clone(),
                    reason: reason.to_owned(),
                }),
            );
            self.fail_execution(
                execution_id,
                Failure::new(
                    FailureKind::ExecutorLost,
                    format!("{reason} (executor {executor_id})"),
                ),
                now,
            );
        }
        running.len()
    }

    /// Fails the executions of executors not heard from within a lease, and takes back
    /// assignments not acknowledged within the acknowledgement timeout.
    pub fn sweep(&mut self, now: SystemTime, instant: Instant) {
        self.take_back_unacknowledged(now);
        let lease = self.config.lease;
        let lost: Vec<(String, Vec<String>)> = self
            .nodes
            .values_mut()
            .filter(|n| instant.duration_since(n.last_seen) > lease)
            .filter(|n| !n.node.running_execution_ids.is_empty() || n.link.is_some())
            .map(|n| {
                n.link = None;
                n.node.state = NodeState::Disconnected as i32;
                (n.node.id.clone(), n.node.running_execution_ids.clone())
            })
            .collect();
        for (executor_id, executions) in lost {
            tracing::warn!(executor_id, "executor lost: no message within the lease");
            if let Some(node) = self.nodes.get(&executor_id) {
                self.effects.writes.push(Write::Node(node.node.clone()));
            }
            for execution_id in executions {
                self.fail_execution(
                    &execution_id,
                    Failure::new(
                        FailureKind::ExecutorLost,
                        format!("executor {executor_id} was lost (no message within {lease:?})"),
                    ),
                    now,
                );
            }
        }
    }

    /// Assignments whose executor said nothing about them within the acknowledgement
    /// timeout (an executor that heartbeats but never acts would hold them SCHEDULED, and
    /// its slots, forever): cancelled there, failed EXECUTOR_LOST, retried by policy.
    fn take_back_unacknowledged(&mut self, now: SystemTime) {
        let timeout = self.config.ack_timeout;
        // Only executors with a live stream: one that is disconnected gets its lease, and
        // registering again reconciles what it runs.
        let overdue: Vec<String> = self
            .unacknowledged
            .iter()
            .filter(|(_, at)| now.duration_since(**at).is_ok_and(|d| d > timeout))
            .filter(|(id, _)| {
                self.executions
                    .get(*id)
                    .and_then(|e| self.nodes.get(&e.executor_id))
                    .is_some_and(|n| n.link.is_some())
            })
            .map(|(id, _)| id.clone())
            .collect();
        for execution_id in overdue {
            self.unacknowledged.remove(&execution_id);
            let Some(execution) = self.executions.get(&execution_id) else {
                continue;
            };
            if execution.state() != ExecutionState::Scheduled {
                continue;
            }
            let executor_id = execution.executor_id.clone();
            tracing::warn!(
                execution_id,
                executor_id,
                "an assignment was not acknowledged in time; taking it back"
            );
            self.send_to(
                &executor_id,
                orchestrator_message::Message::Cancel(shoal::proto::Cancel {
                    execution_id: execution_id.clone(),
                    reason: "not acknowledged in time; assigned elsewhere".into(),
                }),
            );
            self.fail_execution(
                &execution_id,
                Failure::new(
                    FailureKind::ExecutorLost,
                    format!(
                        "executor {executor_id} did not acknowledge the assignment within {}",
                        shoal::units::format_duration(timeout)
                    ),
                ),
                now,
            );
        }
    }

    /// A report with this sequence number arrived on the executor's stream (0: not a
    /// report).
    pub fn report_received(&mut self, executor_id: &str, generation: u64, sequence: u64) {
        if let Some(link) = self
            .live_node(executor_id, generation)
            .and_then(|n| n.link.as_mut())
        {
            link.received_through = link.received_through.max(sequence);
        }
    }

    /// Tells the executor that every report received so far is durable (sent after the
    /// commit, like every message). Returns nothing: an executor without a live stream
    /// hears it on no stream.
    pub fn acknowledge_reports(&mut self, executor_id: &str, generation: u64) {
        let Some(through) = self
            .live_node(executor_id, generation)
            .and_then(|n| n.link.as_ref())
            .map(|l| l.received_through)
        else {
            return;
        };
        if through > 0 {
            self.send_to(
                executor_id,
                orchestrator_message::Message::Acknowledged(shoal::proto::Acknowledged {
                    sequence: through,
                }),
            );
        }
    }

    /// A heartbeat: reconciles what the executor says it runs with what this state says it
    /// runs, once every report sent before the list was taken has arrived (see
    /// `Heartbeat.last_report_sequence`). An acknowledged execution it no longer runs is
    /// failed EXECUTOR_LOST; one it runs that nobody wants is cancelled.
    pub fn heartbeat(
        &mut self,
        executor_id: &str,
        generation: u64,
        heartbeat: &shoal::proto::Heartbeat,
        now: SystemTime,
    ) {
        let Some(node) = self.live_node(executor_id, generation) else {
            return;
        };
        let caught_up = node
            .link
            .as_ref()
            .is_some_and(|l| l.received_through >= heartbeat.last_report_sequence);
        if !caught_up {
            return;
        }
        let listed: HashSet<&String> = heartbeat.running_execution_ids.iter().collect();
        let expected = node.node.running_execution_ids.clone();
        for execution_id in &heartbeat.running_execution_ids {
            self.unacknowledged.remove(execution_id);
        }
        for execution_id in expected.iter().filter(|id| !listed.contains(id)) {
            if self.unacknowledged.contains_key(execution_id) {
                continue; // its Assign may still be on the way
            }
            self.fail_execution(
                execution_id,
                Failure::new(
                    FailureKind::ExecutorLost,
                    format!("executor {executor_id} no longer runs this execution"),
                ),
                now,
            );
        }
        self.cancel_unwanted(executor_id, &heartbeat.running_execution_ids);
    }

    fn owned_execution(&self, executor_id: &str, execution_id: &str) -> Option<&Execution> {
        self.executions
            .get(execution_id)
            .filter(|e| e.executor_id == executor_id && !e.state().is_terminal())
    }

    /// An execution moved to STAGING, RUNNING or PUBLISHING.
    pub fn execution_update(
        &mut self,
        executor_id: &str,
        execution_id: &str,
        state: ExecutionState,
        now: SystemTime,
    ) {
        if state.is_terminal() || state == ExecutionState::Unspecified {
            return;
        }
        let Some(execution) = self.owned_execution(executor_id, execution_id) else {
            return;
        };
        // A resent report (after a reconnect) may be older than what arrived since: states
        // only move forward.
        if state as i32 <= execution.state {
            return;
        }
        let current = self.is_current(execution);
        let job_id = execution.job_id.clone();
        self.unacknowledged.remove(execution_id);
        let Some(execution) = self.executions.get_mut(execution_id) else {
            return;
        };
        execution.state = state as i32;
        if state == ExecutionState::Running {
            execution.started_at = Some(shoal::proto::timestamp(now));
        }
        self.effects
            .writes
            .push(Write::Execution(execution.clone()));
        if current {
            let message = match state {
                ExecutionState::Staging => "fetching the program and inputs",
                ExecutionState::Running => "running",
                ExecutionState::Publishing => "publishing results",
                _ => "",
            };
            self.set_job_state(&job_id, state.job_state(), message.into(), None, None, now);
        }
    }

    /// Output of a running program; chunks already seen are dropped.
    pub fn execution_log(&mut self, executor_id: &str, chunk: LogChunk, now: SystemTime) {
        let Some(execution) = self.owned_execution(executor_id, &chunk.execution_id) else {
            return;
        };
        let job_id = execution.job_id.clone();
        self.unacknowledged.remove(&chunk.execution_id);
        let key = (chunk.execution_id.clone(), chunk.stream);
        let expected = self.log_offsets.get(&key).copied().unwrap_or(0);
        // Peer-supplied numbers: an offset near u64::MAX must not overflow, and no
        // execution may store more log than the bound, whatever its executor says.
        let Some(end) = chunk.offset.checked_add(chunk.data.len() as u64) else {
            tracing::warn!(
                executor_id,
                execution_id = chunk.execution_id,
                offset = chunk.offset,
                "dropping a log chunk with an impossible offset"
            );
            return;
        };
        if end <= expected || chunk.data.is_empty() {
            return;
        }
        if end > self.config.max_log_bytes {
            if expected < self.config.max_log_bytes {
                tracing::warn!(
                    executor_id,
                    execution_id = chunk.execution_id,
                    limit = self.config.max_log_bytes,
                    "dropping log chunks past the per-execution bound"
                );
                // Remember the bound as reached, so this is said once.
                self.log_offsets.insert(key, self.config.max_log_bytes);
            }
            return;
        }
        let mut chunk = chunk;
        if chunk.offset < expected {
            // Partly resent: keep only the new tail.
            chunk.data = chunk.data.slice((expected - chunk.offset) as usize..);
            chunk.offset = expected;
        }
        self.log_offsets.insert(key, end);
        self.push_event(&job_id, job_event::Event::Log(chunk), now);
    }

    /// An execution ended. Applied once: later copies of the same report are ignored.
    pub fn execution_finished(
        &mut self,
        executor_id: &str,
        finished: ExecutionFinished,
        now: SystemTime,
    ) {
        let Some(execution) = self.owned_execution(executor_id, &finished.execution_id) else {
            return;
        };
        let execution_id = execution.id.clone();
        self.unacknowledged.remove(&execution_id);
        // Peer-supplied text, stored and shown in listings: bounded.
        let mut finished = finished;
        if let Some(failure) = &mut finished.failure {
            failure.message = shoal::error::excerpt(&failure.message, MAX_REPORTED_TEXT);
        }
        if let Some(result) = &mut finished.result {
            result.published_to = shoal::error::excerpt(&result.published_to, MAX_REPORTED_TEXT);
        }
        match finished.state() {
            ExecutionState::Completed => {
                let result = finished.result.unwrap_or_default();
                self.end_execution(
                    &execution_id,
                    ExecutionState::Completed,
                    None,
                    Some(result.clone()),
                    now,
                );
                let job_id = self.executions.get(&execution_id).map(|e| e.job_id.clone());
                if let Some(job_id) = job_id
                    && self.jobs.get(&job_id).is_some_and(|j| {
                        j.job.execution_id == execution_id && !j.job.state().is_terminal()
                    })
                {
                    let message = format!("completed with exit code {}", result.exit_code);
                    self.set_job_state(
                        &job_id,
                        JobState::Completed,
                        message,
                        None,
                        Some(result),
                        now,
                    );
                }
            }
            _ => {
                let failure = finished.failure.unwrap_or_else(|| {
                    Failure::new(FailureKind::Internal, "the executor reported no failure")
                });
                if let Some(result) = finished.result
                    && let Some(execution) = self.executions.get_mut(&execution_id)
                {
                    execution.result = Some(result);
                }
                self.fail_execution(&execution_id, failure, now);
            }
        }
    }

    fn end_execution(
        &mut self,
        execution_id: &str,
        state: ExecutionState,
        failure: Option<Failure>,
        result: Option<ExecutionResult>,
        now: SystemTime,
    ) {
        let Some(execution) = self.executions.get_mut(execution_id) else {
            return;
        };
        execution.state = state as i32;
        execution.finished_at = Some(shoal::proto::timestamp(now));
        let assigned = execution
            .created_at
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or(now);
        self.metrics
            .execution_duration
            .get_or_create(&metrics::execution_state(state))
            .observe(
                now.duration_since(assigned)
                    .unwrap_or_default()
                    .as_secs_f64(),
            );
        if failure.is_some() {
            execution.failure = failure;
        }
        if result.is_some() {
            execution.result = result;
        }
        let executor_id = execution.executor_id.clone();
        tracing::info!(
            job_id = execution.job_id,
            execution_id,
            executor_id,
            state = state.as_str_name(),
            "execution ended"
        );
        self.effects
            .writes
            .push(Write::Execution(execution.clone()));
        self.log_offsets.retain(|(id, _), _| id != execution_id);
        if let Some(node) = self.nodes.get_mut(&executor_id) {
            node.node
                .running_execution_ids
                .retain(|id| id != execution_id);
        }
        self.effects.schedule = true;
    }

    /// Ends an execution with a failure, then retries its job or fails it, as the job's
    /// retry policy says.
    fn fail_execution(&mut self, execution_id: &str, mut failure: Failure, now: SystemTime) {
        let Some(execution) = self.executions.get(execution_id) else {
            return;
        };
        if execution.state().is_terminal() {
            return;
        }
        let job_id = execution.job_id.clone();
        let current = self.is_current(execution);
        let (retry_on, max_attempts, attempts) = match self.jobs.get(&job_id) {
            Some(entry) => {
                let retry = entry
                    .job
                    .spec
                    .as_ref()
                    .and_then(|s| s.retry.clone())
                    .unwrap_or_default();
                (retry.retry_on, retry.max_attempts, entry.job.attempts)
            }
            None => (Vec::new(), 0, 0),
        };
        failure.retryable = retry_on.contains(&failure.kind) && attempts < max_attempts;
        let state = failure.kind().execution_state();
        self.end_execution(execution_id, state, Some(failure.clone()), None, now);
        if !current {
            return;
        }
        if failure.kind() == FailureKind::ExecutorLost
            && let Some(entry) = self.jobs.get_mut(&job_id)
        {
            entry.job.executor_losses = entry.job.executor_losses.saturating_add(1);
            // A job whose every attempt took its executor down (a guest that crashes the
            // executor, say) must not be carried on across the fleet: the budget is spent,
            // and the job's failure says what happened on every attempt.
            let losses = entry.job.executor_losses;
            if !failure.retryable && losses >= 2 && losses >= attempts {
                failure = Failure::new(
                    FailureKind::ExecutorsLost,
                    format!(
                        "every attempt ({losses} of {losses}) lost its executor; the job may \
                         be what brings them down (last: {})",
                        failure.message
                    ),
                );
            }
        }
        if failure.retryable {
            let message = format!(
                "retrying after {} (attempt {} of {max_attempts} failed)",
                failure, attempts
            );
            self.set_job_state(&job_id, JobState::Queued, message, None, None, now);
            self.queue.insert(job_id);
        } else {
            let message = failure.to_string();
            self.set_job_state(
                &job_id,
                state.job_state(),
                message,
                Some(failure),
                None,
                now,
            );
        }
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

fn job_memory(job: &Job) -> u64 {
    job.spec
        .as_ref()
        .and_then(|s| s.resources)
        .map(|r| r.memory_bytes)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal::proto::{ExecutionFinished, Resources};

    const CID: &str = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4";

    fn cluster() -> Cluster {
        Cluster::restore(
            Snapshot::default(),
            ClusterConfig {
                heartbeat_interval: Duration::from_secs(1),
                lease: Duration::from_secs(10),
                defaults: SpecDefaults {
                    timeout: Duration::from_secs(60),
                    queue_timeout: Duration::from_secs(3600),
                },
                max_queued: 100,
                ..Default::default()
            },
            Instant::now(),
        )
    }

    fn spec() -> JobSpec {
        JobSpec {
            program: CID.into(),
            ..Default::default()
        }
    }

    /// Registers an executor; returns the receiver of its messages.
    fn connect(
        c: &mut Cluster,
        id: &str,
        slots: u32,
        labels: &[(&str, &str)],
    ) -> mpsc::Receiver<Result<OrchestratorMessage, tonic::Status>> {
        let (tx, rx) = mpsc::channel(64);
        let register = Register {
            executor_id: id.into(),
            protocol_version: 1,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            capacity: Some(Capacity {
                slots,
                memory_bytes: 4 << 30,
            }),
            ..Default::default()
        };
        c.register(
            register,
            ExecutorSender::new(tx),
            SystemTime::now(),
            Instant::now(),
        )
        .expect("register");
        rx
    }

    /// Executor ids of the assignments in the effects, in order.
    fn assignments(c: &mut Cluster) -> Vec<(String, String)> {
        let effects = c.take_effects();
        effects
            .messages
            .iter()
            .filter_map(|(_, m)| match &m.message {
                Some(orchestrator_message::Message::Assign(a)) => {
                    Some((a.job_id.clone(), a.execution_id.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn executor_of(c: &Cluster, execution_id: &str) -> String {
        c.execution(execution_id)
            .expect("execution")
            .executor_id
            .clone()
    }

    fn finish(c: &mut Cluster, executor: &str, execution_id: &str, failure: Option<FailureKind>) {
        let finished = match failure {
            None => ExecutionFinished {
                execution_id: execution_id.into(),
                state: ExecutionState::Completed as i32,
                result: Some(ExecutionResult::default()),
                failure: None,
                result_blocks: Vec::new(),
            },
            Some(kind) => ExecutionFinished {
                execution_id: execution_id.into(),
                state: kind.execution_state() as i32,
                result: None,
                failure: Some(Failure::new(kind, "boom")),
                result_blocks: Vec::new(),
            },
        };
        c.execution_finished(executor, finished, SystemTime::now());
    }

    /// Jobs are placed oldest first, spread over executors, and one that fits nowhere
    /// waits with a reason.
    #[test]
    fn fifo_placement_spreads_and_explains() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 1, &[]);
        let _b = connect(&mut c, "b", 1, &[]);
        let now = SystemTime::now();
        let jobs: Vec<String> = (0..3)
            .map(|_| c.submit(spec(), HashMap::new(), now).expect("submit").id)
            .collect();
        c.take_effects();
        c.schedule(now);
        let placed = assignments(&mut c);
        assert_eq!(
            placed.iter().map(|(j, _)| j.clone()).collect::<Vec<_>>(),
            jobs[..2]
        );
        let mut executors: Vec<_> = placed.iter().map(|(_, e)| executor_of(&c, e)).collect();
        executors.sort();
        assert_eq!(executors, ["a", "b"]);
        let waiting = c.job(&jobs[2]).expect("job");
        assert_eq!(waiting.state(), JobState::Queued);
        assert!(
            waiting.status_message.contains("free slot"),
            "{}",
            waiting.status_message
        );
        // Capacity freed by a completion goes to the waiting job.
        let (_, execution) = &placed[0];
        let executor = executor_of(&c, execution);
        finish(&mut c, &executor, execution, None);
        c.schedule(now);
        assert_eq!(assignments(&mut c).len(), 1);
        assert_eq!(c.job(&jobs[0]).expect("job").state(), JobState::Completed);
    }

    /// Constraints pick matching executors; an unsatisfiable one is named, and the job
    /// times out in the queue.
    /// A job submitted to an empty queue is placed in the submitting transition, its
    /// records and its assignment among the same effects; one submitted behind a waiting
    /// job is left to the scheduler's pass.
    #[test]
    fn a_job_submitted_to_an_empty_queue_is_placed_at_once() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 2, &[("zone", "a")]);
        let now = SystemTime::now();
        let first = c.submit(spec(), HashMap::new(), now).expect("submit").id;
        c.place_if_first(&first, now);
        assert_eq!(c.job(&first).expect("job").state(), JobState::Scheduled);
        let effects = c.take_effects();
        assert!(
            effects
                .writes
                .iter()
                .any(|w| matches!(w, Write::Execution(_))),
            "the execution record is among the submitting transition's writes"
        );
        let assigned = effects
            .messages
            .iter()
            .filter(|(_, m)| matches!(m.message, Some(orchestrator_message::Message::Assign(_))))
            .count();
        assert_eq!(assigned, 1);

        // A job no executor satisfies waits (with its reason); one behind it is not placed
        // by its submission, although a slot is free, but by the next pass.
        let mut unsatisfiable = spec();
        unsatisfiable.constraints = vec!["zone=b".into()];
        let waiting = c
            .submit(unsatisfiable, HashMap::new(), now)
            .expect("submit")
            .id;
        c.place_if_first(&waiting, now);
        assert!(
            c.job(&waiting)
                .expect("job")
                .status_message
                .contains("zone=b")
        );
        let second = c.submit(spec(), HashMap::new(), now).expect("submit").id;
        c.place_if_first(&second, now);
        assert!(assignments(&mut c).is_empty());
        assert_eq!(c.job(&second).expect("job").state(), JobState::Queued);
        c.schedule_placements(now);
        assert_eq!(assignments(&mut c).len(), 1);
        assert_eq!(c.job(&second).expect("job").state(), JobState::Scheduled);
    }

    /// The pass run after every change places what fits and stops once the fleet is
    /// full, leaving the rest of the queue (and why it waits) to the periodic full pass.
    #[test]
    fn placement_passes_stop_when_the_fleet_is_full() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 1, &[]);
        let now = SystemTime::now();
        let jobs: Vec<String> = (0..3)
            .map(|_| c.submit(spec(), HashMap::new(), now).expect("submit").id)
            .collect();
        c.take_effects();
        c.schedule_placements(now);
        let placed = assignments(&mut c);
        assert_eq!(placed.len(), 1);
        assert_eq!(placed[0].0, jobs[0]);
        for waiting in &jobs[1..] {
            let job = c.job(waiting).expect("job");
            assert_eq!(job.state(), JobState::Queued);
            assert!(
                !job.status_message.contains("free slot"),
                "a placement pass looked past a full fleet: {}",
                job.status_message
            );
        }
        c.schedule(now);
        assert!(assignments(&mut c).is_empty());
        for waiting in &jobs[1..] {
            let job = c.job(waiting).expect("job");
            assert!(
                job.status_message.contains("free slot"),
                "{}",
                job.status_message
            );
        }
    }

    #[test]
    fn constraints_match_or_are_explained() {
        let mut c = cluster();
        let _eu = connect(&mut c, "eu", 2, &[("region", "eu")]);
        let _us = connect(&mut c, "us", 2, &[("region", "us")]);
        let now = SystemTime::now();
        let mut wants_us = spec();
        wants_us.constraints = vec!["region=us".into()];
        let mut wants_mars = spec();
        wants_mars.constraints = vec!["region in (mars)".into()];
        wants_mars.queue_timeout = Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        });
        let us = c.submit(wants_us, HashMap::new(), now).expect("submit").id;
        let mars = c
            .submit(wants_mars, HashMap::new(), now)
            .expect("submit")
            .id;
        c.schedule(now);
        let placed = assignments(&mut c);
        assert_eq!(placed.len(), 1);
        assert_eq!(placed[0].0, us);
        assert_eq!(executor_of(&c, &placed[0].1), "us");
        let message = &c.job(&mars).expect("job").status_message;
        assert!(
            message.contains("`region in (mars)` is not met by 2 of them"),
            "{message}"
        );
        c.schedule(now + Duration::from_secs(6));
        let job = c.job(&mars).expect("job");
        assert_eq!(job.state(), JobState::TimedOut);
        assert_eq!(
            job.failure.as_ref().map(|f| f.kind()),
            Some(FailureKind::QueueTimeout)
        );
    }

    /// A lost executor's execution is retried elsewhere; a trap is not retried.
    #[test]
    fn executor_loss_is_retried_but_traps_are_not() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 1, &[]);
        let now = SystemTime::now();
        let job = c.submit(spec(), HashMap::new(), now).expect("submit").id;
        c.schedule(now);
        let first = assignments(&mut c)[0].1.clone();
        c.disconnected("a", 1, Instant::now());
        // Within the lease nothing happens: the executor may come back.
        c.sweep(now, Instant::now() + Duration::from_secs(5));
        assert_eq!(c.job(&job).expect("job").state(), JobState::Scheduled);
        c.sweep(now, Instant::now() + Duration::from_secs(11));
        let lost = c.execution(&first).expect("execution");
        assert_eq!(
            lost.failure.as_ref().map(|f| (f.kind(), f.retryable)),
            Some((FailureKind::ExecutorLost, true))
        );
        assert_eq!(c.job(&job).expect("job").state(), JobState::Queued);
        let _b = connect(&mut c, "b", 1, &[]);
        c.take_effects();
        c.schedule(now);
        let second = assignments(&mut c)[0].1.clone();
        assert_eq!(executor_of(&c, &second), "b");
        assert_eq!(c.job(&job).expect("job").attempts, 2);
        finish(&mut c, "b", &second, Some(FailureKind::Trap));
        let job = c.job(&job).expect("job");
        assert_eq!(job.state(), JobState::Failed);
        assert_eq!(
            job.failure.as_ref().map(|f| (f.kind(), f.retryable)),
            Some((FailureKind::Trap, false))
        );
    }

    /// A job that loses its executor on every attempt (a guest that crashes executors) is
    /// not carried across the fleet forever: at the retry budget it fails EXECUTORS_LOST,
    /// counting its losses, and no further execution is placed.
    #[test]
    fn a_job_that_keeps_losing_its_executors_stops_at_the_budget() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 1, &[]);
        let now = SystemTime::now();
        let job = c.submit(spec(), HashMap::new(), now).expect("submit").id;
        for attempt in 1..=3 {
            c.schedule(now);
            let placed = assignments(&mut c);
            assert_eq!(placed.len(), 1, "attempt {attempt} is placed");
            assert_eq!(c.evict("a", "the executor crashed", now), 1);
        }
        let failed = c.job(&job).expect("job");
        assert_eq!(failed.state(), JobState::Failed);
        assert_eq!(failed.executor_losses, 3);
        let failure = failed.failure.as_ref().expect("failure");
        assert_eq!(failure.kind(), FailureKind::ExecutorsLost);
        assert!(failure.message.contains("3 of 3"), "{}", failure.message);
        c.schedule(now);
        assert!(assignments(&mut c).is_empty(), "nothing more is placed");
    }

    /// Messages of a kind among the effects, for one executor's stream.
    fn cancels(c: &mut Cluster) -> Vec<String> {
        c.take_effects()
            .messages
            .iter()
            .filter_map(|(_, m)| match &m.message {
                Some(orchestrator_message::Message::Cancel(cancel)) => {
                    Some(cancel.execution_id.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// An executor that takes an assignment and never reports on it (it may heartbeat all
    /// it likes) has it taken back after the acknowledgement timeout: cancelled there,
    /// failed EXECUTOR_LOST and requeued. One that acknowledges in time keeps it.
    #[test]
    fn an_unacknowledged_assignment_is_taken_back() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 2, &[]);
        let now = SystemTime::now();
        let silent = c.submit(spec(), HashMap::new(), now).expect("submit").id;
        let acked = c.submit(spec(), HashMap::new(), now).expect("submit").id;
        c.schedule(now);
        let placed = assignments(&mut c);
        assert_eq!(placed.len(), 2);
        let execution_of = |job: &str| {
            placed
                .iter()
                .find(|(j, _)| j == job)
                .map(|(_, e)| e.clone())
                .expect("placed")
        };
        c.execution_update("a", &execution_of(&acked), ExecutionState::Staging, now);
        // Heartbeats alone acknowledge nothing they do not list.
        let heartbeat = shoal::proto::Heartbeat {
            running_execution_ids: vec![execution_of(&acked)],
            last_report_sequence: 0,
        };
        c.heartbeat("a", 1, &heartbeat, now);
        c.take_effects();
        c.sweep(now + Duration::from_secs(4), Instant::now());
        assert_eq!(
            c.job(&silent).expect("job").state(),
            JobState::Scheduled,
            "within the timeout"
        );
        c.sweep(now + Duration::from_secs(6), Instant::now());
        assert_eq!(cancels(&mut c), [execution_of(&silent)]);
        let lost = c.execution(&execution_of(&silent)).expect("execution");
        assert_eq!(
            lost.failure.as_ref().map(|f| f.kind()),
            Some(FailureKind::ExecutorLost)
        );
        assert!(
            lost.failure
                .as_ref()
                .is_some_and(|f| f.message.contains("acknowledge"))
        );
        assert_eq!(c.job(&silent).expect("job").state(), JobState::Queued);
        assert_eq!(c.job(&acked).expect("job").state(), JobState::Staging);
    }

    /// A heartbeat that no longer lists an acknowledged execution fails it as lost — but
    /// only once every report sent before the list has arrived (its finished report may be
    /// on the way); one it lists that nobody wants is cancelled.
    #[test]
    fn heartbeats_are_reconciled_once_reports_caught_up() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 2, &[]);
        let now = SystemTime::now();
        let job = c.submit(spec(), HashMap::new(), now).expect("submit").id;
        c.schedule(now);
        let execution = assignments(&mut c)[0].1.clone();
        c.report_received("a", 1, 1);
        c.execution_update("a", &execution, ExecutionState::Running, now);
        let ahead = shoal::proto::Heartbeat {
            running_execution_ids: vec!["nobody-wants-this".into()],
            last_report_sequence: 2,
        };
        c.heartbeat("a", 1, &ahead, now);
        assert_eq!(
            c.job(&job).expect("job").state(),
            JobState::Running,
            "report 2 not yet here"
        );
        assert!(cancels(&mut c).is_empty());
        c.report_received("a", 1, 2);
        c.heartbeat("a", 1, &ahead, now);
        assert_eq!(cancels(&mut c), ["nobody-wants-this"]);
        let execution = c.execution(&execution).expect("execution");
        assert_eq!(execution.state(), ExecutionState::Failed);
        assert!(
            execution
                .failure
                .as_ref()
                .is_some_and(|f| f.message.contains("no longer runs"))
        );
        assert_eq!(
            c.job(&job).expect("job").state(),
            JobState::Queued,
            "retried"
        );
    }

    /// What an executor claims and calls itself is checked: capacity past the configured
    /// bound, and ids that could forge listings (NUL, newline, '/') are refused.
    #[test]
    fn registrations_are_bounded() {
        let mut c = cluster();
        let register = |id: &str, slots: u32| Register {
            executor_id: id.into(),
            protocol_version: 1,
            capacity: Some(Capacity {
                slots,
                memory_bytes: 1 << 30,
            }),
            ..Default::default()
        };
        let (tx, _rx) = mpsc::channel(4);
        let mut try_register = |r: Register| {
            c.register(
                r,
                ExecutorSender::new(tx.clone()),
                SystemTime::now(),
                Instant::now(),
            )
        };
        let error = try_register(register("greedy", 1_000_000)).expect_err("too many slots");
        assert!(error.to_string().contains("at most 256 slots"), "{error}");
        for bad in ["", "a\0b", "a\nCONNECTED", "a/b", &"x".repeat(254)] {
            let error = try_register(register(bad, 1)).expect_err(bad);
            assert!(error.to_string().len() < 300, "{error}");
        }
        try_register(register("node-1.zone_a", 256)).expect("a fine registration");
    }

    /// Log chunks are peer-supplied numbers: an offset near u64::MAX does not overflow,
    /// and past the per-execution bound chunks are dropped; a resent state older than the
    /// execution's does not move it back.
    #[test]
    fn hostile_reports_change_nothing_they_should_not() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 1, &[]);
        let now = SystemTime::now();
        let job = c.submit(spec(), HashMap::new(), now).expect("submit").id;
        c.schedule(now);
        let execution = assignments(&mut c)[0].1.clone();
        c.execution_update("a", &execution, ExecutionState::Running, now);
        c.execution_update("a", &execution, ExecutionState::Staging, now);
        assert_eq!(
            c.execution(&execution).expect("e").state(),
            ExecutionState::Running
        );
        let chunk = |offset: u64, len: usize| LogChunk {
            execution_id: execution.clone(),
            stream: shoal::proto::LogStream::Stdout as i32,
            offset,
            data: vec![b'x'; len].into(),
        };
        c.take_effects();
        c.execution_log("a", chunk(0, 10), now);
        assert_eq!(c.take_effects().events.len(), 1);
        c.execution_log("a", chunk(u64::MAX - 1, 10), now);
        c.execution_log("a", chunk((64 << 20) - 5, 10), now);
        c.execution_log("a", chunk(64 << 20, 10), now);
        assert!(c.take_effects().events.is_empty(), "nothing more stored");
        assert_eq!(c.job(&job).expect("job").state(), JobState::Running);
    }

    /// A submission with an idempotency key already used returns that job, even after a
    /// restart (the key is stored with the job); the same key with another spec is refused.
    #[test]
    fn idempotency_keys_return_the_same_job() {
        let mut c = cluster();
        let now = SystemTime::now();
        let (first, new) = c
            .submit_once(spec(), "k1", HashMap::new(), now)
            .expect("submit");
        assert!(new);
        let (again, new) = c
            .submit_once(spec(), "k1", HashMap::new(), now)
            .expect("again");
        assert!(!new);
        assert_eq!(again.id, first.id);
        let mut other = spec();
        other.args = vec!["different".into()];
        let refused = c
            .submit_once(other, "k1", HashMap::new(), now)
            .expect_err("another spec");
        assert!(matches!(refused, Error::AlreadyExists(_)), "{refused}");
        let snapshot = Snapshot {
            jobs: vec![c.job(&first.id).expect("job").clone()],
            ..Default::default()
        };
        let mut restored = Cluster::restore(snapshot, c.config, Instant::now());
        let (after, new) = restored
            .submit_once(spec(), "k1", HashMap::new(), now)
            .expect("after");
        assert!(!new);
        assert_eq!(after.id, first.id);
        let (unkeyed, _) = restored
            .submit_once(spec(), "", HashMap::new(), now)
            .expect("no key");
        assert_ne!(unkeyed.id, first.id);
    }

    /// A report is applied once, however often it arrives, and only from the executor that
    /// owns the execution.
    #[test]
    fn finished_reports_are_idempotent() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 1, &[]);
        let _b = connect(&mut c, "b", 1, &[]);
        let now = SystemTime::now();
        let job = c.submit(spec(), HashMap::new(), now).expect("submit").id;
        c.schedule(now);
        let execution = assignments(&mut c)[0].1.clone();
        let owner = executor_of(&c, &execution);
        let other = if owner == "a" { "b" } else { "a" };
        finish(&mut c, other, &execution, Some(FailureKind::Trap));
        assert_eq!(
            c.job(&job).expect("job").state(),
            JobState::Scheduled,
            "a stranger's report is ignored"
        );
        finish(&mut c, &owner, &execution, None);
        let events = c.last_sequence(&job).expect("sequence");
        finish(&mut c, &owner, &execution, None);
        finish(&mut c, &owner, &execution, Some(FailureKind::Trap));
        assert_eq!(c.last_sequence(&job).expect("sequence"), events);
        assert_eq!(c.job(&job).expect("job").state(), JobState::Completed);
    }

    /// A reconnecting executor keeps what it reports running; what it does not report is
    /// lost and retried; what nobody wants is cancelled.
    #[test]
    fn reconnect_reconciles_executions() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 2, &[]);
        let now = SystemTime::now();
        let kept = c.submit(spec(), HashMap::new(), now).expect("submit").id;
        let lost = c.submit(spec(), HashMap::new(), now).expect("submit").id;
        c.schedule(now);
        let placed = assignments(&mut c);
        c.disconnected("a", 1, Instant::now());
        let (tx, _rx) = mpsc::channel(8);
        let register = Register {
            executor_id: "a".into(),
            protocol_version: 1,
            capacity: Some(Capacity {
                slots: 2,
                memory_bytes: 4 << 30,
            }),
            running_execution_ids: vec![placed[0].1.clone(), "unknown-execution".into()],
            ..Default::default()
        };
        c.register(register, ExecutorSender::new(tx), now, Instant::now())
            .expect("register");
        assert_eq!(c.job(&kept).expect("job").state(), JobState::Scheduled);
        assert_eq!(c.job(&lost).expect("job").state(), JobState::Queued);
        let cancels: Vec<_> = c
            .take_effects()
            .messages
            .into_iter()
            .filter_map(|(_, m)| match m.message {
                Some(orchestrator_message::Message::Cancel(cancel)) => Some(cancel.execution_id),
                _ => None,
            })
            .collect();
        assert_eq!(cancels, ["unknown-execution"]);
    }

    /// A Register for executor `twin` from the process `instance`, with one slot.
    fn twin(c: &mut Cluster, instance: &str, running: &[String]) -> Result<u64> {
        let (tx, _rx) = mpsc::channel(8);
        let register = Register {
            executor_id: "twin".into(),
            protocol_version: 1,
            instance_id: instance.into(),
            capacity: Some(Capacity {
                slots: 1,
                memory_bytes: 4 << 30,
            }),
            running_execution_ids: running.to_vec(),
            ..Default::default()
        };
        c.register(
            register,
            ExecutorSender::new(tx),
            SystemTime::now(),
            Instant::now(),
        )
    }

    /// Two processes with one executor id: the second is refused while the first's stream
    /// is live, and the first keeps its execution; the first process may replace its own
    /// stale stream; once that stream ends, another process may have the id.
    #[test]
    fn an_executor_id_in_use_by_another_process_is_refused() {
        let mut c = cluster();
        let first = twin(&mut c, "first", &[]).expect("first");
        let now = SystemTime::now();
        let job = c.submit(spec(), HashMap::new(), now).expect("submit").id;
        c.schedule(now);
        let placed = assignments(&mut c);
        assert_eq!(placed.len(), 1);

        let refused = twin(&mut c, "second", &[]).expect_err("a second process");
        assert!(
            matches!(&refused, Error::AlreadyExists(m) if m.contains("twin") && m.contains("--executor-id")),
            "{refused}"
        );
        assert!(
            c.take_effects().writes.is_empty(),
            "a refusal changes nothing"
        );
        assert_eq!(c.job(&job).expect("job").state(), JobState::Scheduled);
        assert_eq!(c.running_on("twin"), 1);

        let replaced = twin(&mut c, "first", &[placed[0].1.clone()]).expect("same process");
        assert!(replaced > first);
        assert_eq!(c.job(&job).expect("job").state(), JobState::Scheduled);

        c.disconnected("twin", replaced, Instant::now());
        twin(&mut c, "second", &[]).expect("the id is free once the stream ended");
    }

    /// A stream silent for a lease no longer holds its executor id.
    #[test]
    fn an_executor_id_is_free_after_a_lease_of_silence() {
        let mut c = cluster();
        twin(&mut c, "first", &[]).expect("first");
        twin(&mut c, "second", &[]).expect_err("the first is live");
        c.sweep(SystemTime::now(), Instant::now() + Duration::from_secs(11));
        twin(&mut c, "second", &[]).expect("the first was lost");
    }

    /// Cancelling a queued job ends it; a terminal job cannot be cancelled; a running one
    /// is told to stop.
    #[test]
    fn cancel_rules() {
        let mut c = cluster();
        let now = SystemTime::now();
        let queued = c.submit(spec(), HashMap::new(), now).expect("submit").id;
        assert_eq!(
            c.cancel(&queued, "", now).expect("cancel").state(),
            JobState::Cancelled
        );
        assert!(matches!(
            c.cancel(&queued, "", now),
            Err(Error::FailedPrecondition(_))
        ));
        let _a = connect(&mut c, "a", 1, &[]);
        let running = c.submit(spec(), HashMap::new(), now).expect("submit").id;
        c.schedule(now);
        let execution = assignments(&mut c)[0].1.clone();
        c.cancel(&running, "enough", now).expect("cancel");
        let sent_cancel = c.take_effects().messages.into_iter().any(|(_, m)| {
            matches!(m.message, Some(orchestrator_message::Message::Cancel(ref x)) if x.execution_id == execution)
        });
        assert!(sent_cancel);
        assert!(matches!(
            c.cancel("no-such-job", "", now),
            Err(Error::NotFound(_))
        ));
    }

    /// Memory requests count against executor memory.
    #[test]
    fn memory_is_a_placement_constraint() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 4, &[]);
        let now = SystemTime::now();
        let mut big = spec();
        big.resources = Some(Resources {
            memory_bytes: 3 << 30,
        });
        let _first = c
            .submit(big.clone(), HashMap::new(), now)
            .expect("submit")
            .id;
        let second = c.submit(big, HashMap::new(), now).expect("submit").id;
        c.schedule(now);
        assert_eq!(assignments(&mut c).len(), 1, "4 GiB hold one 3 GiB job");
        assert_eq!(c.job(&second).expect("job").state(), JobState::Queued);
    }

    /// A job needing more memory than any known executor offers is refused at submit,
    /// naming the largest offer, instead of waiting out its queue timeout.
    #[test]
    fn memory_beyond_every_executor_is_refused_at_submit() {
        let mut c = cluster();
        let (tx, _rx) = mpsc::channel(4);
        let small = Register {
            executor_id: "small".into(),
            protocol_version: 1,
            capacity: Some(Capacity {
                slots: 1,
                memory_bytes: 1 << 30,
            }),
            ..Default::default()
        };
        c.register(
            small,
            ExecutorSender::new(tx),
            SystemTime::now(),
            Instant::now(),
        )
        .expect("register");
        let mut big = spec();
        big.resources = Some(Resources {
            memory_bytes: 2 << 30,
        });
        let refused = c
            .submit(big, HashMap::new(), SystemTime::now())
            .expect_err("too big");
        assert!(
            refused.to_string().contains("the largest offers 1.0 GiB"),
            "{refused}"
        );
    }

    /// Log chunks that were already received are dropped, partial overlaps trimmed.
    #[test]
    fn resent_log_chunks_are_dropped() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 1, &[]);
        let now = SystemTime::now();
        let job = c.submit(spec(), HashMap::new(), now).expect("submit").id;
        c.schedule(now);
        let execution = assignments(&mut c)[0].1.clone();
        let chunk = |offset: u64, data: &'static [u8]| LogChunk {
            execution_id: execution.clone(),
            stream: shoal::proto::LogStream::Stdout as i32,
            offset,
            data: bytes::Bytes::from_static(data),
        };
        let before = c.last_sequence(&job).expect("sequence");
        c.execution_log("a", chunk(0, b"hello "), now);
        c.execution_log("a", chunk(0, b"hello "), now);
        c.execution_log("a", chunk(3, b"lo world"), now);
        assert_eq!(c.last_sequence(&job).expect("sequence"), before + 2);
        let logged: Vec<_> = c
            .take_effects()
            .writes
            .into_iter()
            .filter_map(|w| match w {
                Write::Event { event, .. } => match event.event {
                    Some(job_event::Event::Log(chunk)) => Some((chunk.offset, chunk.data)),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(
            logged,
            vec![
                (0, bytes::Bytes::from_static(b"hello ")),
                (6, bytes::Bytes::from_static(b"world"))
            ]
        );
    }

    /// Past the queue bound, submissions are refused as RESOURCE_EXHAUSTED; a job leaving
    /// the queue makes room again.
    #[test]
    fn a_full_queue_refuses_submissions() {
        let mut c = cluster();
        c.config.max_queued = 2;
        let now = SystemTime::now();
        let first = c.submit(spec(), HashMap::new(), now).expect("room");
        c.submit(spec(), HashMap::new(), now).expect("room");
        let refused = c.submit(spec(), HashMap::new(), now).expect_err("full");
        assert!(
            matches!(refused, Error::ResourceExhausted(_)),
            "{refused:?}"
        );
        c.cancel(&first.id, "make room", now).expect("cancel");
        c.submit(spec(), HashMap::new(), now).expect("room again");
    }
}
