//! Riding out a restarting orchestrator: staging and publishing talk to its store, and an
//! orchestrator that is down for a moment (a restart, a redeploy) must not fail the
//! executions in flight. Calls that failed transiently are repeated with capped backoff
//! until they succeed, fail for good, or a time window passes. Store calls are safe to
//! repeat: uploads are content-addressed and downloads read immutable data.

use std::future::Future;
use std::time::Duration;

use crate::connection::Backoff;

/// How long an execution keeps trying to publish its results to an unreachable store.
pub const PUBLISH_WINDOW: Duration = Duration::from_secs(600);
/// How long staging keeps trying (the staging timeout usually ends it first).
pub const STAGING_WINDOW: Duration = Duration::from_secs(600);

/// Whether a failed call may succeed if repeated: the orchestrator was unreachable or
/// restarting, or the connection broke mid-call.
pub fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Aborted
    )
}

/// Whether a core error is a transient call failure.
pub fn is_transient_core(error: &shoal::Error) -> bool {
    matches!(error, shoal::Error::Rpc(status) if is_transient(status))
}

/// Runs `call` until it succeeds, fails with an error `transient` rejects, or `window`
/// has passed (then the last error is returned).
pub async fn store_call<T, E, F, Fut>(
    what: &str,
    window: Duration,
    transient: impl Fn(&E) -> bool,
    mut call: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + window;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match call().await {
            Err(error) if transient(&error) && tokio::time::Instant::now() < deadline => {
                tracing::info!(what, %error, "the orchestrator's store is unreachable; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            result => return result,
        }
    }
}
