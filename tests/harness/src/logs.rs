//! A daemon's log lines: collected in the background (so it never blocks on a full pipe),
//! with waiters woken by each new line.

use std::sync::{Arc, LockResult, Mutex, MutexGuard};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::Notify;

use crate::TIMEOUT;

/// The lines a daemon wrote so far.
#[derive(Debug, Default)]
pub struct LogLines {
    lines: Mutex<Vec<String>>,
    added: Notify,
    ended: std::sync::atomic::AtomicBool,
}

/// Shared handle to a daemon's [`LogLines`].
pub type Lines = Arc<LogLines>;

impl LogLines {
    /// The lines so far.
    pub fn lock(&self) -> LockResult<MutexGuard<'_, Vec<String>>> {
        self.lines.lock()
    }

    /// The first line that `wanted` maps to a value, waiting for new lines until the
    /// timeout; `what` names the line in the error.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        wanted: impl Fn(&str) -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        self.scan(what, |lines| {
            for line in lines {
                if let Some(value) = wanted(line)? {
                    return Ok(Some(value));
                }
            }
            Ok(None)
        })
        .await
    }

    /// Waits until `done` holds for all the lines so far (e.g. a line seen twice), until
    /// the timeout; `what` names what was waited for in the error.
    pub async fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&[String]) -> bool,
    ) -> anyhow::Result<()> {
        self.scan(what, |lines| Ok(done(lines).then_some(()))).await
    }

    /// Runs `scan` over the lines so far and again at each new line, until it returns a
    /// value, the log ends, or the timeout passes.
    async fn scan<T>(
        &self,
        what: &str,
        scan: impl Fn(&[String]) -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let find = || -> anyhow::Result<Option<T>> {
            let lines = self.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            scan(&lines)
        };
        let wait = async {
            loop {
                // Registered before looking, so a line added in between still wakes us.
                let added = self.added.notified();
                tokio::pin!(added);
                added.as_mut().enable();
                if let Some(value) = find()? {
                    return Ok(value);
                }
                if self.ended.load(std::sync::atomic::Ordering::Acquire) {
                    bail!("the log ended without a line {what}");
                }
                added.await;
            }
        };
        match tokio::time::timeout(TIMEOUT, wait).await {
            Ok(found) => found,
            Err(_) => bail!(
                "no log line {what} within {TIMEOUT:?} in {:#?}",
                self.lock().map(|l| l.clone()).unwrap_or_default()
            ),
        }
    }
}

/// Collects the lines of a child's stream in the background and returns them.
pub fn collect<R>(mut reader: BufReader<R>) -> Lines
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let lines = Lines::default();
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut line = String::new();
        while reader.read_line(&mut line).await.unwrap_or(0) > 0 {
            if let Ok(mut lines) = sink.lock() {
                lines.push(std::mem::take(&mut line));
            }
            sink.added.notify_waiters();
        }
        sink.ended.store(true, std::sync::atomic::Ordering::Release);
        sink.added.notify_waiters();
    });
    lines
}

/// Reads lines from a child's stream until one contains `needle`; returns that line.
pub async fn wait_for_line<R>(reader: &mut BufReader<R>, needle: &str) -> anyhow::Result<String>
where
    R: AsyncRead + Unpin,
{
    let wait = async {
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .await
                .context("reading a line")?;
            if n == 0 {
                bail!("the stream ended before a line containing {needle:?}");
            }
            if line.contains(needle) {
                return Ok(line.clone());
            }
        }
    };
    tokio::time::timeout(TIMEOUT, wait)
        .await
        .with_context(|| format!("no line containing {needle:?} within {TIMEOUT:?}"))?
}

/// Keeps reading a child's stream in the background so the child never blocks on a full
/// pipe.
pub fn drain<R>(mut reader: BufReader<R>)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut line = String::new();
        while reader.read_line(&mut line).await.unwrap_or(0) > 0 {
            line.clear();
        }
    });
}
