//! Scheduling: placing queued jobs on connected executors with a free slot, enough memory
//! and matching labels (each job oldest first gets one execution, then the partitioned
//! ones share what is left, fewest running first); failing jobs past their queue timeout;
//! recording why a job waits; and the assignment itself (the execution record and the
//! `Assign` message).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::ops::Bound;
use std::time::SystemTime;

use shoal::proto::{
    Execution, ExecutionState, Failure, FailureKind, JobState, NodeState, Waiting, job_event,
    orchestrator_message,
};
use shoal::spec::selector::Selector;

use super::*;
use crate::records::Write;

/// What placing a job depends on: its constraints, its memory, and whether it is
/// partitioned (partitions go only to executors that run them).
type Shape = (Selector, u64, bool);

fn shape(entry: &JobEntry) -> Shape {
    (
        entry.rules.constraints.clone(),
        entry.rules.memory_bytes,
        entry.partitions.is_some(),
    )
}

impl Cluster {
    /// Places queued jobs on connected executors with a free slot, enough memory and
    /// matching labels: first one execution for every job that runs none, oldest first,
    /// then partitions of the partitioned jobs, one at a time to the one with the fewest
    /// running (a job fanned out wide never keeps a later one waiting for all its
    /// partitions); fails jobs past their queue timeout; records for every job left
    /// waiting why it waits. This full pass runs on every sweep tick.
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
    pub(super) fn free_slots(&self) -> u64 {
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

    pub(super) fn schedule_pass(&mut self, now: SystemTime, full: bool) {
        let mut unplaceable: HashMap<Shape, String> = HashMap::new();
        let mut free_slots = self.free_slots();
        let mut cursor: Option<String> = None;
        // Partitioned jobs with partitions running and more waiting, by how many run.
        let mut sharing: BinaryHeap<Reverse<(u32, String)>> = BinaryHeap::new();
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
            // Jobs of one shape are placed alike: once one cannot be, the rest are not tried.
            let shape = shape(entry);
            let started = entry.job.state() != JobState::Queued;
            let placed = match unplaceable.get(&shape) {
                Some(reason) => Err(reason.clone()),
                // A partitioned job already running waits for the second round; one not yet
                // running gets a partition now, like any other job.
                None if entry.partitions.is_some() => {
                    let running = self.running_partitions(&job_id);
                    if running > 0 {
                        sharing.push(Reverse((running, job_id)));
                        continue;
                    }
                    match self.place_next_partition(&job_id, now) {
                        Ok(true) => {
                            free_slots = free_slots.saturating_sub(1);
                            sharing.push(Reverse((1, job_id)));
                            continue;
                        }
                        Ok(false) => continue,
                        Err(reason) => Err(reason),
                    }
                }
                None => match self.placement(&entry.rules, false) {
                    Ok(executor_id) => {
                        self.assign(&job_id, &executor_id, now);
                        Ok(())
                    }
                    Err(reason) => Err(reason),
                },
            };
            let reason = match placed {
                Ok(()) => {
                    free_slots = free_slots.saturating_sub(1);
                    continue;
                }
                Err(_) if !full && free_slots == 0 => break,
                // A partitioned job already running waits for room without a queue timeout.
                Err(reason) if started => {
                    unplaceable.entry(shape).or_insert(reason);
                    continue;
                }
                Err(reason) => reason,
            };
            let Some(entry) = self.jobs.get(&job_id) else {
                continue;
            };
            let queue_timeout = entry.rules.queue_timeout;
            let waited = now.duration_since(entry.queued_since).unwrap_or_default();
            let stale_reason = entry.job.status_message != reason;
            unplaceable.entry(shape).or_insert_with(|| reason.clone());
            if waited >= queue_timeout {
                self.queue.remove(&job_id);
                // A partitioned job's partitions will not run either.
                self.stop_partitions(&job_id, "queue timeout");
                let message = format!(
                    "not scheduled within the queue timeout of {}: {reason}",
                    shoal::spec::units::format_duration(queue_timeout)
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
                // Persisted so `describe` says why the job waits, and an event so a watcher
                // learns it without asking (up to a cap per stay in the queue).
                if let Some(entry) = self.jobs.get_mut(&job_id) {
                    entry.job.status_message = reason.clone();
                    self.effects.writes.push(Write::Job(entry.job.clone()));
                    if entry.waiting_notes < MAX_WAITING_NOTES {
                        entry.waiting_notes += 1;
                        // The last one says where to look from then on.
                        let reason = if entry.waiting_notes == MAX_WAITING_NOTES {
                            format!("{reason} (later changes: `shoal job describe`)")
                        } else {
                            reason
                        };
                        let waiting = job_event::Event::Waiting(Waiting { reason });
                        self.push_event(&job_id, waiting, now);
                    }
                }
            }
        }
        // Second round: what is left goes to the partitioned jobs one partition at a
        // time, always to the one with the fewest running (the oldest among equals), so
        // jobs fanned out together share the fleet evenly, and none waits behind another's
        // whole fan-out.
        while free_slots > 0
            && let Some(Reverse((running, job_id))) = sharing.pop()
        {
            let Some(entry) = self.jobs.get(&job_id) else {
                continue;
            };
            if !unplaceable.is_empty() && unplaceable.contains_key(&shape(entry)) {
                continue;
            }
            match self.place_next_partition(&job_id, now) {
                Ok(true) => {
                    free_slots -= 1;
                    sharing.push(Reverse((running + 1, job_id)));
                }
                Ok(false) => {}
                // Already running: it waits for room without a queue timeout.
                Err(reason) => {
                    if let Some(entry) = self.jobs.get(&job_id) {
                        unplaceable.insert(shape(entry), reason);
                    }
                }
            }
        }
    }

    /// The executor to run a job with `rules` on, or why there is none. Among fitting
    /// executors, the one with the most free slots wins, which spreads work across the fleet.
    /// A partition (`partition`) goes only to an executor that runs partitions.
    pub(super) fn placement(
        &self,
        rules: &JobRules,
        partition: bool,
    ) -> std::result::Result<String, String> {
        let (selector, memory) = (&rules.constraints, rules.memory_bytes);
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
        let mut too_old = 0;
        for entry in &connected {
            if partition && !entry.link.as_ref().is_some_and(|l| l.features.partitions) {
                too_old += 1;
                continue;
            }
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
        if too_old == total {
            return Err(format!(
                "none of the {total} connected executors runs partitions: they are of a \
                 version from before partitions, and must be upgraded"
            ));
        }
        let total = total - too_old;
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
                shoal::spec::units::format_size(memory),
                shoal::spec::units::format_size(largest)
            ));
        }
        Err("waiting for a free slot on a matching executor".into())
    }

    pub(super) fn assign(&mut self, job_id: &str, executor_id: &str, now: SystemTime) {
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
        let trace_context = self.placement_trace(job_id, &execution_id, executor_id, attempt, now);
        let execution = Execution {
            id: execution_id.clone(),
            job_id: job_id.to_owned(),
            executor_id: executor_id.to_owned(),
            attempt,
            state: ExecutionState::Scheduled as i32,
            created_at: Some(shoal::proto::timestamp(now)),
            ..Default::default()
        };
        self.record_assignment(execution, now);
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
                partition: 0,
                partition_count: 0,
            }),
        );
    }

    /// Records a new execution on its executor: stored, counted against the executor's
    /// slots, and awaiting the executor's acknowledgement.
    pub(super) fn record_assignment(&mut self, execution: Execution, now: SystemTime) {
        let (job_id, execution_id) = (execution.job_id.clone(), execution.id.clone());
        let (executor_id, attempt) = (execution.executor_id.clone(), execution.attempt);
        tracing::info!(
            job_id,
            execution_id,
            executor_id,
            attempt,
            partition = execution.partition,
            "execution assigned"
        );
        self.effects
            .writes
            .push(Write::Execution(execution.clone()));
        let memory = self.memory_of(&job_id);
        self.executions.insert(execution_id.clone(), execution);
        if let Some(node) = self.nodes.get_mut(&executor_id) {
            node.add_running(execution_id.clone(), memory);
        }
        self.unacknowledged.insert(execution_id, now);
    }

    /// The placement, as a span of the job's trace and the parent of the execution's spans
    /// on the executor. Only for traced jobs: an untraced one logs nothing here.
    pub(super) fn placement_trace(
        &self,
        job_id: &str,
        execution_id: &str,
        executor_id: &str,
        attempt: u32,
        now: SystemTime,
    ) -> HashMap<String, String> {
        let Some(entry) = self.jobs.get(job_id) else {
            return HashMap::new();
        };
        if entry.job.trace_context.is_empty() {
            return HashMap::new();
        }
        let waited = now.duration_since(entry.queued_since).unwrap_or_default();
        let span = tracing::info_span!(
            "schedule",
            job_id,
            execution_id,
            executor_id,
            attempt,
            queue_wait_ms = waited.as_millis() as u64,
        );
        shoal::daemon::telemetry::set_parent_from_map(&span, &entry.job.trace_context);
        shoal::daemon::telemetry::context_map(&span)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use shoal::proto::Resources;

    /// Jobs are placed oldest first, spread over executors, and one that fits nowhere
    /// waits with a reason.
    #[test]
    fn fifo_placement_spreads_and_explains() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 1, &[]);
        let _b = connect(&mut c, "b", 1, &[]);
        let now = SystemTime::now();
        let jobs: Vec<String> = (0..3)
            .map(|_| {
                c.submit(accept(spec()), HashMap::new(), now)
                    .expect("submit")
                    .id
            })
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

    /// The recorded `Waiting` events of a job's history.
    fn waiting_events(c: &mut Cluster, job_id: &str) -> Vec<String> {
        c.take_effects()
            .writes
            .into_iter()
            .filter_map(|w| match w {
                Write::Event { job_id: id, event } if id == job_id => match event.event {
                    Some(job_event::Event::Waiting(w)) => Some(w.reason),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// A change in why a queued job waits is an event of its history (a watcher needs no
    /// lookups to follow it), recorded once per change, and at most `MAX_WAITING_NOTES`
    /// times per stay in the queue however often the fleet flaps; past the cap the status
    /// message still follows.
    #[test]
    fn why_a_job_waits_is_an_event_capped_per_stay() {
        let mut c = cluster();
        let now = SystemTime::now();
        let mut gated = spec();
        gated.constraints = vec!["pool=gpu".into()];
        let job = c
            .submit(accept(gated), HashMap::new(), now)
            .expect("submit")
            .id;
        c.take_effects();
        c.schedule(now);
        let first = waiting_events(&mut c, &job);
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(first[0].contains("none is connected"), "{first:?}");
        // An unchanged reason is not repeated on the next pass.
        c.schedule(now);
        assert_eq!(waiting_events(&mut c, &job), Vec::<String>::new());
        // Each executor that connects and goes changes the reason twice.
        let mut recorded = Vec::new();
        for round in 0..MAX_WAITING_NOTES {
            let generation = connect(&mut c, "cpu", 1, &[]);
            c.schedule(now);
            let message = c.job(&job).expect("job").status_message.clone();
            assert!(message.contains("pool=gpu"), "round {round}: {message}");
            c.disconnected("cpu", generation, Instant::now());
            c.schedule(now);
            recorded.extend(waiting_events(&mut c, &job));
        }
        assert_eq!(recorded.len() as u32, MAX_WAITING_NOTES - 1);
        let last = recorded.last().expect("events");
        assert!(
            last.ends_with("(later changes: `shoal job describe`)"),
            "{last}"
        );
        assert!(
            c.job(&job)
                .expect("job")
                .status_message
                .contains("none is connected")
        );
        // Connecting the executor the job needs ends the wait.
        connect(&mut c, "gpu", 1, &[("pool", "gpu")]);
        c.schedule(now);
        assert_eq!(c.job(&job).expect("job").state(), JobState::Scheduled);
    }

    /// A job submitted to an empty queue is placed in the submitting transition, its
    /// records and its assignment among the same effects; one submitted behind a waiting
    /// job is left to the scheduler's pass.
    #[test]
    fn a_job_submitted_to_an_empty_queue_is_placed_at_once() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 2, &[("zone", "a")]);
        let now = SystemTime::now();
        let first = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect("submit")
            .id;
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
            .submit(accept(unsatisfiable), HashMap::new(), now)
            .expect("submit")
            .id;
        c.place_if_first(&waiting, now);
        assert!(
            c.job(&waiting)
                .expect("job")
                .status_message
                .contains("zone=b")
        );
        let second = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect("submit")
            .id;
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
            .map(|_| {
                c.submit(accept(spec()), HashMap::new(), now)
                    .expect("submit")
                    .id
            })
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

    /// Constraints pick matching executors; an unsatisfiable one is named, and the job
    /// times out in the queue.
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
        let us = c
            .submit(accept(wants_us), HashMap::new(), now)
            .expect("submit")
            .id;
        let mars = c
            .submit(accept(wants_mars), HashMap::new(), now)
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
            .submit(accept(big.clone()), HashMap::new(), now)
            .expect("submit")
            .id;
        let second = c
            .submit(accept(big), HashMap::new(), now)
            .expect("submit")
            .id;
        c.schedule(now);
        assert_eq!(assignments(&mut c).len(), 1, "4 GiB hold one 3 GiB job");
        assert_eq!(c.job(&second).expect("job").state(), JobState::Queued);
    }

    /// The memory counted against an executor is kept as a running figure; through
    /// placements, completions, a loss and a restart it stays the sum of what its running
    /// executions' jobs ask for, and freed memory is placed again.
    #[test]
    fn allocated_memory_follows_the_executions() {
        let sum = |c: &Cluster, id: &str| -> (u64, u64) {
            let entry = c.nodes.get(id).expect("node");
            let summed = entry
                .node
                .running_execution_ids
                .iter()
                .filter_map(|e| c.executions.get(e))
                .map(|e| c.memory_of(&e.job_id))
                .sum();
            (c.allocated(entry).memory_bytes, summed)
        };
        let mut c = cluster();
        let _a = connect(&mut c, "a", 8, &[]);
        let now = SystemTime::now();
        let sized = |gib: u64| {
            let mut spec = spec();
            spec.resources = Some(Resources {
                memory_bytes: gib << 30,
            });
            accept(spec)
        };
        for gib in [1, 2, 1] {
            c.submit(sized(gib), HashMap::new(), now).expect("submit");
        }
        c.schedule(now);
        let placed = assignments(&mut c);
        assert_eq!(placed.len(), 3, "1 + 2 + 1 GiB fit in 4 GiB");
        assert_eq!(sum(&c, "a"), (4 << 30, 4 << 30));
        let waiting = c.submit(sized(2), HashMap::new(), now).expect("submit").id;
        c.schedule(now);
        assert!(assignments(&mut c).is_empty(), "no memory is left");
        // The 2 GiB job completes: its memory is free, and the waiting job takes it.
        let two = placed
            .iter()
            .find(|(job, _)| {
                c.job(job)
                    .expect("job")
                    .spec
                    .as_ref()
                    .expect("spec")
                    .resources
                    == Some(Resources {
                        memory_bytes: 2 << 30,
                    })
            })
            .expect("the 2 GiB job")
            .1
            .clone();
        finish(&mut c, "a", &two, None);
        assert_eq!(sum(&c, "a"), (2 << 30, 2 << 30));
        c.schedule(now);
        assert_eq!(assignments(&mut c).len(), 1);
        assert_eq!(c.job(&waiting).expect("job").state(), JobState::Scheduled);
        assert_eq!(sum(&c, "a"), (4 << 30, 4 << 30));
        // A report for an execution already ended frees nothing twice.
        finish(&mut c, "a", &two, None);
        assert_eq!(sum(&c, "a"), (4 << 30, 4 << 30));
        // After a restart the figure is rebuilt from the stored executions.
        let snapshot = Snapshot {
            jobs: c.jobs.values().map(|j| j.job.clone()).collect(),
            executions: c.executions.values().cloned().collect(),
            nodes: c.nodes(),
            ..Default::default()
        };
        let restored = Cluster::restore(snapshot, ClusterConfig::default(), Instant::now());
        assert_eq!(sum(&restored, "a"), (4 << 30, 4 << 30));
        // An executor that reconnects without its executions loses them, and their memory.
        let _again = connect(&mut c, "a", 8, &[]);
        assert_eq!(sum(&c, "a"), (0, 0));
    }
}
