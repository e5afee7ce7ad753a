//! The executor's books on its executions, shared by the connection and the executions:
//! which run now, which ended with a report the orchestrator has not yet acknowledged, and
//! the reports sent but not acknowledged, to send again on the next stream.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal::proto::{ExecutionFinished, ExecutorMessage, executor_message};
use tokio_util::sync::CancellationToken;

/// Reports of finished executions kept for resending in the next Register.
const RECENT_FINISHED: usize = 1024;
/// Bytes of reports resent in one Register (the orchestrator takes messages up to 16 MiB).
const RESEND_BUDGET: usize = 8 << 20;
/// Ids of executions cancelled before their assignment arrived.
pub const CANCELLED_TOMBSTONES: usize = 1024;
/// Bytes of sent reports kept until the orchestrator acknowledges them.
const UNACKNOWLEDGED_BUDGET: usize = 32 << 20;

/// Reports sent but not yet acknowledged as durable by the orchestrator, sent again in
/// order on the next stream: a report lost with a broken stream, or with an orchestrator
/// killed before its commit, is not lost (resending is safe, reports apply idempotently).
/// Bounded by bytes: past 32 MiB the oldest are forgotten, and said so.
#[derive(Default)]
pub struct Unacknowledged {
    /// The reports, oldest first, with their encoded sizes.
    pub(crate) reports: VecDeque<(ExecutorMessage, usize)>,
    pub(crate) bytes: usize,
    /// The highest sequence number acknowledged so far.
    pub(crate) through: u64,
}

impl Unacknowledged {
    /// Keeps a report just sent, of `size` encoded bytes; returns the executions whose
    /// finished report had to be forgotten to stay in the budget (a Register then carries
    /// it among the recent ones).
    pub(crate) fn keep(&mut self, report: &ExecutorMessage, size: usize) -> Vec<String> {
        if report.sequence == 0 {
            return Vec::new();
        }
        self.bytes += size;
        self.reports.push_back((report.clone(), size));
        let mut forgotten = Vec::new();
        while self.bytes > UNACKNOWLEDGED_BUDGET
            && let Some((oldest, size)) = self.reports.pop_front()
        {
            self.bytes -= size;
            forgotten.push(oldest);
        }
        if !forgotten.is_empty() {
            tracing::warn!(
                forgotten = forgotten.len(),
                "more unacknowledged reports than the resend budget; the oldest cannot be resent"
            );
        }
        finished_ids(forgotten)
    }

    /// Forgets the reports up to `through`; returns the executions whose finished report
    /// is now acknowledged.
    pub(crate) fn acknowledged(&mut self, through: u64) -> Vec<String> {
        self.through = self.through.max(through);
        let mut done = Vec::new();
        while self
            .reports
            .front()
            .is_some_and(|(r, _)| r.sequence <= through)
            && let Some((report, size)) = self.reports.pop_front()
        {
            self.bytes -= size;
            done.push(report);
        }
        finished_ids(done)
    }
}

/// The executions that `reports` say ended.
fn finished_ids(reports: Vec<ExecutorMessage>) -> Vec<String> {
    reports
        .into_iter()
        .filter_map(|report| match report.message {
            Some(executor_message::Message::Finished(f)) => Some(f.execution_id),
            _ => None,
        })
        .collect()
}

/// Executions in flight and recently finished, shared by the connection and the executions.
#[derive(Default)]
pub struct Executions {
    pub(crate) running: HashMap<String, CancellationToken>,
    /// Executions stopped by a drain timeout: reported as lost, not cancelled, so the
    /// orchestrator runs them elsewhere.
    pub(crate) drained: HashMap<String, Duration>,
    pub(crate) cancelled_early: VecDeque<String>,
    /// Executions that ended but whose finished report the orchestrator has not yet
    /// acknowledged (it may still be queued, or be resent): a Register counts them as
    /// running, so their reports arrive in order behind their log chunks.
    pub(crate) settling: HashSet<String>,
    pub(crate) recent_finished: VecDeque<ExecutionFinished>,
    /// Encoded size of `recent_finished`, kept within [`RESEND_BUDGET`]: more could never be
    /// resent, and reports carry result trees of up to 64 KiB.
    pub(crate) recent_finished_bytes: usize,
}

impl Executions {
    /// Remembers a finished report for resending, forgetting the oldest past the bounds.
    pub(crate) fn remember_finished(&mut self, finished: ExecutionFinished) {
        use prost::Message as _;
        self.recent_finished_bytes += finished.encoded_len();
        self.recent_finished.push_back(finished);
        while self.recent_finished.len() > RECENT_FINISHED
            || self.recent_finished_bytes > RESEND_BUDGET
        {
            let Some(oldest) = self.recent_finished.pop_front() else {
                break;
            };
            self.recent_finished_bytes -= oldest.encoded_len();
        }
    }
}

/// Shared handle to [`Executions`].
pub type SharedExecutions = Arc<Mutex<Executions>>;

pub(crate) fn lock(executions: &SharedExecutions) -> std::sync::MutexGuard<'_, Executions> {
    executions.lock().unwrap_or_else(|p| p.into_inner())
}

/// These executions' finished reports need no resending in order any more.
pub(crate) fn settled(executions: &SharedExecutions, ids: Vec<String>) {
    if !ids.is_empty() {
        let mut executions = lock(executions);
        for id in ids {
            executions.settling.remove(&id);
        }
    }
}

/// Ids of the executions running now.
pub fn running_ids(executions: &SharedExecutions) -> Vec<String> {
    lock(executions).running.keys().cloned().collect()
}

/// Stops every running execution because the drain took longer than `drain_timeout`.
pub fn cancel_all_for_drain(executions: &SharedExecutions, drain_timeout: Duration) {
    let mut executions = lock(executions);
    let ids: Vec<String> = executions.running.keys().cloned().collect();
    for id in ids {
        executions.drained.insert(id.clone(), drain_timeout);
        if let Some(token) = executions.running.get(&id) {
            token.cancel();
        }
    }
}

/// The recently finished reports to resend in a Register, newest first, up to
/// [`RESEND_BUDGET`] bytes: reports can carry their result trees, and the Register must stay
/// under the orchestrator's message limit. A report left out is not lost work: its
/// execution is then neither running nor reported, so the orchestrator runs the job again.
pub(crate) fn recent_reports(executions: &SharedExecutions) -> Vec<ExecutionFinished> {
    use prost::Message as _;
    let executions = lock(executions);
    let mut budget = RESEND_BUDGET;
    let mut reports: Vec<ExecutionFinished> = executions
        .recent_finished
        .iter()
        .rev()
        .take_while(|report| {
            let size = report.encoded_len();
            let fits = size <= budget;
            budget = budget.saturating_sub(size);
            fits
        })
        .cloned()
        .collect();
    reports.reverse();
    reports
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finished reports are kept within the resend budget and the count bound, newest
    /// first out of memory last; all that are kept fit one resend.
    #[test]
    fn finished_reports_are_bounded_by_bytes_and_count() {
        let report = |i: usize, size: usize| ExecutionFinished {
            execution_id: format!("e{i}"),
            result_blocks: vec![shoal::proto::ContentBlock {
                cid: String::new(),
                data: bytes::Bytes::from(vec![0; size]),
            }],
            ..Default::default()
        };
        let executions = SharedExecutions::default();
        for i in 0..300 {
            lock(&executions).remember_finished(report(i, 64 * 1024));
        }
        {
            let executions = lock(&executions);
            assert!(executions.recent_finished_bytes <= RESEND_BUDGET);
            let kept = executions.recent_finished.len();
            assert!((100..300).contains(&kept), "{kept} reports kept");
            assert_eq!(
                executions
                    .recent_finished
                    .back()
                    .map(|r| r.execution_id.as_str()),
                Some("e299")
            );
        }
        let kept = lock(&executions).recent_finished.len();
        assert_eq!(recent_reports(&executions).len(), kept);

        for i in 0..2 * RECENT_FINISHED {
            lock(&executions).remember_finished(report(i, 0));
        }
        assert_eq!(lock(&executions).recent_finished.len(), RECENT_FINISHED);
    }
}
