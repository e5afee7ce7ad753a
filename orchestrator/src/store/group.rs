//! The queue in front of a store's one writer, and how the writer takes its next group
//! (group commit), the same for every implementation: whatever queued up while the last
//! commit ran goes into the next one; a group of deferrable batches only waits up to
//! [`DEFER_AT_MOST`] for a batch someone waits for; after a failed commit, only the
//! watchdog's probe is taken until one commits.

use tokio::sync::{mpsc, oneshot};

use super::{Commit, DEFER_AT_MOST};
use crate::error::{Error, Result};
use crate::records::Write;

/// Batches waiting for the writer. Bounded: when the disk (or the database) falls behind,
/// submitters wait.
pub(super) const WRITE_QUEUE: usize = 1024;

/// One caller's writes and who to tell when they are durable.
pub(super) struct Batch {
    pub writes: Vec<Write>,
    /// May wait up to [`DEFER_AT_MOST`] for company.
    pub deferrable: bool,
    done: oneshot::Sender<Result<(), String>>,
}

impl Batch {
    /// Whether this is the watchdog's probe, the one batch taken after a failure.
    fn is_probe(&self) -> bool {
        matches!(self.writes.as_slice(), [Write::Probe])
    }
}

/// The writer's side of the queue.
pub(super) struct Queue {
    receiver: mpsc::Receiver<Batch>,
    /// Set by a failed commit: until a probe commits, every other batch is refused, so
    /// nothing built on the lost transition's state reaches the store (or its effects,
    /// such as acknowledgements, the executors) before the orchestrator has reloaded.
    failed: bool,
}

/// A queue and the sender a backend's `queue` sends to.
pub(super) fn channel() -> (mpsc::Sender<Batch>, Queue) {
    let (sender, receiver) = mpsc::channel(WRITE_QUEUE);
    let queue = Queue {
        receiver,
        failed: false,
    };
    (sender, queue)
}

/// Queues `writes` on `sender` (what `Backend::queue` does).
pub(super) async fn send(
    sender: &mpsc::Sender<Batch>,
    writes: Vec<Write>,
    deferrable: bool,
) -> Result<Commit> {
    let (done, receiver) = oneshot::channel();
    sender
        .send(Batch {
            writes,
            deferrable,
            done,
        })
        .await
        .map_err(|_| Error::ShuttingDown)?;
    Ok(Commit::new(receiver))
}

impl Queue {
    /// The next group to commit, in queue order; None once every sender is gone and the
    /// queue is empty.
    pub async fn next_group(&mut self) -> Option<Vec<Batch>> {
        loop {
            let first = self.receiver.recv().await?;
            let mut batches = vec![first];
            self.take_queued(&mut batches);
            if batches.iter().all(|b| b.deferrable) {
                // Nobody waits for these yet: give a write that is waited for the chance to
                // share their commit.
                let deadline = tokio::time::Instant::now() + DEFER_AT_MOST;
                while batches.len() < WRITE_QUEUE && batches.iter().all(|b| b.deferrable) {
                    match tokio::time::timeout_at(deadline, self.receiver.recv()).await {
                        Ok(Some(batch)) => {
                            batches.push(batch);
                            self.take_queued(&mut batches);
                        }
                        // The deadline passed, or every handle is gone (commit and stop).
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            if !self.failed {
                return Some(batches);
            }
            let (probes, refused): (Vec<Batch>, Vec<Batch>) =
                batches.into_iter().partition(Batch::is_probe);
            let refusal = "the store failed a write and takes none until it is checked again";
            answer(refused, &Err(refusal.to_owned()));
            if !probes.is_empty() {
                return Some(probes);
            }
        }
    }

    /// Tells every batch of a group how its commit went, and remembers a failure (see
    /// [`Queue::failed`]).
    pub fn finish(&mut self, batches: Vec<Batch>, result: &Result<(), String>) {
        self.failed = result.is_err();
        answer(batches, result);
    }

    /// Moves the batches already queued into `batches`, up to [`WRITE_QUEUE`] in all.
    fn take_queued(&mut self, batches: &mut Vec<Batch>) {
        while batches.len() < WRITE_QUEUE {
            match self.receiver.try_recv() {
                Ok(batch) => batches.push(batch),
                Err(_) => break,
            }
        }
    }
}

fn answer(batches: Vec<Batch>, result: &Result<(), String>) {
    for batch in batches {
        let _receiver_gone = batch.done.send(result.clone());
    }
}
