//! Execution transitions: the reports an executor sends (state updates, log chunks,
//! finished) and how an execution's end decides its job's (done, or retried under the job's
//! retry policy).

use std::time::SystemTime;

use shoal::proto::{
    Execution, ExecutionFinished, ExecutionResult, ExecutionState, Failure, FailureKind, JobState,
    LogChunk, LogStream, job_event,
};

use super::*;
use crate::metrics;
use crate::records::Write;

/// The streams a log chunk may name; a chunk naming another is dropped, so every offset
/// kept for an execution is one its end forgets.
const LOG_STREAMS: [i32; 2] = [LogStream::Stdout as i32, LogStream::Stderr as i32];

impl Cluster {
    pub(super) fn owned_execution(
        &self,
        executor_id: &str,
        execution_id: &str,
    ) -> Option<&Execution> {
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
        // A partition's progress is its execution's alone: the job is RUNNING throughout.
        let partitioned = self.is_partitioned(&execution.job_id);
        let current = self.is_current(execution) && !partitioned;
        let job_id = execution.job_id.clone();
        self.unacknowledged.remove(execution_id);
        let Some(execution) = self.executions.get_mut(execution_id) else {
            return;
        };
        execution.state = state as i32;
        if state == ExecutionState::Running {
            execution.started_at = Some(shoal::proto::timestamp(now));
        }
        // A partition's progress is kept in memory only: its record is stored when it is
        // placed and when it ends (with the time it started), which is all a restart needs
        // (a stored SCHEDULED execution counts as running until its executor says
        // otherwise). Writing three more rows per partition was most of a fanned-out job's
        // store traffic. The price: a partition running across an orchestrator restart
        // shows SCHEDULED until it ends, and its record has no start time.
        if !partitioned {
            self.effects
                .writes
                .push(Write::Execution(execution.clone()));
        }
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
        if !LOG_STREAMS.contains(&chunk.stream) {
            tracing::warn!(
                executor_id,
                execution_id = chunk.execution_id,
                stream = chunk.stream,
                "dropping a log chunk of no known stream"
            );
            return;
        }
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
                if let Some(execution) = self.executions.get(&execution_id)
                    && self.current_partition(execution).is_some()
                {
                    let job_id = execution.job_id.clone();
                    self.end_execution(
                        &execution_id,
                        ExecutionState::Completed,
                        None,
                        Some(result),
                        now,
                    );
                    self.partition_completed(&job_id, &execution_id, now);
                    return;
                }
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

    pub(super) fn end_execution(
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
        for stream in LOG_STREAMS {
            self.log_offsets.remove(&(execution_id.to_owned(), stream));
        }
        let memory = self
            .jobs
            .get(&execution.job_id)
            .map_or(0, |j| j.rules.memory_bytes);
        if let Some(node) = self.nodes.get_mut(&executor_id) {
            node.remove_running(execution_id, memory);
        }
        self.effects.schedule = true;
    }

    /// Ends an execution with a failure, then retries its job or fails it, as the job's
    /// retry policy says.
    pub(super) fn fail_execution(
        &mut self,
        execution_id: &str,
        mut failure: Failure,
        now: SystemTime,
    ) {
        let Some(execution) = self.executions.get(execution_id) else {
            return;
        };
        if execution.state().is_terminal() {
            return;
        }
        let job_id = execution.job_id.clone();
        let current = self.is_current(execution);
        let partitioned = self.is_partitioned(&job_id);
        // A partition's attempts are its own; a plain job's are the job's.
        let attempts = if partitioned {
            execution.attempt
        } else {
            self.jobs.get(&job_id).map_or(0, |entry| entry.job.attempts)
        };
        let max_attempts = self.jobs.get(&job_id).map_or(0, |e| e.rules.max_attempts);
        failure.retryable = self
            .jobs
            .get(&job_id)
            .is_some_and(|entry| entry.rules.retries(failure.kind(), attempts));
        let state = failure.kind().execution_state();
        self.end_execution(execution_id, state, Some(failure.clone()), None, now);
        if !current {
            return;
        }
        if partitioned {
            self.partition_failed(&job_id, execution_id, failure, now);
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    /// A lost executor's execution is retried elsewhere; a trap is not retried.
    #[test]
    fn executor_loss_is_retried_but_traps_are_not() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 1, &[]);
        let now = SystemTime::now();
        let job = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect("submit")
            .id;
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

    /// A spec's own policy is followed: with `retry_on: [TRAP]` and three attempts, a trap
    /// is retried until the budget is spent, and the job fails with the last attempt's
    /// failure; nothing more is placed.
    #[test]
    fn a_custom_policy_retries_traps_up_to_its_budget() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 1, &[]);
        let now = SystemTime::now();
        let mut traps = spec();
        traps.retry = Some(shoal::proto::RetryPolicy {
            max_attempts: 3,
            retry_on: vec![FailureKind::Trap as i32],
        });
        let job = c
            .submit(accept(traps), HashMap::new(), now)
            .expect("submit")
            .id;
        for attempt in 1..=3u32 {
            c.schedule(now);
            let placed = assignments(&mut c);
            assert_eq!(placed.len(), 1, "attempt {attempt} is placed");
            let finished = ExecutionFinished {
                execution_id: placed[0].1.clone(),
                state: ExecutionState::Failed as i32,
                result: None,
                failure: Some(Failure::new(FailureKind::Trap, format!("trap {attempt}"))),
                result_blocks: Vec::new(),
            };
            c.execution_finished("a", finished, now);
            let state = c.job(&job).expect("job").state();
            let expected = if attempt < 3 {
                JobState::Queued
            } else {
                JobState::Failed
            };
            assert_eq!(state, expected, "after attempt {attempt}");
        }
        let failed = c.job(&job).expect("job");
        assert_eq!(failed.attempts, 3);
        let failure = failed.failure.as_ref().expect("failure");
        assert_eq!(failure.kind(), FailureKind::Trap);
        assert!(failure.message.contains("trap 3"), "{}", failure.message);
        c.schedule(now);
        assert!(assignments(&mut c).is_empty(), "nothing more is placed");
    }

    /// The default policy retries only executor loss: a guest that hits its memory limit,
    /// its timeout or its output quota fails on its first attempt.
    #[test]
    fn limits_hit_by_the_guest_are_not_retried_by_default() {
        for kind in [
            FailureKind::MemoryLimit,
            FailureKind::Timeout,
            FailureKind::OutputLimit,
            FailureKind::Trap,
            FailureKind::LinkError,
        ] {
            let mut c = cluster();
            let _a = connect(&mut c, "a", 1, &[]);
            let now = SystemTime::now();
            let job = c
                .submit(accept(spec()), HashMap::new(), now)
                .expect("submit")
                .id;
            c.schedule(now);
            let execution = assignments(&mut c)[0].1.clone();
            finish(&mut c, "a", &execution, Some(kind));
            let job = c.job(&job).expect("job");
            assert_eq!(job.attempts, 1, "{kind:?}");
            assert_eq!(
                job.failure.as_ref().map(|f| (f.kind(), f.retryable)),
                Some((kind, false)),
                "{kind:?}"
            );
            assert!(job.state().is_terminal(), "{kind:?}: {:?}", job.state());
            c.schedule(now);
            assert!(
                assignments(&mut c).is_empty(),
                "{kind:?} is not placed again"
            );
        }
    }

    /// Once a retry has started another execution, whatever the superseded one reports
    /// late (its executor back after the lease) changes nothing: no event, no state, no
    /// result; the job follows its current execution only.
    #[test]
    fn a_late_report_from_a_superseded_execution_changes_nothing() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 1, &[]);
        let now = SystemTime::now();
        let job = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect("submit")
            .id;
        c.schedule(now);
        let first = assignments(&mut c)[0].1.clone();
        c.disconnected("a", 1, Instant::now());
        c.sweep(now, Instant::now() + Duration::from_secs(11));
        let _b = connect(&mut c, "b", 1, &[]);
        c.schedule(now);
        let second = assignments(&mut c)[0].1.clone();
        assert_eq!(executor_of(&c, &second), "b");
        c.execution_update("b", &second, ExecutionState::Running, now);
        let _a = connect(&mut c, "a", 1, &[]);
        c.take_effects();
        let events = c.last_sequence(&job).expect("sequence");

        c.execution_update("a", &first, ExecutionState::Publishing, now);
        c.execution_log(
            "a",
            LogChunk {
                execution_id: first.clone(),
                stream: shoal::proto::LogStream::Stdout as i32,
                offset: 0,
                data: bytes::Bytes::from_static(b"late"),
            },
            now,
        );
        finish(&mut c, "a", &first, None);

        assert_eq!(c.last_sequence(&job).expect("sequence"), events);
        assert!(c.take_effects().writes.is_empty(), "nothing is written");
        let current = c.job(&job).expect("job");
        assert_eq!(current.state(), JobState::Running);
        assert_eq!(current.attempts, 2);
        assert!(current.result.is_none());
        assert_eq!(
            c.execution(&first)
                .expect("first")
                .failure
                .as_ref()
                .map(|f| f.kind()),
            Some(FailureKind::ExecutorLost)
        );
        finish(&mut c, "b", &second, None);
        assert_eq!(c.job(&job).expect("job").state(), JobState::Completed);
    }

    /// A job that loses its executor on every attempt (a guest that crashes executors) is
    /// not carried across the fleet forever: at the retry budget it fails EXECUTORS_LOST,
    /// counting its losses, and no further execution is placed.
    #[test]
    fn a_job_that_keeps_losing_its_executors_stops_at_the_budget() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 1, &[]);
        let now = SystemTime::now();
        let job = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect("submit")
            .id;
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

    /// A report is applied once, however often it arrives, and only from the executor that
    /// owns the execution.
    #[test]
    fn finished_reports_are_idempotent() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 1, &[]);
        let _b = connect(&mut c, "b", 1, &[]);
        let now = SystemTime::now();
        let job = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect("submit")
            .id;
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

    /// Log chunks are peer-supplied numbers: an offset near u64::MAX does not overflow,
    /// and past the per-execution bound chunks are dropped; a resent state older than the
    /// execution's does not move it back.
    #[test]
    fn hostile_reports_change_nothing_they_should_not() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 1, &[]);
        let now = SystemTime::now();
        let job = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect("submit")
            .id;
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

    /// Log chunks that were already received are dropped, partial overlaps trimmed.
    #[test]
    fn resent_log_chunks_are_dropped() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 1, &[]);
        let now = SystemTime::now();
        let job = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect("submit")
            .id;
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
}
