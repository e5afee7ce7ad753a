//! The durable store: jobs, executions, job events (state changes and log chunks), nodes and
//! the content store's small blocks, in one redb database in the data directory.
//!
//! All writes go through one writer thread that commits whatever has queued up as one
//! group (group commit), so concurrent submitters share fsyncs: the group is appended to a
//! write-ahead log and synced (`crate::wal`, which says why), then applied to redb. A caller
//! gets a [`Commit`] to await: once it resolves, the writes are on disk. Writes are applied
//! in the order they were queued.
//!
//! Writes that nobody waits for — an executor's progress reports: STAGING, RUNNING,
//! PUBLISHING, log chunks — may be *deferred*: the writer holds them up to
//! [`DEFER_AT_MOST`] for a write that is waited for (a submission, a completion) and
//! commits them together. A job that runs for a millisecond then costs one commit for
//! its whole run instead of four or five, and its completion does not queue behind the
//! fsync of its own progress reports (B2 and B3 in docs/PERFORMANCE.md). Their effects
//! (waking watchers) still wait for the commit, so no one sees a state that is not on
//! disk; a deferred write reaches watchers at most that much later.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use shoal::proto::{Execution, Job, JobEvent, Node};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::wal::{self, FrameBuilder, Table, Wal};

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const EXECUTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("executions");
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// Content-store blocks small enough to share a commit with the job records (see
/// `crate::blocks`), keyed by CID.
const BLOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("blocks");
/// Facts about the store itself: `wal_id`, the id of the write-ahead log this database
/// goes with (so a missing or foreign log is noticed).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Batches waiting for the writer. Bounded: when the disk falls behind, submitters wait.
const WRITE_QUEUE: usize = 1024;
/// Longest a deferred write waits, once the writer is free, for a write to share a commit
/// with.
pub const DEFER_AT_MOST: Duration = Duration::from_millis(5);

/// One record to write. (Variants differ in size, but writes live only briefly in a queue,
/// so boxing would cost an allocation for nothing.)
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Write {
    Job(Job),
    Execution(Execution),
    Event { job_id: String, event: JobEvent },
    Node(Node),
    Block { cid: String, data: bytes::Bytes },
}

struct Batch {
    writes: Vec<Write>,
    /// May wait up to [`DEFER_AT_MOST`] for company (see the module's comment).
    deferrable: bool,
    done: oneshot::Sender<Result<(), String>>,
}

/// Everything in the store, read at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub jobs: Vec<Job>,
    pub executions: Vec<Execution>,
    pub nodes: Vec<Node>,
    /// The last event sequence number of each job.
    pub last_sequences: Vec<(String, u64)>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    writer: mpsc::Sender<Batch>,
    writer_thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// A queued batch; await [`Commit::wait`] to know it is durable.
#[must_use = "a write is only known to be durable once its commit is awaited"]
pub struct Commit(oneshot::Receiver<Result<(), String>>);

impl Commit {
    /// Waits until the batch is on disk.
    pub async fn wait(self) -> Result<()> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(Error::StoreUnavailable(message)),
            Err(_) => Err(Error::ShuttingDown),
        }
    }
}

impl Store {
    /// Opens (or creates) the database at `path` (and its write-ahead log beside it, with
    /// the extension `wal`), applies what the log holds, and starts the writer thread,
    /// which ends when every `Store` handle is dropped.
    pub fn open(path: &Path) -> Result<(Store, Snapshot)> {
        Store::open_with(path, wal::Recovery::Refuse)
    }

    /// [`open`](Self::open), saying what to do if the write-ahead log is damaged or
    /// missing (by default: refuse, with [`Error::LogDamaged`]).
    pub fn open_with(path: &Path, recovery: wal::Recovery) -> Result<(Store, Snapshot)> {
        let db = Arc::new(Database::create(path)?);
        let expected_wal = {
            // Create the tables so that readers never see them missing.
            let tx = db.begin_write()?;
            tx.open_table(JOBS)?;
            tx.open_table(EXECUTIONS)?;
            tx.open_table(EVENTS)?;
            tx.open_table(NODES)?;
            tx.open_table(BLOCKS)?;
            let id = tx.open_table(META)?.get("wal_id")?.map(|v| v.value());
            tx.commit()?;
            id
        };
        let (mut wal, frames) = Wal::open(&path.with_extension("wal"), expected_wal, recovery)?;
        if expected_wal != Some(wal.id()) {
            // A new log (new database, or recovery): record it, durably, before any frame
            // can be written to it.
            let tx = db.begin_write()?;
            tx.open_table(META)?.insert("wal_id", wal.id())?;
            tx.commit()?;
        }
        if !frames.is_empty() {
            // Writes acknowledged since the last checkpoint: into the database, durably,
            // before anything is read from it.
            let bytes = wal.len();
            commit_directly(&db, &mut wal, &frames)?;
            tracing::info!(frames = frames.len(), bytes, "applied the write-ahead log");
        }
        let snapshot = load(&db)?;
        let (writer, queue) = mpsc::channel(WRITE_QUEUE);
        let writer_db = db.clone();
        // The writer's own runtime, only to wait for the queue with a time limit.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| Error::io("starting the store writer", e))?;
        let thread = std::thread::Builder::new()
            .name("shoal-store-writer".into())
            .spawn(move || runtime.block_on(write_loop(&writer_db, wal, queue)))
            .map_err(|e| Error::io("starting the store writer", e))?;
        let writer_thread = Arc::new(std::sync::Mutex::new(Some(thread)));
        Ok((
            Store {
                db,
                writer,
                writer_thread,
            },
            snapshot,
        ))
    }

    /// Queues writes; waits only if the write queue is full. Batches queued earlier are
    /// committed no later than this one.
    pub async fn queue(&self, writes: Vec<Write>) -> Result<Commit> {
        self.queue_batch(writes, false).await
    }

    /// Like [`queue`](Self::queue), for writes whose commit may be deferred up to
    /// [`DEFER_AT_MOST`] to share it with a later write (see the module's comment).
    pub async fn queue_deferrable(&self, writes: Vec<Write>) -> Result<Commit> {
        self.queue_batch(writes, true).await
    }

    async fn queue_batch(&self, writes: Vec<Write>, deferrable: bool) -> Result<Commit> {
        let (done, receiver) = oneshot::channel();
        self.writer
            .send(Batch {
                writes,
                deferrable,
                done,
            })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        Ok(Commit(receiver))
    }

    /// Flushes what is queued and closes the database, once every other handle is gone
    /// (the server's tasks have ended); the same file can then be opened again.
    pub async fn close(self) {
        let thread = self
            .writer_thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        drop(self);
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// A small block stored with [`Write::Block`], if there is one under `cid`. Called
    /// inline from async code: a point lookup in a B-tree whose upper levels stay cached.
    pub fn block(&self, cid: &str) -> Result<Option<bytes::Bytes>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(BLOCKS)?;
        Ok(table
            .get(cid)?
            .map(|value| bytes::Bytes::copy_from_slice(value.value())))
    }

    /// Up to `limit` events of a job with sequence numbers from `from`, in order.
    pub async fn events(&self, job_id: &str, from: u64, limit: usize) -> Result<Vec<JobEvent>> {
        let db = self.db.clone();
        let job_id = job_id.to_owned();
        tokio::task::spawn_blocking(move || -> Result<Vec<JobEvent>> {
            let tx = db.begin_read()?;
            let table = tx.open_table(EVENTS)?;
            let mut events = Vec::new();
            for entry in table.range((job_id.as_str(), from)..=(job_id.as_str(), u64::MAX))? {
                let (_, value) = entry?;
                events.push(JobEvent::decode(value.value())?);
                if events.len() >= limit {
                    break;
                }
            }
            Ok(events)
        })
        .await
        .map_err(|e| Error::Store(e.to_string()))?
    }
}

fn load(db: &Database) -> Result<Snapshot> {
    let tx = db.begin_read()?;
    let mut snapshot = Snapshot::default();
    for entry in tx.open_table(JOBS)?.iter()? {
        snapshot.jobs.push(Job::decode(entry?.1.value())?);
    }
    for entry in tx.open_table(EXECUTIONS)?.iter()? {
        snapshot
            .executions
            .push(Execution::decode(entry?.1.value())?);
    }
    for entry in tx.open_table(NODES)?.iter()? {
        snapshot.nodes.push(Node::decode(entry?.1.value())?);
    }
    let events = tx.open_table(EVENTS)?;
    for job in &snapshot.jobs {
        let last = events
            .range((job.id.as_str(), 0)..=(job.id.as_str(), u64::MAX))?
            .next_back()
            .transpose()?
            .map(|(key, _)| key.value().1)
            .unwrap_or(0);
        snapshot.last_sequences.push((job.id.clone(), last));
    }
    Ok(snapshot)
}

async fn write_loop(db: &Arc<Database>, mut wal: Wal, mut queue: mpsc::Receiver<Batch>) {
    while let Some(first) = queue.recv().await {
        // Group commit: everything that queued up while the last fsync ran goes in this one.
        let mut batches = vec![first];
        take_queued(&mut queue, &mut batches);
        if batches.iter().all(|b| b.deferrable) {
            // Nobody waits for these yet: give a write that is waited for the chance to
            // share their commit.
            let deadline = tokio::time::Instant::now() + DEFER_AT_MOST;
            while batches.len() < WRITE_QUEUE && batches.iter().all(|b| b.deferrable) {
                match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(batch)) => {
                        batches.push(batch);
                        take_queued(&mut queue, &mut batches);
                    }
                    // The deadline passed, or every handle is gone (commit and stop).
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let frames = encode_frames(&batches);
        let bytes: usize = frames.iter().map(Vec::len).sum();
        let mut result = if bytes >= wal::DIRECT_BYTES {
            commit_directly(db, &mut wal, &frames)
        } else {
            commit_frames(db, &mut wal, &frames)
        }
        .map_err(|e| e.to_string());
        if result.is_ok() && wal.len() >= wal::CHECKPOINT_BYTES {
            result = checkpoint(db, &mut wal).map_err(|e| e.to_string());
        }
        if let Err(error) = &result {
            tracing::error!(%error, "store commit failed");
        }
        for batch in batches {
            let _receiver_gone = batch.done.send(result.clone());
        }
    }
    if let Err(error) = checkpoint(db, &mut wal) {
        tracing::error!(%error, "the store's last checkpoint failed; the log is applied at the next start");
    }
}

/// Makes frames durable in the log (one sync), then applies them to the database in one
/// commit without a sync.
fn commit_frames(db: &Database, wal: &mut Wal, frames: &[Vec<u8>]) -> Result<()> {
    wal.append(frames)
        .map_err(|e| Error::io("appending to the write-ahead log", e))?;
    let mut tx = db.begin_write()?;
    // Durable already, in the log: the sync comes with the next checkpoint.
    tx.set_durability(Durability::None)?;
    apply_frames(&tx, frames)?;
    tx.commit()?;
    Ok(())
}

/// Applies frames to the database in a synced commit, which makes everything applied
/// before it durable too, and empties the log. For a large group: past
/// [`wal::DIRECT_BYTES`], writing the bytes twice (log, then database) costs more than the
/// scattered pages' sync saves (B5's logs, docs/PERFORMANCE.md); and for the log itself
/// at start-up.
fn commit_directly(db: &Database, wal: &mut Wal, frames: &[Vec<u8>]) -> Result<()> {
    let tx = db.begin_write()?;
    apply_frames(&tx, frames)?;
    tx.commit()?;
    if !wal.is_empty() {
        wal.clear()?;
    }
    Ok(())
}

/// Makes everything applied so far durable in the database (one synced commit) and
/// empties the log.
fn checkpoint(db: &Database, wal: &mut Wal) -> Result<()> {
    if wal.is_empty() {
        return Ok(());
    }
    db.begin_write()?.commit()?;
    wal.clear()
}

/// Moves the batches already queued into `batches`, up to [`WRITE_QUEUE`] in all.
fn take_queued(queue: &mut mpsc::Receiver<Batch>, batches: &mut Vec<Batch>) {
    while batches.len() < WRITE_QUEUE {
        match queue.try_recv() {
            Ok(batch) => batches.push(batch),
            Err(_) => break,
        }
    }
}

/// Log frames holding every write of `batches`, in order: values encoded once, then both
/// logged and put into redb as they are. A new frame starts once one passes
/// [`wal::FRAME_TARGET`], so no frame outgrows its 32-bit length (a batch is far smaller).
fn encode_frames(batches: &[Batch]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut frame = FrameBuilder::default();
    for batch in batches {
        for write in &batch.writes {
            match write {
                Write::Job(job) => frame.row(Table::Jobs, &job.id, 0, |b| job.encode_raw(b)),
                Write::Execution(execution) => {
                    frame.row(Table::Executions, &execution.id, 0, |b| {
                        execution.encode_raw(b)
                    })
                }
                Write::Event { job_id, event } => {
                    frame.row(Table::Events, job_id, event.sequence, |b| {
                        event.encode_raw(b)
                    })
                }
                Write::Node(node) => frame.row(Table::Nodes, &node.id, 0, |b| node.encode_raw(b)),
                Write::Block { cid, data } => {
                    frame.row(Table::Blocks, cid, 0, |b| b.extend_from_slice(data))
                }
            }
        }
        if frame.len() >= wal::FRAME_TARGET {
            frames.push(std::mem::take(&mut frame).finish());
        }
    }
    if !frame.is_empty() {
        frames.push(frame.finish());
    }
    frames
}

/// Puts the rows of `frames` into their tables, in order.
fn apply_frames(tx: &redb::WriteTransaction, frames: &[Vec<u8>]) -> Result<()> {
    for frame in frames {
        apply_rows(tx, &wal::rows(frame)?)?;
    }
    Ok(())
}

/// Puts `rows` into their tables.
fn apply_rows(tx: &redb::WriteTransaction, rows: &[wal::Row<'_>]) -> Result<()> {
    let mut jobs = tx.open_table(JOBS)?;
    let mut executions = tx.open_table(EXECUTIONS)?;
    let mut events = tx.open_table(EVENTS)?;
    let mut nodes = tx.open_table(NODES)?;
    let mut blocks = tx.open_table(BLOCKS)?;
    for row in rows {
        match row.table {
            Table::Jobs => jobs.insert(row.key, row.value)?,
            Table::Executions => executions.insert(row.key, row.value)?,
            Table::Events => events.insert((row.key, row.sequence), row.value)?,
            Table::Nodes => nodes.insert(row.key, row.value)?,
            Table::Blocks => blocks.insert(row.key, row.value)?,
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal::proto::{JobState, job_event};

    const EMPTY_LOG: u64 = wal::FILE_HEADER as u64;

    async fn commit(store: &Store, writes: Vec<Write>) {
        let commit = store.queue(writes).await.expect("queue");
        commit.wait().await.expect("commit");
    }

    /// What was committed is there after reopening, and events come back in order.
    #[tokio::test]
    async fn committed_writes_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        {
            let (store, snapshot) = Store::open(&path).expect("open");
            assert!(snapshot.jobs.is_empty());
            let job = Job {
                id: "j1".into(),
                state: JobState::Queued as i32,
                ..Default::default()
            };
            let events = (1..=3).map(|sequence| Write::Event {
                job_id: "j1".into(),
                event: JobEvent {
                    sequence,
                    time: None,
                    event: Some(job_event::Event::StateChange(Default::default())),
                },
            });
            let mut writes = vec![Write::Job(job)];
            writes.extend(events);
            commit(&store, writes).await;
            let events = store.events("j1", 2, 10).await.expect("events");
            assert_eq!(
                events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
                vec![2, 3]
            );
            store.close().await;
        }
        let (store, snapshot) = Store::open(&path).expect("reopen");
        store.close().await;
        assert_eq!(snapshot.jobs.len(), 1);
        assert_eq!(snapshot.last_sequences, vec![("j1".to_string(), 3)]);
    }

    /// What a crash leaves — the database and log files as they are on disk while the
    /// store runs, no checkpoint taken — opens with every acknowledged write, and opening
    /// empties the log.
    #[tokio::test]
    async fn acknowledged_writes_survive_a_crash_between_checkpoints() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let (store, _) = Store::open(&path).expect("open");
        for i in 0..20 {
            let mut writes = job(&format!("j{i}"));
            writes.push(Write::Block {
                cid: format!("b{i}"),
                data: bytes::Bytes::from(vec![i as u8; 1000]),
            });
            commit(&store, writes).await;
        }
        let crashed = dir.path().join("crashed");
        std::fs::create_dir(&crashed).expect("mkdir");
        for name in ["state.redb", "state.wal"] {
            std::fs::copy(dir.path().join(name), crashed.join(name)).expect("copy");
        }
        assert!(
            file_len(&crashed.join("state.wal")) > EMPTY_LOG,
            "the writes are in the log, not yet checkpointed"
        );
        store.close().await;

        let (recovered, snapshot) = Store::open(&crashed.join("state.redb")).expect("recover");
        assert_eq!(snapshot.jobs.len(), 20);
        assert_eq!(
            recovered.block("b19").expect("block").as_deref(),
            Some(&[19u8; 1000][..])
        );
        assert_eq!(file_len(&crashed.join("state.wal")), EMPTY_LOG);
        recovered.close().await;
        // A clean close checkpoints: the original's log is empty too.
        assert_eq!(file_len(&dir.path().join("state.wal")), EMPTY_LOG);
    }

    /// A database whose write-ahead log is missing, or damaged in the middle, is refused
    /// with the reason instead of opening without the acknowledged writes in the log;
    /// recovery opens it with the frames before the damage.
    #[tokio::test]
    async fn a_database_without_its_whole_log_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let (store, _) = Store::open(&path).expect("open");
        for i in 0..3 {
            commit(&store, job(&format!("j{i}"))).await;
        }
        let crashed = dir.path().join("crashed");
        std::fs::create_dir(&crashed).expect("mkdir");
        std::fs::copy(&path, crashed.join("state.redb")).expect("copy");
        let log = std::fs::read(path.with_extension("wal")).expect("read the log");
        store.close().await;

        let refused = Store::open(&crashed.join("state.redb")).expect_err("refused");
        assert!(refused.to_string().contains("is missing"), "{refused}");
        // The second of three frames damaged: the third must not be dropped silently.
        let mut damaged = log.clone();
        let middle = wal::FILE_HEADER + (log.len() - wal::FILE_HEADER) / 2;
        damaged[middle] ^= 1;
        std::fs::write(crashed.join("state.wal"), &damaged).expect("write");
        let refused = Store::open(&crashed.join("state.redb")).expect_err("refused");
        assert!(matches!(refused, Error::LogDamaged(_)), "{refused}");
        assert_eq!(
            std::fs::read(crashed.join("state.wal")).expect("read"),
            damaged
        );
        let (recovered, snapshot) =
            Store::open_with(&crashed.join("state.redb"), wal::Recovery::MoveAside)
                .expect("recover");
        assert_eq!(
            snapshot.jobs.len(),
            1,
            "the frame before the damage is kept"
        );
        recovered.close().await;
        let (_, snapshot) = Store::open(&crashed.join("state.redb")).expect("reopen");
        assert_eq!(snapshot.jobs.len(), 1);
    }

    /// A group past the direct-commit size goes straight into a synced database commit,
    /// taking what the log held with it: the log is empty after it, and a crash image
    /// holds both.
    #[tokio::test]
    async fn a_large_group_is_committed_to_the_database_directly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let (store, _) = Store::open(&path).expect("open");
        commit(&store, job("small")).await;
        let wal_len = || file_len(&dir.path().join("state.wal"));
        assert!(wal_len() > EMPTY_LOG, "a small group goes to the log");
        let big = Write::Block {
            cid: "big".into(),
            data: bytes::Bytes::from(vec![7; wal::DIRECT_BYTES]),
        };
        commit(&store, vec![big]).await;
        assert_eq!(wal_len(), EMPTY_LOG, "the large group checkpointed the log");

        let crashed = dir.path().join("crashed");
        std::fs::create_dir(&crashed).expect("mkdir");
        std::fs::copy(&path, crashed.join("state.redb")).expect("copy");
        std::fs::copy(path.with_extension("wal"), crashed.join("state.wal")).expect("copy");
        store.close().await;
        let (recovered, snapshot) = Store::open(&crashed.join("state.redb")).expect("recover");
        assert_eq!(snapshot.jobs.len(), 1);
        assert_eq!(
            recovered.block("big").expect("block").map(|b| b.len()),
            Some(wal::DIRECT_BYTES)
        );
        recovered.close().await;
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).expect("stat").len()
    }

    fn job(id: &str) -> Vec<Write> {
        vec![Write::Job(Job {
            id: id.into(),
            ..Default::default()
        })]
    }

    /// A deferred write is committed with the next write that is waited for, in queue
    /// order; one left alone is committed anyway, and so is one queued at shutdown.
    #[tokio::test]
    async fn deferred_writes_share_the_next_commit_and_are_never_left_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let (store, _) = Store::open(&path).expect("open");
        let deferred = store.queue_deferrable(job("d1")).await.expect("queue");
        let urgent = store.queue(job("u1")).await.expect("queue");
        urgent.wait().await.expect("commit");
        // The writer answers a commit's batches in queue order, so the deferred one was
        // answered first: it was in that commit or an earlier one.
        assert!(
            futures::FutureExt::now_or_never(deferred.wait()).is_some(),
            "the deferred write was still waiting after a later write's commit"
        );

        let alone = store.queue_deferrable(job("d2")).await.expect("queue");
        tokio::time::timeout(Duration::from_secs(30), alone.wait())
            .await
            .expect("a deferred write alone is committed within its bound")
            .expect("commit");

        let at_shutdown = store.queue_deferrable(job("d3")).await.expect("queue");
        store.close().await;
        at_shutdown
            .wait()
            .await
            .expect("committed before the store closed");
        let (store, snapshot) = Store::open(&path).expect("reopen");
        store.close().await;
        let mut ids: Vec<_> = snapshot.jobs.iter().map(|j| j.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["d1", "d2", "d3", "u1"]);
    }
}
