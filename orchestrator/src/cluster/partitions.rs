//! Fan-out: a job with `spec.partitions` runs as that many partitions, each its own
//! execution with its own attempts under the job's retry policy. The job's state is
//! derived from theirs: RUNNING once one is placed, COMPLETED when all completed, FAILED
//! when one has used up its attempts (the others cancelled, unless the spec allows partial
//! results), CANCELLED when cancelled.
//!
//! Kept compact: a few bytes per partition in memory beside the job ([`Partitions`]), and
//! per partition only its executions in the store (no copy of the job or its spec). The job
//! record is written when the job's own state changes, not on every partition's; after a
//! restart the partitions' states are rebuilt from their executions.

use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;

use shoal::proto::{
    AssignBatch, BatchedExecution, Execution, ExecutionState, Failure, FailureKind, JobState,
    PartitionCounts, orchestrator_message,
};

mod placement;

use super::shards::Shards;
use super::*;
use crate::records::ShardListing;

/// Where one partition stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartitionState {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

/// The partitions of one job.
pub(super) struct Partitions {
    states: Vec<PartitionState>,
    /// Attempts started per partition.
    attempts: Vec<u8>,
    /// Attempts per partition that ended with their executor lost.
    losses: Vec<u8>,
    /// Partitions waiting to run, lowest index first.
    waiting: BTreeSet<u32>,
    /// The execution in charge of each running partition.
    running: HashMap<String, u32>,
    counts: PartitionCounts,
    /// The result tree is being built (the last partition ended).
    finishing: bool,
    /// The first partition to fail for good, and how (the job's failure names it).
    first_failure: Option<(u32, Failure)>,
    /// The entries of a sharded input, which the partitions split.
    shards: Option<Shards>,
}

/// The count of `counts` that partitions in `state` are in.
fn counter(counts: &mut PartitionCounts, state: PartitionState) -> &mut u32 {
    match state {
        PartitionState::Queued => &mut counts.queued,
        PartitionState::Running => &mut counts.running,
        PartitionState::Completed => &mut counts.completed,
        PartitionState::Failed => &mut counts.failed,
        PartitionState::Cancelled => &mut counts.cancelled,
    }
}

impl Partitions {
    fn new(count: u32) -> Self {
        Partitions {
            states: vec![PartitionState::Queued; count as usize],
            attempts: vec![0; count as usize],
            losses: vec![0; count as usize],
            waiting: (0..count).collect(),
            running: HashMap::new(),
            counts: PartitionCounts {
                queued: count,
                ..Default::default()
            },
            finishing: false,
            first_failure: None,
            shards: None,
        }
    }

    fn count(&self) -> u32 {
        self.states.len() as u32
    }

    fn set(&mut self, index: u32, state: PartitionState) {
        let Some(slot) = self.states.get_mut(index as usize) else {
            return;
        };
        let old = *slot;
        let from = counter(&mut self.counts, old);
        *from = from.saturating_sub(1);
        *counter(&mut self.counts, state) += 1;
        *slot = state;
        if state == PartitionState::Queued {
            self.waiting.insert(index);
        } else {
            self.waiting.remove(&index);
        }
    }

    /// Every partition has ended (none waits, none runs).
    fn all_ended(&self) -> bool {
        self.counts.queued == 0 && self.counts.running == 0
    }

    /// Rebuilds the partitions of a job from its stored executions (after a restart).
    fn restore<'a>(count: u32, executions: impl Iterator<Item = &'a Execution>) -> Self {
        let mut partitions = Partitions::new(count);
        let mut latest: HashMap<u32, &Execution> = HashMap::new();
        for execution in executions {
            let index = execution.partition;
            if index >= count {
                continue;
            }
            let slot = index as usize;
            let attempt = u8::try_from(execution.attempt).unwrap_or(u8::MAX);
            partitions.attempts[slot] = partitions.attempts[slot].max(attempt);
            if execution
                .failure
                .as_ref()
                .is_some_and(|f| f.kind() == FailureKind::ExecutorLost)
            {
                partitions.losses[slot] = partitions.losses[slot].saturating_add(1);
            }
            let newer = latest
                .get(&index)
                .is_none_or(|seen| seen.attempt < execution.attempt);
            if newer {
                latest.insert(index, execution);
            }
        }
        for (index, execution) in latest {
            let state = match execution.state() {
                state if !state.is_terminal() => {
                    partitions.running.insert(execution.id.clone(), index);
                    PartitionState::Running
                }
                ExecutionState::Completed => PartitionState::Completed,
                ExecutionState::Cancelled => PartitionState::Cancelled,
                _ if execution.failure.as_ref().is_some_and(|f| f.retryable) => {
                    PartitionState::Queued
                }
                _ => PartitionState::Failed,
            };
            partitions.set(index, state);
        }
        partitions
    }
}

impl Cluster {
    /// Gives a just-submitted partitioned job its partitions (over `shards`, for a job
    /// with a sharded input).
    pub(super) fn start_partitions(&mut self, job_id: &str, shards: Option<Shards>) {
        if let Some(entry) = self.jobs.get_mut(job_id)
            && entry.rules.partitions > 0
        {
            let mut partitions = Partitions::new(entry.rules.partitions);
            partitions.shards = shards;
            entry.job.partitions = Some(partitions.counts);
            entry.partitions = Some(Box::new(partitions));
        }
    }

    /// After a restart: every partitioned job's partitions from its executions; an
    /// unfinished job with partitions waiting goes back in the queue, and one whose
    /// partitions have all ended is finished.
    pub(super) fn restore_partitions(&mut self, mut listings: HashMap<String, ShardListing>) {
        let mut by_job: HashMap<&str, Vec<&Execution>> = HashMap::new();
        for execution in self.executions.values() {
            if self
                .jobs
                .get(&execution.job_id)
                .is_some_and(|j| j.rules.partitions > 0)
            {
                by_job.entry(&execution.job_id).or_default().push(execution);
            }
        }
        let mut restored = Vec::new();
        let mut lost_listings = Vec::new();
        for (job_id, entry) in &self.jobs {
            // An ended job keeps the counts it was stored with; only unfinished ones need
            // their partitions back.
            if entry.rules.partitions == 0 || entry.job.state().is_terminal() {
                continue;
            }
            let executions = by_job.remove(job_id.as_str()).unwrap_or_default();
            let mut partitions =
                Partitions::restore(entry.rules.partitions, executions.into_iter());
            let sharded = entry
                .job
                .spec
                .as_ref()
                .and_then(|spec| Some((spec, spec.inputs.iter().position(|i| i.shard)?)));
            match (sharded, listings.remove(job_id)) {
                (Some((spec, input)), Some(listing)) => {
                    partitions.shards = Some(Shards::new(spec, input, listing));
                }
                (Some(_), None) => {
                    lost_listings.push(job_id.clone());
                    continue;
                }
                (None, _) => {}
            }
            restored.push((job_id.clone(), partitions));
        }
        for job_id in lost_listings {
            // Without the entries its partitions cannot run what was accepted: none will.
            let message = "the stored listing of its sharded input is missing".to_owned();
            let failure = Failure::new(FailureKind::Internal, message.clone());
            let now = SystemTime::now();
            self.queue.remove(&job_id);
            if let Some(entry) = self.jobs.get_mut(&job_id) {
                entry.job.partitions = Some(PartitionCounts {
                    cancelled: entry.rules.partitions,
                    ..Default::default()
                });
            }
            self.set_job_state(&job_id, JobState::Failed, message, Some(failure), None, now);
        }
        for (job_id, partitions) in restored {
            let unfinished = self
                .jobs
                .get(&job_id)
                .is_some_and(|j| !j.job.state().is_terminal());
            if unfinished && !partitions.waiting.is_empty() {
                self.queue.insert(job_id.clone());
            }
            let ended = unfinished && partitions.all_ended();
            if let Some(entry) = self.jobs.get_mut(&job_id) {
                entry.job.partitions = Some(partitions.counts);
                entry.partitions = Some(Box::new(partitions));
            }
            if ended {
                self.partitions_ended(&job_id, SystemTime::now());
            }
        }
    }

    /// Whether `execution_id` is an execution of a partitioned job.
    pub fn runs_a_partition(&self, execution_id: &str) -> bool {
        self.executions
            .get(execution_id)
            .is_some_and(|e| self.is_partitioned(&e.job_id))
    }

    /// The partition an execution runs, if it is the one in charge of it now.
    pub(super) fn current_partition(&self, execution: &Execution) -> Option<u32> {
        let entry = self.jobs.get(&execution.job_id)?;
        if entry.job.state().is_terminal() {
            return None;
        }
        entry
            .partitions
            .as_ref()?
            .running
            .get(&execution.id)
            .copied()
    }

    /// A partition's execution completed (it was in charge: the caller checked).
    pub(super) fn partition_completed(
        &mut self,
        job_id: &str,
        execution_id: &str,
        now: SystemTime,
    ) {
        let Some(partitions) = self.partitions_mut(job_id) else {
            return;
        };
        if let Some(index) = partitions.running.remove(execution_id) {
            partitions.set(index, PartitionState::Completed);
        }
        self.partition_counts_changed(job_id, now);
    }

    /// A partition's execution failed (it was in charge: the caller checked): it runs
    /// again if the retry policy says so; otherwise it failed for good, which ends the job
    /// unless the spec allows partial results.
    pub(super) fn partition_failed(
        &mut self,
        job_id: &str,
        execution_id: &str,
        mut failure: Failure,
        now: SystemTime,
    ) {
        let Some(entry) = self.jobs.get_mut(job_id) else {
            return;
        };
        let rules = entry.rules.clone();
        let Some(partitions) = entry.partitions.as_deref_mut() else {
            return;
        };
        let Some(index) = partitions.running.remove(execution_id) else {
            return;
        };
        let slot = index as usize;
        let attempts = u32::from(partitions.attempts[slot]);
        if failure.kind() == FailureKind::ExecutorLost {
            partitions.losses[slot] = partitions.losses[slot].saturating_add(1);
            let losses = u32::from(partitions.losses[slot]);
            if !failure.retryable && losses >= 2 && losses >= attempts {
                failure = Failure::new(
                    FailureKind::ExecutorsLost,
                    format!(
                        "every attempt ({losses} of {losses}) lost its executor; the partition \
                         may be what brings them down (last: {})",
                        failure.message
                    ),
                );
            }
        }
        if failure.retryable {
            partitions.set(index, PartitionState::Queued);
            self.queue.insert(job_id.to_owned());
            self.partition_counts_changed(job_id, now);
            return;
        }
        partitions.set(index, PartitionState::Failed);
        if partitions.first_failure.is_none() {
            partitions.first_failure = Some((index, failure.clone()));
        }
        if rules.allow_partial {
            self.partition_counts_changed(job_id, now);
            return;
        }
        // One partition failed for good: the job with it; the rest will not be needed.
        let message = format!("partition {index} failed: {failure}");
        let failure = Failure::new(failure.kind(), message.clone());
        self.stop_partitions(job_id, &message);
        let state = failure.kind().execution_state().job_state();
        self.set_job_state(job_id, state, message, Some(failure), None, now);
    }

    /// Cancels every running partition of a job (told to stop) and every waiting one.
    pub(super) fn stop_partitions(&mut self, job_id: &str, reason: &str) {
        self.queue.remove(job_id);
        let Some(partitions) = self.partitions_mut(job_id) else {
            return;
        };
        let waiting: Vec<u32> = partitions.waiting.iter().copied().collect();
        for index in waiting {
            partitions.set(index, PartitionState::Cancelled);
        }
        let running: Vec<(String, u32)> = partitions.running.drain().collect();
        for (_, index) in &running {
            partitions.set(*index, PartitionState::Cancelled);
        }
        let counts = partitions.counts;
        if let Some(entry) = self.jobs.get_mut(job_id) {
            entry.job.partitions = Some(counts);
        }
        for (execution_id, _) in running {
            let Some(executor_id) = self
                .executions
                .get(&execution_id)
                .map(|e| e.executor_id.clone())
            else {
                continue;
            };
            self.send_to(
                &executor_id,
                orchestrator_message::Message::Cancel(shoal::proto::Cancel {
                    execution_id,
                    reason: reason.to_owned(),
                }),
            );
        }
    }

    fn partitions_mut(&mut self, job_id: &str) -> Option<&mut Partitions> {
        self.jobs.get_mut(job_id)?.partitions.as_deref_mut()
    }

    /// Copies the counts onto the job; once every partition has ended, finishes it.
    fn partition_counts_changed(&mut self, job_id: &str, now: SystemTime) {
        let Some(entry) = self.jobs.get_mut(job_id) else {
            return;
        };
        let Some(partitions) = entry.partitions.as_deref() else {
            return;
        };
        entry.job.partitions = Some(partitions.counts);
        if partitions.all_ended() {
            self.partitions_ended(job_id, now);
        }
    }

    /// Every partition has ended: the result tree is built from theirs (after the commit,
    /// by the orchestrator, which then calls [`Cluster::partitions_finished`]).
    fn partitions_ended(&mut self, job_id: &str, _now: SystemTime) {
        let Some(partitions) = self.partitions_mut(job_id) else {
            return;
        };
        if partitions.finishing {
            return;
        }
        partitions.finishing = true;
        self.effects.finalize.push(job_id.to_owned());
    }

    /// The result tree's entries of a job whose partitions have all ended: each partition
    /// with a result, by index, and its result's root CID (that of its latest attempt).
    pub fn partition_results(&self, job_id: &str) -> Result<Vec<(u32, String)>> {
        let mut latest: HashMap<u32, &Execution> = HashMap::new();
        for execution in self.executions.values().filter(|e| e.job_id == job_id) {
            let has_result = execution
                .result
                .as_ref()
                .is_some_and(|r| !r.result_cid.is_empty());
            if has_result
                && latest
                    .get(&execution.partition)
                    .is_none_or(|seen| seen.attempt < execution.attempt)
            {
                latest.insert(execution.partition, execution);
            }
        }
        self.job(job_id)?;
        let mut results: Vec<(u32, String)> = latest
            .into_iter()
            .filter_map(|(index, e)| Some((index, e.result.as_ref()?.result_cid.clone())))
            .collect();
        results.sort();
        Ok(results)
    }

    /// Ends a partitioned job whose partitions have all ended, with its result tree
    /// (`root`, a `partitions/<i>/` directory per partition with a result): COMPLETED if
    /// every partition completed, FAILED naming those that did not otherwise. The job's
    /// exit code is that of the first partition (by index) that exited non-zero, else 0.
    pub fn partitions_finished(
        &mut self,
        job_id: &str,
        root: Option<String>,
        now: SystemTime,
    ) -> Result<()> {
        let job = self.job(job_id)?;
        if job.state().is_terminal() {
            return Ok(());
        }
        let exit_code = {
            let mut codes: Vec<(u32, i32)> = self
                .executions
                .values()
                .filter(|e| e.job_id == job_id && e.state() == ExecutionState::Completed)
                .filter_map(|e| Some((e.partition, e.result.as_ref()?.exit_code)))
                .collect();
            codes.sort();
            codes
                .into_iter()
                .map(|(_, c)| c)
                .find(|c| *c != 0)
                .unwrap_or(0)
        };
        let Some(partitions) = self.jobs.get(job_id).and_then(|e| e.partitions.as_deref()) else {
            return Ok(());
        };
        let failed: Vec<u32> = (0..partitions.count())
            .filter(|i| partitions.states[*i as usize] != PartitionState::Completed)
            .collect();
        let count = partitions.count();
        let first_failure = partitions.first_failure.clone();
        let result = shoal::proto::ExecutionResult {
            exit_code,
            result_cid: root.unwrap_or_default(),
            ..Default::default()
        };
        if failed.is_empty() {
            let message = format!("all {count} partitions completed (exit code {exit_code})");
            self.set_job_state(
                job_id,
                JobState::Completed,
                message,
                None,
                Some(result),
                now,
            );
        } else {
            let shown: Vec<String> = failed.iter().take(10).map(u32::to_string).collect();
            let more = if failed.len() > 10 { ", ..." } else { "" };
            let first = match &first_failure {
                Some((index, failure)) => format!(" (partition {index}: {failure})"),
                None => String::new(),
            };
            let message = format!(
                "{} of {count} partitions failed: {}{more}{first}",
                failed.len(),
                shown.join(", ")
            );
            let kind = first_failure.map_or(FailureKind::Internal, |(_, f)| f.kind());
            let failure = Failure::new(kind, message.clone());
            self.set_job_state(
                job_id,
                JobState::Failed,
                message,
                Some(failure),
                Some(result),
                now,
            );
        }
        Ok(())
    }

    /// Ends a partitioned job whose result tree could not be built: FAILED, saying why.
    pub fn partitions_unfinishable(
        &mut self,
        job_id: &str,
        reason: &str,
        now: SystemTime,
    ) -> Result<()> {
        if self.job(job_id)?.state().is_terminal() {
            return Ok(());
        }
        let failure = Failure::new(FailureKind::Internal, reason);
        self.set_job_state(
            job_id,
            JobState::Failed,
            reason.to_owned(),
            Some(failure),
            None,
            now,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use shoal::proto::{InputSpec, JobSpec, RetryPolicy};

    fn partitioned(count: u32, max_parallel: u32) -> JobSpec {
        JobSpec {
            partitions: count,
            max_parallel,
            ..spec()
        }
    }

    /// (execution id, partition, attempt) of each assignment among the effects, and every
    /// job to finish.
    fn placed(c: &mut Cluster) -> (Vec<(String, u32, u32)>, Vec<String>) {
        let effects = c.take_effects();
        let assigned = assigned(&effects)
            .into_iter()
            .map(|(_, a)| {
                assert_eq!(a.partition_count, 5, "every assignment says the count");
                (a.execution_id, a.partition, a.attempt)
            })
            .collect();
        (assigned, effects.finalize)
    }

    /// Five partitions on three slots: three run, each finished one frees a slot for the
    /// next; the job is RUNNING until the last ends, then finishes once, COMPLETED with the
    /// first non-zero exit code.
    #[test]
    fn partitions_run_each_once_and_the_job_completes_with_them() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 3, &[]);
        let now = SystemTime::now();
        let job = c
            .submit(accept(partitioned(5, 0)), HashMap::new(), now)
            .expect("submit")
            .id;
        c.schedule(now);
        let (first, _) = placed(&mut c);
        assert_eq!(first.iter().map(|p| p.1).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(c.job(&job).expect("job").state(), JobState::Running);
        let mut seen = Vec::new();
        let mut running = first;
        let mut finalize = Vec::new();
        while let Some((execution, index, attempt)) = running.pop() {
            assert_eq!(attempt, 1);
            seen.push(index);
            let code = if index == 3 { 7 } else { 0 };
            c.execution_finished(
                "a",
                ExecutionFinished {
                    execution_id: execution,
                    state: ExecutionState::Completed as i32,
                    result: Some(ExecutionResult {
                        exit_code: code,
                        result_cid: CID.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                now,
            );
            c.schedule_placements(now);
            let (more, ended) = placed(&mut c);
            running.extend(more);
            finalize.extend(ended);
            if !running.is_empty() {
                assert_eq!(c.job(&job).expect("job").state(), JobState::Running);
            }
        }
        seen.sort();
        assert_eq!(seen, [0, 1, 2, 3, 4]);
        assert_eq!(
            finalize,
            vec![job.clone()],
            "finished once, when the last one ended"
        );
        let counts = c.job(&job).expect("job").partitions.expect("counts");
        assert_eq!((counts.completed, counts.queued, counts.running), (5, 0, 0));
        let results = c.partition_results(&job).expect("results");
        assert_eq!(
            results.iter().map(|r| r.0).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        c.partitions_finished(&job, Some(CID.into()), now)
            .expect("finish");
        let done = c.job(&job).expect("job");
        assert_eq!(done.state(), JobState::Completed);
        assert_eq!(done.result.as_ref().map(|r| r.exit_code), Some(7));
    }

    /// A partition's execution is stored when placed and when it ends, not at each
    /// progress report in between; the stored end still says when it started running.
    #[test]
    fn a_partitions_progress_is_not_stored_but_its_end_is() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 1, &[]);
        let now = SystemTime::now();
        c.submit(accept(partitioned(5, 0)), HashMap::new(), now)
            .expect("submit");
        c.schedule(now);
        let stored = |c: &mut Cluster| -> Vec<Execution> {
            c.take_effects()
                .writes
                .into_iter()
                .filter_map(|w| match w {
                    Write::Execution(e) => Some(e),
                    _ => None,
                })
                .collect()
        };
        let placed = stored(&mut c);
        assert_eq!(placed.len(), 1, "the placement is stored");
        let execution = placed[0].id.clone();
        for state in [
            ExecutionState::Staging,
            ExecutionState::Running,
            ExecutionState::Publishing,
        ] {
            c.execution_update("a", &execution, state, now);
        }
        assert!(stored(&mut c).is_empty(), "progress is not stored");
        assert_eq!(
            c.execution(&execution).expect("execution").state(),
            ExecutionState::Publishing,
            "but it is known"
        );
        finish(&mut c, "a", &execution, None);
        let ended = stored(&mut c);
        let ended = ended
            .iter()
            .find(|e| e.id == execution)
            .expect("stored end");
        assert_eq!(ended.state(), ExecutionState::Completed);
        assert!(ended.started_at.is_some(), "with the time it started");
    }

    /// A partition that fails with a retried kind runs again alone (attempt 2); one that
    /// fails for good fails the job, naming it, and the running ones are told to stop.
    #[test]
    fn a_partition_is_retried_alone_and_one_failing_for_good_ends_the_job() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 2, &[]);
        let now = SystemTime::now();
        let mut spec = partitioned(5, 0);
        spec.retry = Some(RetryPolicy {
            max_attempts: 2,
            retry_on: vec![FailureKind::Trap as i32],
        });
        let job = c
            .submit(accept(spec), HashMap::new(), now)
            .expect("submit")
            .id;
        c.schedule(now);
        let (running, _) = placed(&mut c);
        let (trapped, index, _) = running[0].clone();
        finish(&mut c, "a", &trapped, Some(FailureKind::Trap));
        c.schedule_placements(now);
        let (again, _) = placed(&mut c);
        assert_eq!(again.len(), 1);
        assert_eq!(
            (again[0].1, again[0].2),
            (index, 2),
            "the same partition, attempt 2"
        );
        assert_eq!(c.job(&job).expect("job").state(), JobState::Running);
        // Its second trap is its last attempt: the job fails and the other one is stopped.
        finish(&mut c, "a", &again[0].0, Some(FailureKind::Trap));
        let failed = c.job(&job).expect("job").clone();
        assert_eq!(failed.state(), JobState::Failed);
        assert!(
            failed
                .status_message
                .contains(&format!("partition {index} failed")),
            "{}",
            failed.status_message
        );
        assert_eq!(cancels(&mut c), [running[1].0.clone()]);
        let counts = failed.partitions.expect("counts");
        assert_eq!((counts.failed, counts.cancelled, counts.queued), (1, 4, 0));
        // Nothing more is placed for it.
        c.schedule(now);
        assert!(placed(&mut c).0.is_empty());
    }

    /// `max_parallel` caps the partitions running at once, whatever the free slots.
    #[test]
    fn max_parallel_caps_the_running_partitions() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 4, &[]);
        let now = SystemTime::now();
        let job = c
            .submit(accept(partitioned(5, 2)), HashMap::new(), now)
            .expect("submit")
            .id;
        c.schedule(now);
        let (running, _) = placed(&mut c);
        assert_eq!(running.len(), 2);
        finish(&mut c, "a", &running[0].0, None);
        c.schedule(now);
        assert_eq!(
            placed(&mut c).0.len(),
            1,
            "one more, for the one that ended"
        );
        assert_eq!(
            c.job(&job)
                .expect("job")
                .partitions
                .expect("counts")
                .running,
            2
        );
    }

    /// After a restart the partitions are rebuilt from their executions: a running one is
    /// still running, a completed one is not run again, the rest wait in the queue.
    #[test]
    fn partitions_are_rebuilt_from_their_executions() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 2, &[]);
        let now = SystemTime::now();
        let job = c
            .submit(accept(partitioned(5, 0)), HashMap::new(), now)
            .expect("submit")
            .id;
        c.schedule(now);
        let (running, _) = placed(&mut c);
        finish(&mut c, "a", &running[0].0, None);
        let snapshot = Snapshot {
            jobs: vec![c.job(&job).expect("job").clone()],
            executions: c.executions_of(&job).expect("executions"),
            ..Default::default()
        };
        let mut restored = Cluster::restore(snapshot, ClusterConfig::default(), Instant::now());
        let counts = restored.job(&job).expect("job").partitions.expect("counts");
        assert_eq!((counts.completed, counts.running, counts.queued), (1, 1, 3));
        let _b = connect(&mut restored, "b", 8, &[]);
        restored.schedule(now);
        let (again, _) = placed(&mut restored);
        let mut indices: Vec<u32> = again.iter().map(|p| p.1).collect();
        indices.sort();
        let expected: Vec<u32> = (0..5)
            .filter(|i| *i != running[0].1 && *i != running[1].1)
            .collect();
        assert_eq!(indices, expected);
    }

    /// A job over 5 listed entries, 2 per partition: 3 partitions, each sent the spec with
    /// the sharded input replaced by its own entries (the last takes what is left), the
    /// other inputs kept; after a restart the stored listing gives the same entries, and a
    /// job whose listing is gone fails saying so instead of running over nothing.
    #[test]
    fn sharded_partitions_get_their_entries_before_and_after_a_restart() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 2, &[]);
        let now = SystemTime::now();
        let mut spec = spec();
        spec.inputs = vec![
            InputSpec {
                target: "/inputs/data".into(),
                shard: true,
                sources: (0..5)
                    .map(|i| format!("https://host/f{i}.txt"))
                    .chain(["s3://bucket/f5.txt".to_owned()])
                    .collect(),
                s3: Some(shoal::proto::S3Options {
                    region: "eu-west-1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            InputSpec {
                source: CID.into(),
                target: "/inputs/ref.txt".into(),
                ..Default::default()
            },
        ];
        spec.shard_size = 2;
        let source = |i: usize| match i {
            4 => "s3://bucket/f4.txt".to_owned(),
            i => format!("https://host/f{i}.txt"),
        };
        // Set before the count is known, above it: each partition's spec says 3.
        spec.max_parallel = 8;
        let listing = ShardListing {
            entries: (0..5)
                .map(|i| crate::records::ShardEntry {
                    name: format!("f{i}.txt"),
                    source: source(i),
                })
                .collect(),
        };
        let valid = accept(spec).with_partitions(3).expect("3 partitions");
        let (job, _) = c
            .submit_sharded(valid, "", HashMap::new(), Some(listing.clone()), now)
            .expect("submit");
        assert_eq!(job.shard_entries, 5);
        let effects = c.take_effects();
        assert!(
            effects
                .writes
                .iter()
                .any(|w| matches!(w, Write::Shards { job_id, listing: l } if *job_id == job.id && *l == listing)),
            "the listing is written with the job"
        );
        let targets = |a: &shoal::proto::Assign| -> Vec<(String, String)> {
            let spec = a.spec.as_ref().expect("spec");
            assert_eq!((spec.shard_size, spec.max_parallel), (0, 3));
            assert!(spec.inputs.iter().all(|i| !i.shard && i.sources.is_empty()));
            // S3 settings go only to S3 entries (the executor refuses them elsewhere).
            assert!(
                spec.inputs
                    .iter()
                    .all(|i| i.s3.is_some() == i.source.starts_with("s3://"))
            );
            shoal::spec::ValidSpec::effective(spec.clone()).expect("the executor accepts it");
            spec.inputs
                .iter()
                .map(|i| (i.target.clone(), i.source.clone()))
                .collect()
        };
        let assigns = |c: &mut Cluster| -> Vec<(u32, Vec<(String, String)>)> {
            assigned(&c.take_effects())
                .iter()
                .map(|(_, a)| (a.partition, targets(a)))
                .collect()
        };
        c.schedule(now);
        let first = assigns(&mut c);
        let entry = |i: usize| (format!("/inputs/data/f{i}.txt"), source(i));
        let reference = ("/inputs/ref.txt".to_owned(), CID.to_owned());
        assert_eq!(
            first,
            [
                (0, vec![entry(0), entry(1), reference.clone()]),
                (1, vec![entry(2), entry(3), reference.clone()]),
            ]
        );
        let snapshot = |c: &Cluster, shards: Vec<(String, ShardListing)>| Snapshot {
            jobs: vec![c.job(&job.id).expect("job").clone()],
            executions: c.executions_of(&job.id).expect("executions"),
            shards,
            ..Default::default()
        };
        let mut restored = Cluster::restore(
            snapshot(&c, vec![(job.id.clone(), listing)]),
            ClusterConfig::default(),
            Instant::now(),
        );
        let _b = connect(&mut restored, "b", 4, &[]);
        restored.schedule(now);
        assert_eq!(assigns(&mut restored), [(2, vec![entry(4), reference])]);
        let lost = Cluster::restore(
            snapshot(&c, Vec::new()),
            ClusterConfig::default(),
            Instant::now(),
        );
        let failed = lost.job(&job.id).expect("job");
        assert_eq!(failed.state(), JobState::Failed);
        assert_eq!(failed.partitions.expect("counts").cancelled, 3);
        assert!(
            failed.status_message.contains("listing"),
            "{}",
            failed.status_message
        );
    }

    /// A sharded job placed on an executor that takes batches gets one `AssignBatch` per
    /// scheduling pass, carrying the spec once; what the executor makes of it is exactly the
    /// assignments an executor that does not take batches gets one by one (bar the random
    /// execution ids).
    #[test]
    fn a_batch_stands_for_the_assignments_sent_alone() {
        let mut spec = spec();
        spec.inputs = vec![
            InputSpec {
                target: "/inputs/ref.txt".into(),
                source: CID.into(),
                ..Default::default()
            },
            InputSpec {
                target: "/inputs/data".into(),
                shard: true,
                sources: (0..7).map(|i| format!("https://host/f{i}.txt")).collect(),
                ..Default::default()
            },
        ];
        spec.shard_size = 2;
        let listing = ShardListing {
            entries: (0..7)
                .map(|i| crate::records::ShardEntry {
                    name: format!("f{i}.txt"),
                    source: format!("https://host/f{i}.txt"),
                })
                .collect(),
        };
        let now = SystemTime::now();
        let run = |features: &[Feature]| {
            let mut c = cluster();
            let _a = connect_with(&mut c, "a", 3, &[], features);
            let valid = accept(spec.clone())
                .with_partitions(4)
                .expect("4 partitions");
            c.submit_sharded(valid, "", HashMap::new(), Some(listing.clone()), now)
                .expect("submit");
            c.take_effects();
            c.schedule(now);
            let effects = c.take_effects();
            let kinds: Vec<&str> = effects
                .messages
                .iter()
                .map(|(_, m)| m.type_name())
                .collect();
            let assigned: Vec<shoal::proto::Assign> = assigned(&effects)
                .into_iter()
                .map(|(_, a)| shoal::proto::Assign {
                    execution_id: String::new(),
                    job_id: String::new(),
                    ..a
                })
                .collect();
            (kinds, assigned)
        };
        let (batched, from_batch) = run(FEATURES);
        let (alone, one_by_one) = run(&[Feature::Partitions]);
        assert_eq!(batched, ["assign_batch"]);
        assert_eq!(alone, ["assign", "assign", "assign"]);
        assert_eq!(from_batch, one_by_one);
        let targets: Vec<Vec<&str>> = from_batch
            .iter()
            .map(|a| {
                let spec = a.spec.as_ref().expect("spec");
                spec.inputs.iter().map(|i| i.target.as_str()).collect()
            })
            .collect();
        assert_eq!(
            targets,
            [
                [
                    "/inputs/ref.txt",
                    "/inputs/data/f0.txt",
                    "/inputs/data/f1.txt"
                ],
                [
                    "/inputs/ref.txt",
                    "/inputs/data/f2.txt",
                    "/inputs/data/f3.txt"
                ],
                [
                    "/inputs/ref.txt",
                    "/inputs/data/f4.txt",
                    "/inputs/data/f5.txt"
                ],
            ]
        );
    }

    /// A batch holds at most [`AssignBatch::MAX_EXECUTIONS`]: more placements on one stream
    /// in one pass start another; each executor gets its own.
    #[test]
    fn batches_are_bounded_and_per_executor() {
        let mut c = Cluster::restore(
            Snapshot::default(),
            ClusterConfig {
                max_capacity: Capacity {
                    slots: 1000,
                    memory_bytes: 1 << 40,
                },
                ..Default::default()
            },
            Instant::now(),
        );
        let _a = connect(&mut c, "a", 600, &[]);
        let _b = connect(&mut c, "b", 10, &[]);
        let now = SystemTime::now();
        let mut spec = partitioned(700, 0);
        spec.resources = Some(shoal::proto::Resources {
            memory_bytes: 4 << 20,
        });
        c.submit(accept(spec), HashMap::new(), now).expect("submit");
        c.schedule(now);
        let effects = c.take_effects();
        let batches: Vec<(String, usize)> = effects
            .messages
            .iter()
            .filter_map(|(to, m)| match &m.message {
                Some(orchestrator_message::Message::AssignBatch(b)) => {
                    Some((to.executor_id.clone(), b.executions.len()))
                }
                _ => None,
            })
            .collect();
        let to_a: Vec<usize> = batches.iter().filter(|b| b.0 == "a").map(|b| b.1).collect();
        let to_b: Vec<usize> = batches.iter().filter(|b| b.0 == "b").map(|b| b.1).collect();
        assert_eq!(
            to_a,
            [
                AssignBatch::MAX_EXECUTIONS,
                600 - AssignBatch::MAX_EXECUTIONS
            ]
        );
        assert_eq!(to_b, [10]);
        let mut partitions: Vec<u32> = assigned(&effects)
            .iter()
            .map(|(_, a)| a.partition)
            .collect();
        partitions.sort();
        assert_eq!(partitions, (0..610).collect::<Vec<u32>>());
    }

    /// An executor from before partitions (it names no such feature) gets none: the guest
    /// could not tell which part is its own. The job waits saying why, a plain job still
    /// runs there, and the partitions go to an executor that runs them once one connects.
    #[test]
    fn partitions_wait_for_an_executor_that_runs_them() {
        let mut c = cluster();
        let _old = connect_with(&mut c, "old", 4, &[], &[]);
        let now = SystemTime::now();
        let job = c
            .submit(accept(partitioned(3, 0)), HashMap::new(), now)
            .expect("submit")
            .id;
        let plain = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect("submit")
            .id;
        c.take_effects();
        c.schedule(now);
        let placed = assigned(&c.take_effects());
        assert_eq!(
            placed
                .iter()
                .map(|(to, a)| (to.as_str(), a.job_id.as_str()))
                .collect::<Vec<_>>(),
            [("old", plain.as_str())]
        );
        let waiting = c.job(&job).expect("job");
        assert_eq!(waiting.state(), JobState::Queued);
        assert!(
            waiting.status_message.contains("runs partitions"),
            "{}",
            waiting.status_message
        );
        let _new = connect(&mut c, "new", 4, &[]);
        c.schedule(now);
        let placed = assigned(&c.take_effects());
        assert_eq!(placed.len(), 3);
        assert!(placed.iter().all(|(to, a)| to == "new" && a.job_id == job));
    }

    /// A job fanned out wide does not keep later jobs waiting for its whole fan-out: each
    /// freed slot goes first to a job running nothing (oldest first), then to the
    /// partitioned job with the fewest running (the oldest among equals).
    #[test]
    fn jobs_share_the_fleet_fewest_running_first() {
        let mut c = cluster();
        let _a = connect(&mut c, "a", 4, &[]);
        let now = SystemTime::now();
        let wide = c
            .submit(accept(partitioned(20, 0)), HashMap::new(), now)
            .expect("submit")
            .id;
        c.schedule(now);
        let mut running: Vec<(String, String)> = assigned(&c.take_effects())
            .into_iter()
            .map(|(_, a)| (a.job_id, a.execution_id))
            .collect();
        assert_eq!(running.len(), 4);
        let plain = c
            .submit(accept(spec()), HashMap::new(), now)
            .expect("submit")
            .id;
        let later = c
            .submit(accept(partitioned(10, 0)), HashMap::new(), now)
            .expect("submit")
            .id;
        c.schedule(now);
        assert!(assigned(&c.take_effects()).is_empty(), "no slot is free");
        // Frees a slot held by `job`, schedules, and returns the job that got it.
        let mut free_one = |c: &mut Cluster, job: &str| -> String {
            let at = running
                .iter()
                .position(|(j, _)| j == job)
                .expect("one runs");
            let (_, execution) = running.remove(at);
            finish(c, "a", &execution, None);
            c.schedule_placements(now);
            let placed = assigned(&c.take_effects());
            assert_eq!(placed.len(), 1, "one slot, one placement");
            let (_, assign) = placed.into_iter().next().expect("one");
            running.push((assign.job_id.clone(), assign.execution_id));
            assign.job_id
        };
        // The plain job, then the later fan-out, each running nothing yet.
        assert_eq!(free_one(&mut c, &wide), plain);
        assert_eq!(free_one(&mut c, &wide), later);
        // Both fan-outs run one: the older one gets the next slot.
        assert_eq!(free_one(&mut c, &wide), wide);
        // It runs two now, the later one one: the later one's turn.
        assert_eq!(free_one(&mut c, &plain), later);
        assert_eq!(free_one(&mut c, &wide), wide);
        assert_eq!(free_one(&mut c, &later), later);
    }

    /// A partitioned job that never found an executor times out as a whole: its partitions
    /// all count as cancelled, none as still queued.
    #[test]
    fn a_queue_timeout_cancels_every_partition() {
        let mut c = cluster();
        let now = SystemTime::now();
        let mut spec = partitioned(5, 0);
        spec.queue_timeout = Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        });
        let job = c
            .submit(accept(spec), HashMap::new(), now)
            .expect("submit")
            .id;
        c.schedule(now + Duration::from_secs(2));
        let timed_out = c.job(&job).expect("job");
        assert_eq!(timed_out.state(), JobState::TimedOut);
        let counts = timed_out.partitions.expect("counts");
        assert_eq!((counts.queued, counts.cancelled), (0, 5));
    }
}
