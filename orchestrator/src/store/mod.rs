//! The durable store behind the orchestrator, and the contract every implementation keeps:
//!
//! - A write is durable once its [`Commit`] resolves, and not before: the orchestrator lets
//!   a transition's effects out (messages to executors, watchers woken) only then.
//! - Batches are committed in the order they were queued, and a batch queued earlier is
//!   committed no later than one queued after it; many batches may share one commit (group
//!   commit), so concurrent submitters share the cost of making them durable.
//! - A *deferrable* batch (an executor's progress reports, which nobody waits for) may be
//!   held up to [`DEFER_AT_MOST`] to share the commit of a later one.
//! - After a failed commit the store refuses writes until it writes again; the orchestrator
//!   then reloads its state from [`Store::snapshot`].
//!
//! [`Store`] is the handle the orchestrator holds; [`Backend`] is what an implementation
//! provides. There are two: [`embedded`], the default (redb, its tables and what each
//! record's row looks like in `tables`, and a write-ahead log, [`wal`], in the data
//! directory), and [`postgres`], a database several orchestrators can share, one of them
//! leading. Both take their groups from the same queue (`group`).

pub mod embedded;
mod group;
pub mod postgres;
mod tables;
pub mod wal;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use shoal::proto::JobEvent;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::records::{Snapshot, Write};

/// Longest a deferred write waits, once the store is free, for a write to share a commit
/// with.
pub const DEFER_AT_MOST: Duration = Duration::from_millis(5);

/// What a store implementation provides (see the module's comment for the contract).
pub trait Backend: Send + Sync + 'static {
    /// Queues `writes` for commit; waits only while the store's queue is full.
    fn queue(&self, writes: Vec<Write>, deferrable: bool) -> BoxFuture<'_, Result<Commit>>;
    /// Everything in the store, as at start-up.
    fn snapshot(&self) -> BoxFuture<'_, Result<Snapshot>>;
    /// Up to `limit` events of a job with sequence numbers from `from`, in order.
    fn events<'a>(
        &'a self,
        job_id: &'a str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<JobEvent>>>;
    /// Largest block the content store keeps here rather than in a file of its own.
    fn largest_block(&self) -> usize;
    /// A block stored with [`Write::Block`], if there is one under `cid`.
    fn block<'a>(&'a self, cid: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>>;
    /// The name recorded for `cid` with [`Write::Name`] (the first one), if any.
    fn name<'a>(&'a self, cid: &'a str) -> BoxFuture<'a, Result<Option<String>>>;
    /// The artifact last recorded with [`Write::CompiledModule`] for `program` and
    /// `engine`, if any.
    fn compiled_module<'a>(
        &'a self,
        program: &'a str,
        engine: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>>>;
    /// Commits what is queued and releases the store once every other handle is gone.
    fn close(self: Arc<Self>) -> BoxFuture<'static, ()>;
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store(Arc<dyn Backend>);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// The embedded store at `path` (a redb database, its write-ahead log beside it with the
    /// extension `wal`), and what it holds.
    pub fn open(path: &Path) -> Result<(Store, Snapshot)> {
        Store::open_with(path, wal::Recovery::Refuse)
    }

    /// [`open`](Self::open), saying what to do if the write-ahead log is damaged or
    /// missing (by default: refuse, with [`Error::LogDamaged`]).
    pub fn open_with(path: &Path, recovery: wal::Recovery) -> Result<(Store, Snapshot)> {
        let (backend, snapshot) = embedded::Embedded::open(path, recovery)?;
        Ok((Store(Arc::new(backend)), snapshot))
    }

    /// The PostgreSQL store of the leadership term `leadership` (its schema brought up to
    /// date first with [`postgres::Postgres::migrate`]), and what it holds.
    pub async fn postgres(
        database: &postgres::connect::Database,
        leadership: &postgres::Leadership,
    ) -> Result<(Store, Snapshot)> {
        let (backend, snapshot) = postgres::Postgres::open(database, leadership).await?;
        Ok((Store(Arc::new(backend)), snapshot))
    }

    /// Queues writes; waits only if the write queue is full. Batches queued earlier are
    /// committed no later than this one.
    pub async fn queue(&self, writes: Vec<Write>) -> Result<Commit> {
        self.0.queue(writes, false).await
    }

    /// Like [`queue`](Self::queue), for writes whose commit may be deferred up to
    /// [`DEFER_AT_MOST`] to share it with a later write.
    pub async fn queue_deferrable(&self, writes: Vec<Write>) -> Result<Commit> {
        self.0.queue(writes, true).await
    }

    /// Everything in the store, as at start-up: what the orchestrator reloads its state
    /// from after commits failed (their transitions must be forgotten with them).
    pub async fn snapshot(&self) -> Result<Snapshot> {
        self.0.snapshot().await
    }

    /// Up to `limit` events of a job with sequence numbers from `from`, in order.
    pub async fn events(&self, job_id: &str, from: u64, limit: usize) -> Result<Vec<JobEvent>> {
        self.0.events(job_id, from, limit).await
    }

    /// Largest block the content store keeps in this store rather than in a file of its
    /// own beside it: the small ones in the embedded store; every one in PostgreSQL, so a
    /// replica that takes over finds them.
    pub fn largest_block(&self) -> usize {
        self.0.largest_block()
    }

    /// A block stored with [`Write::Block`], if there is one under `cid`.
    pub async fn block(&self, cid: &str) -> Result<Option<Bytes>> {
        self.0.block(cid).await
    }

    /// The file name recorded for `cid` ([`Write::Name`]), if any.
    pub async fn name(&self, cid: &str) -> Result<Option<String>> {
        self.0.name(cid).await
    }

    /// The artifact recorded for `program`'s compiled module on `engine`
    /// ([`Write::CompiledModule`]), if any.
    pub async fn compiled_module(&self, program: &str, engine: &str) -> Result<Option<String>> {
        self.0.compiled_module(program, engine).await
    }

    /// Flushes what is queued and closes the store, once every other handle is gone (the
    /// server's tasks have ended); the same store can then be opened again.
    pub async fn close(self) {
        self.0.close().await
    }
}

/// A queued batch; await [`Commit::wait`] to know it is durable.
#[must_use = "a write is only known to be durable once its commit is awaited"]
pub struct Commit(oneshot::Receiver<Result<(), String>>);

impl Commit {
    /// A commit that resolves when `done` is sent: `Ok` once durable, `Err` with why not.
    pub fn new(done: oneshot::Receiver<Result<(), String>>) -> Self {
        Commit(done)
    }

    /// Waits until the batch is on disk.
    pub async fn wait(self) -> Result<()> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(Error::StoreUnavailable(message)),
            Err(_) => Err(Error::ShuttingDown),
        }
    }
}
