//! The one way Shoal repeats a failed call: capped exponential backoff with full jitter,
//! bounded by a number of attempts or a time window, and stopped at once by a cancellation.
//! The executor's connection, its store calls, URL and IPFS gateway fetches and the CLI's
//! waits all use it, so they agree on what is worth repeating ([`Transient`]) and on how
//! long to wait between tries.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Capped exponential backoff with full jitter: the n-th delay is uniformly random in
/// `[0, min(cap, first * 2^n)]` (at least 10 ms), so many clients that failed together do
/// not come back together.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        Backoff {
            first,
            cap,
            attempt: 0,
        }
    }

    /// Back to the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The largest delay the next call may return.
    pub fn ceiling(&self) -> Duration {
        self.first
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap)
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        // Jitter from the random bits of a fresh UUIDv7: no extra RNG needed.
        let random = uuid::Uuid::now_v7().as_u64_pair().1;
        let fraction = (random % 1001) as u32;
        (ceiling * fraction / 1000).max(Duration::from_millis(10))
    }
}

/// Whether a failure may go away if the call is repeated.
pub trait Transient {
    fn is_transient(&self) -> bool;
}

/// A gRPC call is worth repeating when the peer could not be reached or the connection
/// broke under it: UNAVAILABLE, UNKNOWN (a transport error), CANCELLED, DEADLINE_EXCEEDED,
/// ABORTED, and INTERNAL raised by the local transport (an HTTP/2 stream reset, which
/// carries the transport's error as its source). An INTERNAL answered by the server itself
/// is a bug there, and repeating the call would not help.
impl Transient for tonic::Status {
    fn is_transient(&self) -> bool {
        use tonic::Code;
        match self.code() {
            Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted => true,
            Code::Internal => std::error::Error::source(self).is_some(),
            _ => false,
        }
    }
}

impl Transient for crate::Error {
    fn is_transient(&self) -> bool {
        matches!(self, crate::Error::Rpc(status) if status.is_transient())
    }
}

/// When to give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// After this many attempts in all (the first one included).
    Attempts(u32),
    /// Once this long has passed since the first attempt: no new attempt starts after it.
    Window(Duration),
}

/// A retry policy: the backoff's first delay and cap, and when to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub first: Duration,
    pub cap: Duration,
    pub limit: Limit,
}

impl Retry {
    /// Up to `attempts` attempts, backing off from 100 ms up to 5 s.
    pub const fn attempts(attempts: u32) -> Self {
        Retry {
            first: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            limit: Limit::Attempts(attempts),
        }
    }

    /// Attempts for up to `window`, backing off from 100 ms up to 5 s.
    pub const fn window(window: Duration) -> Self {
        Retry {
            first: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            limit: Limit::Window(window),
        }
    }

    /// The same policy with other delays.
    pub const fn delays(self, first: Duration, cap: Duration) -> Self {
        Retry { first, cap, ..self }
    }

    /// A fresh backoff with this policy's delays.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.first, self.cap)
    }

    /// Runs `call` until it succeeds, fails with an error that is not [`Transient`], or the
    /// limit is reached; then returns its last result. `what` names the call in the log.
    pub async fn run<T, E, F, Fut>(&self, what: &str, call: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Transient + std::fmt::Display,
    {
        self.run_until(what, &CancellationToken::new(), call)
            .await
            .unwrap_or_else(|Cancelled| unreachable_cancel())
    }

    /// [`Retry::run`], stopped by `cancel`: a cancelled wait or call ends with
    /// `Err(Cancelled)` at once.
    pub async fn run_until<T, E, F, Fut>(
        &self,
        what: &str,
        cancel: &CancellationToken,
        mut call: F,
    ) -> Result<Result<T, E>, Cancelled>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Transient + std::fmt::Display,
    {
        let started = tokio::time::Instant::now();
        let mut backoff = self.backoff();
        let mut attempts = 0u32;
        loop {
            let result = tokio::select! {
                result = call() => result,
                _ = cancel.cancelled() => return Err(Cancelled),
            };
            attempts += 1;
            let error = match result {
                Err(error) if error.is_transient() => error,
                done => return Ok(done),
            };
            let delay = backoff.next_delay();
            let more = match self.limit {
                Limit::Attempts(limit) => attempts < limit,
                Limit::Window(window) => started.elapsed() + delay < window,
            };
            if !more {
                return Ok(Err(error));
            }
            tracing::info!(what, attempt = attempts, %error, ?delay, "retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => return Err(Cancelled),
            }
        }
    }
}

/// A retry stopped by its cancellation token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// A token nobody holds is never cancelled.
fn unreachable_cancel<T>() -> T {
    unreachable!("a retry without a cancellation token was cancelled")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    struct Flaky(bool);
    impl Transient for Flaky {
        fn is_transient(&self) -> bool {
            self.0
        }
    }
    impl std::fmt::Display for Flaky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(if self.0 { "flaky" } else { "broken" })
        }
    }

    /// Delays double up to the cap, are spread out rather than all at the ceiling, and start
    /// small again after a reset.
    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let ceilings: Vec<Duration> = (0..8)
            .map(|_| {
                let ceiling = backoff.ceiling();
                assert!(backoff.next_delay() <= ceiling);
                ceiling
            })
            .collect();
        let ms: Vec<u128> = ceilings.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);

        let delays: std::collections::BTreeSet<Duration> = (0..200)
            .map(|_| {
                let mut capped = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
                capped.next_delay()
            })
            .collect();
        assert!(delays.len() > 50, "only {} distinct delays", delays.len());
        assert!(delays.iter().any(|d| *d < Duration::from_millis(500)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(500)));

        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
    }

    /// The waits a retry actually makes, read off the paused clock between its calls: each
    /// within its ceiling (100 ms doubling to the 5 s cap), growing with the attempt (the
    /// longest wait seen at each attempt passes half its ceiling over 60 retries), never past
    /// the cap, and spread out rather than one fixed delay.
    #[tokio::test(start_paused = true)]
    async fn the_waits_between_attempts_grow_to_the_cap_with_jitter() {
        const ATTEMPTS: usize = 10;
        let mut waits: Vec<Vec<Duration>> = vec![Vec::new(); ATTEMPTS - 1];
        for _ in 0..60 {
            let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
            let result: Result<(), Flaky> = Retry::attempts(ATTEMPTS as u32)
                .run("test", || {
                    calls
                        .lock()
                        .expect("calls")
                        .push(tokio::time::Instant::now());
                    async { Err(Flaky(true)) }
                })
                .await;
            assert!(result.is_err());
            let calls = calls.lock().expect("calls");
            assert_eq!(calls.len(), ATTEMPTS);
            for (n, pair) in calls.windows(2).enumerate() {
                waits[n].push(pair[1] - pair[0]);
            }
        }
        let policy = Retry::attempts(1);
        for (n, seen) in waits.iter().enumerate() {
            let ceiling = policy
                .first
                .saturating_mul(1 << n)
                .min(policy.cap)
                .max(Duration::from_millis(10));
            let longest = seen.iter().max().expect("waits");
            assert!(
                *longest <= ceiling,
                "attempt {n}: waited {longest:?} > {ceiling:?}"
            );
            assert!(
                *longest >= ceiling / 2,
                "attempt {n}: at most {longest:?} of {ceiling:?}"
            );
            let distinct: std::collections::BTreeSet<_> = seen.iter().collect();
            assert!(
                distinct.len() >= 20,
                "attempt {n}: {} distinct waits",
                distinct.len()
            );
        }
        assert_eq!(policy.cap, Duration::from_secs(5));
        let last = waits.last().expect("waits");
        assert!(last.iter().all(|w| *w <= policy.cap));
        assert!(
            last.iter().any(|w| *w > Duration::from_millis(2500)),
            "{last:?}"
        );
    }

    /// Transient failures are repeated up to the attempt limit, and the last error returned.
    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_repeated_up_to_the_limit() {
        let calls = Arc::new(AtomicU32::new(0));
        let result: Result<(), Flaky> = Retry::attempts(4)
            .run("test", || {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(Flaky(true))
                }
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        // A failure that is not transient is returned at once.
        let calls = Arc::new(AtomicU32::new(0));
        let result: Result<(), Flaky> = Retry::attempts(4)
            .run("test", || {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(Flaky(false))
                }
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// A window bounds the time spent, not the attempts: a call that succeeds within it wins,
    /// and one that keeps failing stops once the window would be passed.
    #[tokio::test(start_paused = true)]
    async fn a_window_bounds_the_time_spent() {
        let start = tokio::time::Instant::now();
        let calls = Arc::new(AtomicU32::new(0));
        let result: Result<u32, Flaky> = Retry::window(Duration::from_secs(60))
            .run("test", || {
                let calls = calls.clone();
                async move {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    if n < 5 { Err(Flaky(true)) } else { Ok(n) }
                }
            })
            .await;
        assert_eq!(result.ok(), Some(5));

        let start_failing = tokio::time::Instant::now();
        let result: Result<(), Flaky> = Retry::window(Duration::from_secs(60))
            .run("test", || async { Err(Flaky(true)) })
            .await;
        assert!(result.is_err());
        let spent = start_failing.elapsed();
        assert!(spent <= Duration::from_secs(60), "{spent:?}");
        assert!(spent >= Duration::from_secs(50), "{spent:?}");
        assert!(start.elapsed() >= spent);
    }

    /// Cancelling ends a retry in the middle of its wait.
    #[tokio::test(start_paused = true)]
    async fn cancelling_ends_the_wait() {
        let cancel = CancellationToken::new();
        let stopper = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                cancel.cancel();
            })
        };
        let start = tokio::time::Instant::now();
        let result: Result<Result<(), Flaky>, Cancelled> = Retry::window(Duration::from_secs(3600))
            .run_until("test", &cancel, || async { Err(Flaky(true)) })
            .await;
        assert_eq!(result.err(), Some(Cancelled));
        assert!(start.elapsed() < Duration::from_secs(4));
        stopper.await.expect("stopper");
    }

    /// The one transient rule for gRPC: transport failures yes, answers no; INTERNAL only
    /// when the local transport raised it.
    #[test]
    fn the_grpc_transient_rule() {
        use tonic::{Code, Status};
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::Cancelled,
            Code::Aborted,
        ] {
            assert!(Status::new(code, "x").is_transient(), "{code:?}");
        }
        for code in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::ResourceExhausted,
            Code::Internal,
        ] {
            assert!(!Status::new(code, "x").is_transient(), "{code:?}");
        }
        let reset = Status::from_error(Box::new(std::io::Error::other("stream reset")));
        assert_eq!(reset.code(), Code::Unknown);
        assert!(reset.is_transient());
        let mut from_transport = Status::internal("h2 protocol error");
        from_transport.set_source(Arc::new(std::io::Error::other("reset")));
        assert!(from_transport.is_transient());
    }
}
