//! The embedded store: jobs, executions, job events (state changes and log chunks), nodes,
//! the content store's small blocks and names, and the compiled-module index, in one redb
//! database in the data directory (the tables and their rows: `super::tables`).
//!
//! All writes go through one writer thread that commits whatever has queued up as one
//! group (group commit), so concurrent submitters share fsyncs: the group is appended to a
//! write-ahead log and synced (`super::wal`, which says why), then applied to redb. A caller
//! gets a [`Commit`] to await: once it resolves, the writes are on disk. Writes are applied
//! in the order they were queued.
//!
//! Writes that nobody waits for — an executor's progress reports: STAGING, RUNNING,
//! PUBLISHING, log chunks — may be *deferred*: the writer holds them up to
//! [`DEFER_AT_MOST`](super::DEFER_AT_MOST) for a write that is waited for (a submission, a completion) and
//! commits them together. A job that runs for a millisecond then costs one commit for
//! its whole run instead of four or five, and its completion does not queue behind the
//! fsync of its own progress reports (B2 and B3 in docs/PERFORMANCE.md). Their effects
//! (waking watchers) still wait for the commit, so no one sees a state that is not on
//! disk; a deferred write reaches watchers at most that much later.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use prost::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use shoal::proto::JobEvent;
use tokio::sync::mpsc;

use super::group::{self, Batch, Queue};
use super::tables::{self, BLOCKS, EVENTS, META, MODULES, NAMES};
use super::wal::{self, FrameBuilder, Wal};
use super::{Backend, Commit};
use crate::error::{Error, Result};
use crate::records::{Snapshot, Write};

/// The open database, shared by the writer and readers. None while the writer reopens it
/// after a failed commit (redb refuses every operation after an I/O error until it is
/// opened again).
type SharedDatabase = Arc<std::sync::RwLock<Option<Arc<Database>>>>;

/// The embedded store: redb and its write-ahead log, written by one thread.
pub struct Embedded {
    db: SharedDatabase,
    writer: mpsc::Sender<Batch>,
    writer_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Embedded {
    /// Opens (or creates) the database at `path` (and its write-ahead log beside it, with
    /// the extension `wal`), applies what the log holds, and starts the writer thread,
    /// which ends when the store is dropped.
    pub fn open(path: &Path, recovery: wal::Recovery) -> Result<(Embedded, Snapshot)> {
        let (db, wal) = open_database(path, recovery)?;
        let db = Arc::new(db);
        let snapshot = tables::load(&db)?;
        let (writer, queue) = group::channel();
        let db: SharedDatabase = Arc::new(std::sync::RwLock::new(Some(db)));
        let writer_db = Writer {
            shared: db.clone(),
            path: path.to_owned(),
        };
        // The writer's own runtime, only to wait for the queue with a time limit.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| Error::io("starting the store writer", e))?;
        let thread = std::thread::Builder::new()
            .name("shoal-store-writer".into())
            .spawn(move || runtime.block_on(write_loop(writer_db, wal, queue)))
            .map_err(|e| Error::io("starting the store writer", e))?;
        let store = Embedded {
            db,
            writer,
            writer_thread: std::sync::Mutex::new(Some(thread)),
        };
        Ok((store, snapshot))
    }

    /// The database, unless the writer is reopening it after a failed commit.
    fn database(&self) -> Result<Arc<Database>> {
        current(&self.db).ok_or_else(|| {
            Error::StoreUnavailable("the database is being reopened after a write error".into())
        })
    }
}

impl Backend for Embedded {
    fn queue(&self, writes: Vec<Write>, deferrable: bool) -> BoxFuture<'_, Result<Commit>> {
        Box::pin(group::send(&self.writer, writes, deferrable))
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<Snapshot>> {
        Box::pin(async move {
            let db = self.database()?;
            tokio::task::spawn_blocking(move || tables::load(&db))
                .await
                .map_err(|e| Error::Store(e.to_string()))?
        })
    }

    fn events<'a>(
        &'a self,
        job_id: &'a str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<JobEvent>>> {
        Box::pin(async move {
            let db = self.database()?;
            let job_id = job_id.to_owned();
            tokio::task::spawn_blocking(move || -> Result<Vec<JobEvent>> {
                let tx = db.begin_read()?;
                let table = tx.open_table(EVENTS)?;
                let mut events = Vec::new();
                let range = (job_id.as_str(), from)..=(job_id.as_str(), u64::MAX);
                for entry in table.range(range)? {
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
        })
    }

    /// Looked up inline, not on the blocking pool: a point lookup in a B-tree whose upper
    /// levels stay cached.
    /// 64 KiB: directory nodes and most results' logs; a file per block cost a create,
    /// two fsyncs and an inode each, while larger blocks would bloat the log and redb.
    fn largest_block(&self) -> usize {
        64 * 1024
    }

    fn block<'a>(&'a self, cid: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(async move {
            let tx = self.database()?.begin_read()?;
            let table = tx.open_table(BLOCKS)?;
            Ok(table
                .get(cid)?
                .map(|value| Bytes::copy_from_slice(value.value())))
        })
    }

    fn name<'a>(&'a self, cid: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let tx = self.database()?.begin_read()?;
            let table = tx.open_table(NAMES)?;
            Ok(table.get(cid)?.map(|value| value.value().to_owned()))
        })
    }

    fn compiled_module<'a>(
        &'a self,
        program: &'a str,
        engine: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let tx = self.database()?.begin_read()?;
            let table = tx.open_table(MODULES)?;
            let key = tables::module_key(program, engine);
            Ok(table
                .get(key.as_str())?
                .map(|value| value.value().to_owned()))
        })
    }

    /// The writer thread ends once the last handle (and with it the queue's sender) is
    /// gone; then the database file is closed and can be opened again.
    fn close(self: Arc<Self>) -> BoxFuture<'static, ()> {
        let thread = self
            .writer_thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        drop(self);
        Box::pin(async move {
            if let Some(thread) = thread {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
        })
    }
}

/// The open database, if it is not being reopened.
fn current(shared: &SharedDatabase) -> Option<Arc<Database>> {
    shared.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Opens (or creates) the database and its write-ahead log and applies what the log
/// holds; at start-up, and again after a failed commit.
fn open_database(path: &Path, recovery: wal::Recovery) -> Result<(Database, Wal)> {
    let db = Database::create(path)?;
    let expected_wal = {
        // Create the tables so that readers never see them missing.
        let tx = db.begin_write()?;
        tables::create(&tx)?;
        let meta = tx.open_table(META)?;
        let number = |key: &str| -> Result<Option<u64>> {
            Ok(meta
                .get(key)?
                .and_then(|v| v.value().try_into().ok().map(u64::from_le_bytes)))
        };
        let numbers = (number("wal_id")?, number("wal_applied")?.unwrap_or(0));
        drop(meta);
        tx.commit()?;
        numbers
    };
    let (expected_wal, applied) = expected_wal;
    let log_path = path.with_extension("wal");
    let (opened, frames) = Wal::open(&log_path, expected_wal, recovery)?;
    let id = match &opened {
        wal::Opened::Log(wal) => wal.id(),
        wal::Opened::Replace { id } => *id,
    };
    // Frames a synced commit already covers are not applied again (see `crate::wal`).
    let newest = frames
        .iter()
        .map(|f| wal::frame_sequence(f))
        .max()
        .unwrap_or(0);
    let through = newest.max(applied);
    let frames: Vec<Vec<u8>> = frames
        .into_iter()
        .filter(|f| wal::frame_sequence(f) > applied)
        .collect();
    if expected_wal != Some(id) || !frames.is_empty() {
        // Writes acknowledged since the last checkpoint, and the log's id: into the
        // database in one synced commit, before anything is read from it (and, when
        // recovering, before the damaged log is replaced).
        let tx = db.begin_write()?;
        apply_frames(&tx, &frames)?;
        let mut meta = tx.open_table(META)?;
        meta.insert("wal_id", &id.to_le_bytes()[..])?;
        meta.insert("wal_applied", &through.to_le_bytes()[..])?;
        drop(meta);
        tx.commit()?;
        if !frames.is_empty() {
            tracing::info!(frames = frames.len(), "applied the write-ahead log");
        }
    }
    let mut wal = match opened {
        wal::Opened::Log(mut wal) => {
            empty_log(&mut wal);
            wal
        }
        wal::Opened::Replace { id } => Wal::create(&log_path, id)?,
    };
    wal.continue_after(through);
    Ok((db, wal))
}

/// The writer thread's hold on the database.
struct Writer {
    shared: SharedDatabase,
    path: std::path::PathBuf,
}

impl Writer {
    fn database(&self) -> Option<Arc<Database>> {
        current(&self.shared)
    }

    /// Closes the database and opens it again with its log, as at start-up: after an I/O
    /// error redb refuses every operation until then, and its commits since the last
    /// checkpoint (not synced) are gone from it, so the log is applied again. Readers get
    /// UNAVAILABLE meanwhile. On failure (the disk is still full, say) the database stays
    /// closed and the next batch tries again.
    fn reopen(&self, wal: Wal) -> Result<Wal> {
        let old = self
            .shared
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(wal);
        if let Some(old) = old {
            // Readers hold the database only for the length of one read.
            let weak = Arc::downgrade(&old);
            drop(old);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while weak.strong_count() > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let (db, wal) = open_database(&self.path, wal::Recovery::Refuse)?;
        *self.shared.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
        tracing::info!("the store was reopened after a write error and writes again");
        Ok(wal)
    }
}

async fn write_loop(writer: Writer, wal: Wal, mut queue: Queue) {
    // None while the database is closed after a failure (until it is reopened).
    let mut wal = Some(wal);
    while let Some(batches) = queue.next_group().await {
        if wal.is_none() || writer.database().is_none() {
            wal = reopen(&writer, wal.take());
        }
        let committed = match (wal.as_mut(), writer.database()) {
            (Some(log), Some(db)) => commit_group(&db, log, &batches),
            _ => Err("the store cannot write (it is being reopened after a write error)".into()),
        };
        let result = match committed {
            Ok(reopen_now) => {
                if reopen_now {
                    // The frames are durable in the log; redb refuses everything after an
                    // I/O error, so open it again (applying the log) before the next.
                    wal = reopen(&writer, wal.take());
                }
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "store commit failed");
                wal = reopen(&writer, wal.take());
                Err(error)
            }
        };
        queue.finish(batches, &result);
    }
    if let (Some(mut log), Some(db)) = (wal, writer.database())
        && let Err(error) = checkpoint(&db, &mut log)
    {
        tracing::error!(%error, "the store's last checkpoint failed; the log is applied at the next start");
    }
}

/// Opens the database again (with its log) after a failure; None (logged) if that fails
/// too, and the next batch tries again.
fn reopen(writer: &Writer, wal: Option<Wal>) -> Option<Wal> {
    let reopened = match wal {
        Some(wal) => writer.reopen(wal),
        None => open_database(&writer.path, wal::Recovery::Refuse).map(|(db, wal)| {
            *writer.shared.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
            wal
        }),
    };
    match reopened {
        Ok(wal) => Some(wal),
        Err(error) => {
            tracing::error!(%error, "the store cannot be reopened yet");
            None
        }
    }
}

/// Commits one group: through the log, or for a large one directly; then checkpoints if
/// the log has grown past its bound. Ok means durable; `Ok(true)` asks for the database
/// to be reopened first (a checkpoint failed after the group was already durable in the
/// log). A group with no writes (one that only orders an acknowledgement after what
/// came before it) needs no I/O.
fn commit_group(db: &Database, wal: &mut Wal, batches: &[Batch]) -> Result<bool, String> {
    let frames = encode_frames(batches, wal);
    if frames.is_empty() {
        return Ok(false);
    }
    let bytes: usize = frames.iter().map(Vec::len).sum();
    if bytes >= wal::DIRECT_BYTES {
        commit_directly(db, wal, &frames).map_err(|e| e.to_string())?;
        return Ok(false);
    }
    commit_frames(db, wal, &frames).map_err(|e| e.to_string())?;
    if wal.len() >= wal::CHECKPOINT_BYTES
        && let Err(error) = checkpoint(db, wal)
    {
        tracing::error!(%error, "a checkpoint failed; the log keeps the writes and is applied again");
        return Ok(true);
    }
    Ok(false)
}

/// Makes frames durable in the log (one sync), then applies them to the database in one
/// commit without a sync.
fn commit_frames(db: &Database, wal: &mut Wal, frames: &[Vec<u8>]) -> Result<()> {
    let before = wal.len();
    wal.append(frames)
        .map_err(|e| Error::io("appending to the write-ahead log", e))?;
    let applied = (|| -> Result<()> {
        let mut tx = db.begin_write()?;
        // Durable already, in the log: the sync comes with the next checkpoint.
        tx.set_durability(Durability::None)?;
        apply_frames(&tx, frames)?;
        tx.commit()?;
        Ok(())
    })();
    if applied.is_err() {
        // The waiters are told it failed: take it out of the log too, so a later start
        // does not apply what nobody was told is stored.
        if let Err(error) = wal.truncate(before) {
            tracing::error!(%error, "cannot take a failed group out of the write-ahead log; it may be applied at the next start");
        }
    }
    applied
}

/// Applies frames to the database in a synced commit, which makes everything applied
/// before it durable too, and empties the log. For a large group: past
/// [`wal::DIRECT_BYTES`], writing the bytes twice (log, then database) costs more than the
/// scattered pages' sync saves (B5's logs, docs/PERFORMANCE.md); and for the log itself
/// at start-up.
fn commit_directly(db: &Database, wal: &mut Wal, frames: &[Vec<u8>]) -> Result<()> {
    let tx = db.begin_write()?;
    apply_frames(&tx, frames)?;
    record_applied(&tx, wal)?;
    tx.commit()?;
    empty_log(wal);
    Ok(())
}

/// Records in a synced commit that every frame made so far is in the database, so none
/// of them is applied again at start-up (see `crate::wal`).
fn record_applied(tx: &redb::WriteTransaction, wal: &Wal) -> Result<()> {
    tx.open_table(META)?
        .insert("wal_applied", &wal.last_sequence().to_le_bytes()[..])?;
    Ok(())
}

/// Empties the log after a synced commit covered it. If that fails, the frames stay but
/// are never applied again (the commit recorded them as applied): logged, not fatal.
fn empty_log(wal: &mut Wal) {
    if !wal.is_empty()
        && let Err(error) = wal.clear()
    {
        tracing::warn!(%error, "cannot empty the write-ahead log after a checkpoint");
    }
}

/// Makes everything applied so far durable in the database (one synced commit) and
/// empties the log.
fn checkpoint(db: &Database, wal: &mut Wal) -> Result<()> {
    if wal.is_empty() {
        return Ok(());
    }
    let tx = db.begin_write()?;
    record_applied(&tx, wal)?;
    tx.commit()?;
    empty_log(wal);
    Ok(())
}

/// Log frames holding every write of `batches`, in order: values encoded once, then both
/// logged and put into redb as they are. A new frame starts once one passes
/// [`wal::FRAME_TARGET`], so no frame outgrows its 32-bit length (a batch is far smaller).
fn encode_frames(batches: &[Batch], wal: &mut Wal) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut frame = FrameBuilder::default();
    for batch in batches {
        for write in &batch.writes {
            tables::add_row(&mut frame, write);
        }
        if frame.len() >= wal::FRAME_TARGET {
            frames.push(std::mem::take(&mut frame).finish(wal.next_sequence()));
        }
    }
    if !frame.is_empty() {
        frames.push(frame.finish(wal.next_sequence()));
    }
    frames
}

/// Puts the rows of `frames` into their tables, in order.
fn apply_frames(tx: &redb::WriteTransaction, frames: &[Vec<u8>]) -> Result<()> {
    for frame in frames {
        tables::apply_rows(tx, &wal::rows(frame)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use shoal::proto::{Job, JobState, job_event};

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
        // Names keep the first one written, compiled-module records the last, in the log's
        // replay as when the writes were first applied.
        for (name, artifact) in [("first.csv", "art1"), ("second.csv", "art2")] {
            let writes = vec![
                Write::Name {
                    cid: "b0".into(),
                    name: name.into(),
                },
                Write::CompiledModule {
                    program: "prog".into(),
                    engine: "eng".into(),
                    artifact: artifact.into(),
                },
            ];
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
            recovered.block("b19").await.expect("block").as_deref(),
            Some(&[19u8; 1000][..])
        );
        let name = recovered.name("b0").await.expect("name");
        assert_eq!(name.as_deref(), Some("first.csv"));
        let module = recovered
            .compiled_module("prog", "eng")
            .await
            .expect("module");
        assert_eq!(module.as_deref(), Some("art2"));
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

    /// On a real full disk a commit fails (its waiter is told, nothing of it is applied);
    /// every later write is refused until a probe commits, and once there is room again
    /// the same store commits again without a restart; the failed write is not resurrected
    /// by a later start-up.
    #[tokio::test]
    async fn a_full_disk_fails_commits_until_there_is_room_again() {
        let disk = shoal_harness::small_disk::SmallDisk::mount("4m");
        let path = disk.path().join("state.redb");
        let (store, _) = Store::open(&path).expect("open");
        commit(&store, job("before")).await;
        let filler = disk.fill_leaving(0);
        let big = |id: &str| {
            vec![Write::Job(Job {
                id: id.into(),
                status_message: "x".repeat(if id.ends_with("d") { 600_000 } else { 200_000 }),
                ..Default::default()
            })]
        };
        let mut failed = 0;
        // Through the log, and (past DIRECT_BYTES) straight into the database.
        for i in 0..6 {
            let id = format!("lost{i}{}", if i % 2 == 0 { "" } else { "d" });
            let result = store.queue(big(&id)).await.expect("queue").wait().await;
            if let Err(error) = result {
                assert!(matches!(error, Error::StoreUnavailable(_)), "{error}");
                failed += 1;
            }
        }
        assert!(failed > 0, "no commit failed on a full disk");
        std::fs::remove_file(&filler).expect("free the disk");
        // Until a probe commits, nothing else is taken: the orchestrator reloads its
        // state first (see `store_watchdog`).
        let refused = store
            .queue(job("too-early"))
            .await
            .expect("queue")
            .wait()
            .await;
        assert!(
            matches!(refused, Err(Error::StoreUnavailable(_))),
            "{refused:?}"
        );
        commit(&store, vec![Write::Probe]).await;
        commit(&store, job("after")).await;
        commit(&store, big("big-after")).await;
        commit(&store, big("big-afterd")).await;
        store.close().await;
        let (_, snapshot) = Store::open(&path).expect("reopen");
        let mut ids: Vec<_> = snapshot.jobs.iter().map(|j| j.id.as_str()).collect();
        ids.sort();
        assert!(!ids.contains(&"too-early"), "{ids:?}");
        assert!(
            ids.contains(&"before")
                && ids.contains(&"after")
                && ids.contains(&"big-after")
                && ids.contains(&"big-afterd"),
            "{ids:?}"
        );
        assert!(
            ids.iter().filter(|id| id.starts_with("lost")).count() <= 6 - failed,
            "{ids:?}"
        );
    }

    /// A crash between a direct commit and the emptying of the log leaves frames older
    /// than the commit in the log; start-up must not apply them over it (a completion
    /// would be reverted to the running state the older frame holds).
    #[tokio::test]
    async fn frames_older_than_a_synced_commit_are_not_applied_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let (store, _) = Store::open(&path).expect("open");
        let state = |message: &str| {
            Write::Job(Job {
                id: "j".into(),
                status_message: message.into(),
                ..Default::default()
            })
        };
        commit(&store, vec![state("running")]).await;
        let old_log = std::fs::read(path.with_extension("wal")).expect("read the log");
        let big = Write::Block {
            cid: "big".into(),
            data: bytes::Bytes::from(vec![7; wal::DIRECT_BYTES]),
        };
        commit(&store, vec![state("completed"), big]).await;
        store.close().await;
        // The database after the direct commit, beside the log from before it.
        let crashed = dir.path().join("crashed");
        std::fs::create_dir(&crashed).expect("mkdir");
        std::fs::copy(&path, crashed.join("state.redb")).expect("copy");
        std::fs::write(crashed.join("state.wal"), &old_log).expect("write");
        let (_, snapshot) = Store::open(&crashed.join("state.redb")).expect("open");
        assert_eq!(snapshot.jobs[0].status_message, "completed");
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
            recovered
                .block("big")
                .await
                .expect("block")
                .map(|b| b.len()),
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
