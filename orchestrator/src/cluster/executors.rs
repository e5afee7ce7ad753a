//! Executor transitions: register (with reconciliation of what it runs), heartbeats and
//! their reconciliation, drain, cordon, eviction, the lease sweep, taking back assignments
//! never acknowledged, and the report acknowledgements.

use std::collections::HashSet;
use std::time::{Instant, SystemTime};

use shoal::proto::{
    ExecutionState, Failure, FailureKind, Node, NodeState, Register, orchestrator_message,
};

use super::*;
use crate::error::{Error, Result};
use crate::records::Write;

impl Cluster {
    /// An executor (re)connected. Returns the link generation that later calls must quote.
    /// Executions it still runs stay with it; executions it should run but does not report
    /// are lost; executions it runs that nobody wants any more are cancelled.
    pub fn register(
        &mut self,
        register: Register,
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
                shoal::spec::units::format_size(claimed.memory_bytes),
                bound.slots,
                shoal::spec::units::format_size(bound.memory_bytes)
            )));
        }
        for (key, value) in &register.labels {
            shoal::spec::selector::label_key(key).map_err(Error::InvalidArgument)?;
            shoal::spec::selector::label_value(value).map_err(Error::InvalidArgument)?;
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
        let entry = self.nodes.entry(id.clone()).or_insert_with(|| {
            let node = Node {
                id: id.clone(),
                ..Default::default()
            };
            NodeEntry::new(node, instant)
        });
        entry.node.state = NodeState::Connected as i32;
        entry.node.labels = register.labels;
        entry.node.capacity = register.capacity;
        entry.node.version = register.version;
        entry.node.connected_at = Some(shoal::proto::timestamp(now));
        entry.node.last_heartbeat = Some(shoal::proto::timestamp(now));
        entry.link = Some(NodeLink {
            generation,
            instance_id: register.instance_id,
            // Reports up to here were acknowledged on an earlier stream: they count as
            // arrived (heartbeats quote the process's numbers, not the stream's).
            received_through: register.acknowledged_through,
            features: shoal::proto::Features::from_values(&register.features),
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
    pub(super) fn cancel_unwanted<'a>(
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
            tracing::info!(executor_id, "executor draining");
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
    pub(super) fn take_back_unacknowledged(&mut self, now: SystemTime) {
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
                        shoal::spec::units::format_duration(timeout)
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
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    /// An executor that takes an assignment and never reports on it (it may heartbeat all
    /// it likes) has it taken back after the acknowledgement timeout: cancelled there,
    /// failed EXECUTOR_LOST and requeued. One that acknowledges in time keeps it.
    #[test]
    fn an_unacknowledged_assignment_is_taken_back() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 2, &[]);
        let now = SystemTime::now();
        let silent = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect("submit")
            .id;
        let acked = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect("submit")
            .id;
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
        let job = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect("submit")
            .id;
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
        let mut try_register = |r: Register| c.register(r, SystemTime::now(), Instant::now());
        let error = try_register(register("greedy", 1_000_000)).expect_err("too many slots");
        assert!(error.to_string().contains("at most 256 slots"), "{error}");
        for bad in ["", "a\0b", "a\nCONNECTED", "a/b", &"x".repeat(254)] {
            let error = try_register(register(bad, 1)).expect_err(bad);
            assert!(error.to_string().len() < 300, "{error}");
        }
        try_register(register("node-1.zone_a", 256)).expect("a fine registration");
    }

    /// A reconnecting executor keeps what it reports running; what it does not report is
    /// lost and retried; what nobody wants is cancelled.
    #[test]
    fn reconnect_reconciles_executions() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 2, &[]);
        let now = SystemTime::now();
        let kept = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect("submit")
            .id;
        let lost = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect("submit")
            .id;
        c.schedule(now);
        let placed = assignments(&mut c);
        c.disconnected("a", 1, Instant::now());
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
        c.register(register, now, Instant::now()).expect("register");
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

    /// Two processes with one executor id: the second is refused while the first's stream
    /// is live, and the first keeps its execution; the first process may replace its own
    /// stale stream; once that stream ends, another process may have the id.
    #[test]
    fn an_executor_id_in_use_by_another_process_is_refused() {
        let mut c = cluster();
        let first = twin(&mut c, "first", &[]).expect("first");
        let now = SystemTime::now();
        let job = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect("submit")
            .id;
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
}
