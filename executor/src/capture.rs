//! Capturing a guest's stdout or stderr: bytes are kept (up to a cap; the rest is counted
//! and dropped) for the result tree and queued for live streaming to the orchestrator.
//! Kept bytes stay in memory until they pass [`IN_MEMORY_MAX`], and only then go to a file
//! in the result tree: most programs print little, and a file per stream was two inode
//! creations per job, the executor's main filesystem cost (docs/PERFORMANCE.md, B1-B3).
//!
//! Writes never block the guest: the pending buffer is drained by the execution's log
//! forwarder, which coalesces small writes into larger chunks. It is bounded by the cap.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::sync::Notify;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Largest write the guest is offered at once.
const WRITE_BUDGET: usize = 64 * 1024;
/// Largest chunk handed to the forwarder, well under the gRPC message limit.
const MAX_CHUNK: usize = 1024 * 1024;
/// Kept bytes held in memory before they spill to the capture's file.
pub const IN_MEMORY_MAX: usize = 64 * 1024;

/// Where the kept bytes are.
enum Kept {
    Memory(BytesMut),
    File(std::fs::File),
}

struct State {
    /// The file kept bytes spill to.
    path: PathBuf,
    kept: Kept,
    cap: u64,
    /// Bytes the guest wrote, kept or not.
    total: u64,
    /// Kept bytes not yet taken by the forwarder, and the stream offset they start at.
    pending: BytesMut,
    pending_offset: u64,
}

/// One captured stream; clones share it.
#[derive(Clone)]
pub struct Capture {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
}

/// A piece of captured output ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub offset: u64,
    pub data: Bytes,
}

impl Capture {
    /// Captures at most `cap` bytes, in memory and past [`IN_MEMORY_MAX`] in a new file at
    /// `path`; `wake` is notified whenever there is something to forward.
    pub fn new(path: &Path, cap: u64, wake: Arc<Notify>) -> Self {
        Capture {
            state: Arc::new(Mutex::new(State {
                path: path.to_owned(),
                kept: Kept::Memory(BytesMut::new()),
                cap,
                total: 0,
                pending: BytesMut::new(),
                pending_offset: 0,
            })),
            wake,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut state = self.lock();
        let kept_so_far = state.total.min(state.cap);
        let room = state.cap - kept_so_far;
        let keep = &bytes[..(bytes.len() as u64).min(room) as usize];
        state.total += bytes.len() as u64;
        if !keep.is_empty() {
            let State { path, kept, .. } = &mut *state;
            let spill = match kept {
                Kept::Memory(kept) if kept.len() + keep.len() <= IN_MEMORY_MAX => {
                    kept.extend_from_slice(keep);
                    None
                }
                Kept::Memory(kept) => {
                    let mut file = std::fs::File::create(path)?;
                    file.write_all(kept)?;
                    file.write_all(keep)?;
                    Some(file)
                }
                Kept::File(file) => {
                    file.write_all(keep)?;
                    None
                }
            };
            if let Some(file) = spill {
                state.kept = Kept::File(file);
            }
            state.pending.extend_from_slice(keep);
            drop(state);
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Takes what has been captured since the last call.
    pub fn take(&self) -> Option<Captured> {
        let mut state = self.lock();
        if state.pending.is_empty() {
            return None;
        }
        let take = state.pending.len().min(MAX_CHUNK);
        let data = state.pending.split_to(take).freeze();
        let offset = state.pending_offset;
        state.pending_offset += data.len() as u64;
        Some(Captured { offset, data })
    }

    /// Bytes the guest wrote in total, and whether some were dropped past the cap.
    pub fn totals(&self) -> (u64, bool) {
        let state = self.lock();
        (state.total, state.total > state.cap)
    }

    /// The kept bytes, if they are still in memory (None once they spilled to the file).
    pub fn kept_in_memory(&self) -> Option<Bytes> {
        match &self.lock().kept {
            Kept::Memory(kept) => Some(Bytes::copy_from_slice(kept)),
            Kept::File(_) => None,
        }
    }

    /// Puts every kept byte in the capture's file, writing it from memory if they never
    /// spilled, for publishers that ship a directory.
    pub fn write_out(&self) -> std::io::Result<()> {
        let mut state = self.lock();
        let State { path, kept, .. } = &mut *state;
        match kept {
            Kept::Memory(kept) => std::fs::write(path, kept),
            Kept::File(file) => file.flush(),
        }
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        Capture::write(self, &bytes)
            .map_err(|e| StreamError::LastOperationFailed(wasmtime::Error::new(e)))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Capture::write(&self, buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output past the cap is counted but neither kept nor forwarded.
    #[test]
    fn caps_and_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stdout");
        let capture = Capture::new(&path, 8, Arc::new(Notify::new()));
        capture.write(b"hello ").expect("write");
        assert_eq!(
            capture.take(),
            Some(Captured {
                offset: 0,
                data: Bytes::from_static(b"hello ")
            })
        );
        capture.write(b"world, and more").expect("write");
        assert_eq!(
            capture.take(),
            Some(Captured {
                offset: 6,
                data: Bytes::from_static(b"wo")
            })
        );
        assert_eq!(capture.take(), None);
        assert_eq!(capture.totals(), (21, true));
        assert!(!path.exists(), "small output stays in memory");
        assert_eq!(capture.kept_in_memory().as_deref(), Some(&b"hello wo"[..]));
        capture.write_out().expect("write out");
        assert_eq!(std::fs::read(&path).expect("read"), b"hello wo");
    }

    /// Kept output past IN_MEMORY_MAX moves to the file, all of it and in order.
    #[test]
    fn large_output_spills_to_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stdout");
        let capture = Capture::new(&path, 1 << 20, Arc::new(Notify::new()));
        let first = vec![b'a'; IN_MEMORY_MAX - 1];
        capture.write(&first).expect("write");
        assert!(!path.exists());
        capture.write(b"bc").expect("write past the threshold");
        capture.write(b"d").expect("write to the file");
        assert_eq!(capture.kept_in_memory(), None);
        capture.write_out().expect("flush");
        let mut expected = first;
        expected.extend_from_slice(b"bcd");
        assert_eq!(std::fs::read(&path).expect("read"), expected);
    }
}
