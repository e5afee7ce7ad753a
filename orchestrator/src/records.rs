//! The records the orchestrator keeps durable, as the state machine produces them
//! ([`Write`]) and reads them back at start-up ([`Snapshot`]). The state machine knows
//! these and nothing of the store that keeps them.

use std::collections::{HashMap, HashSet};

use shoal::proto::{Execution, Job, JobEvent, Node};

/// One record to write. (Variants differ in size, but writes live only briefly in a queue,
/// so boxing would cost an allocation for nothing.)
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Write {
    Job(Job),
    Execution(Execution),
    Event {
        job_id: String,
        event: JobEvent,
    },
    Node(Node),
    Block {
        cid: String,
        data: bytes::Bytes,
    },
    /// The file name stored data came with (a copied URL's, an S3 key's, an uploaded
    /// file's), for clients to mount it under. The first name recorded for a CID stays:
    /// a later copy of the same bytes under another name does not move the mounts of jobs
    /// that rely on the first.
    Name {
        cid: String,
        name: String,
    },
    /// The artifact (a stored file's CID) an executor compiled for a program and engine;
    /// a later record for the same pair replaces it.
    CompiledModule {
        program: String,
        engine: String,
        artifact: String,
    },
    /// The entries a sharded job was listed with at submit, once, beside its job record.
    Shards {
        job_id: String,
        listing: ShardListing,
    },
    /// A write of no meaning (in the store's own table), to find out whether the store
    /// writes again after a failure.
    Probe,
}

/// Everything in the store, read at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub jobs: Vec<Job>,
    pub executions: Vec<Execution>,
    pub nodes: Vec<Node>,
    /// The last event sequence number of each job.
    pub last_sequences: Vec<(String, u64)>,
    /// For executions not yet ended: where each of their log streams ends in the stored
    /// events, so a chunk an executor resends after a restart is not stored twice.
    pub log_ends: Vec<((String, i32), u64)>,
    /// The shard listings of jobs not yet ended.
    pub shards: Vec<(String, ShardListing)>,
}

/// Where the log streams of executions not yet ended end, read from their jobs' events
/// at start-up (only they can still get chunks): what [`Snapshot::log_ends`] holds.
pub struct LogEnds {
    /// Executions not yet ended, by job.
    going: HashMap<String, HashSet<String>>,
    ends: HashMap<(String, i32), u64>,
}

impl LogEnds {
    /// For the executions among `executions` that have not ended.
    pub fn of(executions: &[Execution]) -> Self {
        let mut going: HashMap<String, HashSet<String>> = HashMap::new();
        for execution in executions.iter().filter(|e| !e.state().is_terminal()) {
            going
                .entry(execution.job_id.clone())
                .or_default()
                .insert(execution.id.clone());
        }
        LogEnds {
            going,
            ends: HashMap::new(),
        }
    }

    /// The jobs whose events are to be read.
    pub fn jobs(&self) -> impl Iterator<Item = &str> {
        self.going.keys().map(String::as_str)
    }

    /// Takes one event of `job_id`'s: a log chunk of a going execution moves its end.
    pub fn read(&mut self, job_id: &str, event: JobEvent) {
        let Some(shoal::proto::job_event::Event::Log(chunk)) = event.event else {
            return;
        };
        if !self
            .going
            .get(job_id)
            .is_some_and(|going| going.contains(&chunk.execution_id))
        {
            return;
        }
        let end = chunk.offset.saturating_add(chunk.data.len() as u64);
        let slot = self
            .ends
            .entry((chunk.execution_id, chunk.stream))
            .or_default();
        *slot = (*slot).max(end);
    }

    pub fn finish(self) -> Vec<((String, i32), u64)> {
        self.ends.into_iter().collect()
    }
}

/// A sharded job's entries as listed when it was submitted, in order: partition i takes
/// entries `i * shard_size ..`. Kept so the partitions run over the same entries after a
/// restart, whatever the source lists by then.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ShardListing {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<ShardEntry>,
}

/// One entry of a [`ShardListing`]: mounted at the sharded input's `target/name`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ShardEntry {
    /// A relative path (an S3 object's below its prefix may have several segments).
    #[prost(string, tag = "1")]
    pub name: String,
    /// A source as an input takes it: a CID, a URL or an s3:// object.
    #[prost(string, tag = "2")]
    pub source: String,
}
