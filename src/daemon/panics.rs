//! Keeping a bug in one task from taking down more than that task.
//!
//! A panic is a bug. Tokio already keeps a panicking task from taking the process with it,
//! but the task's work is then silently gone: an execution that never reports holds its
//! slot, an executor stream that never records its end keeps its executions for a lease.
//! So the tasks that own such work run under [`catch_panic`], which turns a panic into a
//! value the caller handles (a failed execution, an ended stream), and [`log_panics`]
//! makes every panic a log line with the span it happened in (job, execution, executor),
//! in the process's log format, instead of bare text on stderr.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt as _;

/// Runs `future`; a panic inside it becomes `Err` with the panic's message (already logged
/// by [`log_panics`] where it happened).
pub async fn catch_panic<F: Future>(future: F) -> Result<F::Output, String> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|payload| message(payload.as_ref()))
}

/// The text a panic was raised with.
pub fn message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Logs every panic as an error event, inside the span that was current where it happened
/// (so a JSON log line carries its `job_id`, `execution_id` or `executor_id`), with its
/// location. Installed by the daemons' telemetry setup.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            panic = message(info.payload()),
            location,
            "a task panicked (a bug): only that task stops"
        );
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panicking future is an error carrying its message; a normal one its value.
    #[tokio::test]
    async fn a_panic_becomes_an_error() {
        assert_eq!(catch_panic(async { 7 }).await, Ok(7));
        let caught = catch_panic(async {
            let values: Vec<u64> = Vec::new();
            values[3]
        })
        .await;
        let message = caught.expect_err("the panic");
        assert!(message.contains("index out of bounds"), "{message}");
    }
}
