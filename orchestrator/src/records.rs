//! The records the orchestrator keeps durable, as the state machine produces them
//! ([`Write`]) and reads them back at start-up ([`Snapshot`]). The state machine knows
//! these and nothing of the store that keeps them.

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
}
