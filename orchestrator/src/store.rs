//! The durable store: jobs, executions, job events (state changes and log chunks), nodes and
//! the content store's small blocks, in one redb database in the data directory.
//!
//! All writes go through one writer thread that commits whatever has queued up in a single
//! fsynced transaction (group commit), so concurrent submitters share fsyncs. A caller gets
//! a [`Commit`] to await: once it resolves, the writes are on disk. Writes are applied in the
//! order they were queued.

use std::path::Path;
use std::sync::Arc;

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use shoal::proto::{Execution, Job, JobEvent, Node};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const EXECUTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("executions");
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// Content-store blocks small enough to share a commit with the job records (see
/// `crate::blocks`), keyed by CID.
const BLOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("blocks");

/// Batches waiting for the writer. Bounded: when the disk falls behind, submitters wait.
const WRITE_QUEUE: usize = 1024;

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
            Ok(Err(message)) => Err(Error::Store(message)),
            Err(_) => Err(Error::ShuttingDown),
        }
    }
}

impl Store {
    /// Opens (or creates) the database at `path` and starts the writer thread, which ends
    /// when every `Store` handle is dropped.
    pub fn open(path: &Path) -> Result<(Store, Snapshot)> {
        let db = Arc::new(Database::create(path)?);
        {
            // Create the tables so that readers never see them missing.
            let tx = db.begin_write()?;
            tx.open_table(JOBS)?;
            tx.open_table(EXECUTIONS)?;
            tx.open_table(EVENTS)?;
            tx.open_table(NODES)?;
            tx.open_table(BLOCKS)?;
            tx.commit()?;
        }
        let snapshot = load(&db)?;
        let (writer, queue) = mpsc::channel(WRITE_QUEUE);
        let writer_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("shoal-store-writer".into())
            .spawn(move || write_loop(&writer_db, queue))
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
        let (done, receiver) = oneshot::channel();
        self.writer
            .send(Batch { writes, done })
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

fn write_loop(db: &Arc<Database>, mut queue: mpsc::Receiver<Batch>) {
    while let Some(first) = queue.blocking_recv() {
        // Group commit: everything that queued up while the last fsync ran goes in this one.
        let mut batches = vec![first];
        while batches.len() < WRITE_QUEUE {
            match queue.try_recv() {
                Ok(batch) => batches.push(batch),
                Err(_) => break,
            }
        }
        let result = write_batches(db, &batches).map_err(|e| e.to_string());
        if let Err(error) = &result {
            tracing::error!(%error, "store commit failed");
        }
        for batch in batches {
            let _receiver_gone = batch.done.send(result.clone());
        }
    }
}

fn write_batches(db: &Database, batches: &[Batch]) -> Result<()> {
    let tx = db.begin_write()?;
    {
        let mut jobs = tx.open_table(JOBS)?;
        let mut executions = tx.open_table(EXECUTIONS)?;
        let mut events = tx.open_table(EVENTS)?;
        let mut nodes = tx.open_table(NODES)?;
        let mut blocks = tx.open_table(BLOCKS)?;
        // One encode buffer for the whole batch: with a thousand records per commit, an
        // allocation per record is a measurable share of the writer's time (B4).
        let mut buf = Vec::with_capacity(4096);
        for write in batches.iter().flat_map(|b| &b.writes) {
            buf.clear();
            match write {
                Write::Job(job) => {
                    job.encode_raw(&mut buf);
                    jobs.insert(job.id.as_str(), buf.as_slice())?;
                }
                Write::Execution(execution) => {
                    execution.encode_raw(&mut buf);
                    executions.insert(execution.id.as_str(), buf.as_slice())?;
                }
                Write::Event { job_id, event } => {
                    event.encode_raw(&mut buf);
                    events.insert((job_id.as_str(), event.sequence), buf.as_slice())?;
                }
                Write::Node(node) => {
                    node.encode_raw(&mut buf);
                    nodes.insert(node.id.as_str(), buf.as_slice())?;
                }
                Write::Block { cid, data } => {
                    blocks.insert(cid.as_str(), data.as_ref())?;
                }
            }
        }
    }
    // Durability::Immediate (the default): commit returns after fsync.
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal::proto::{JobState, job_event};

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
            store
                .queue(writes)
                .await
                .expect("queue")
                .wait()
                .await
                .expect("commit");
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
}
