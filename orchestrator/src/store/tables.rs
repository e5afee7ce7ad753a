//! How each record is laid out in the embedded store's redb tables: the tables, a record's
//! row in a log frame (encoded once, then both logged and put into redb as it is), the rule
//! that applies a row to its table (the same when a commit applies it and when the log is
//! replayed at start-up), and the snapshot read at start-up.

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use shoal::proto::{Execution, Job, JobEvent, Node};

use super::wal::{self, FrameBuilder, Table};
use crate::error::{Error, Result};
use crate::records::{LogEnds, ShardListing, Snapshot, Write};

pub(super) const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
pub(super) const EXECUTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("executions");
pub(super) const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
pub(super) const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// Content-store blocks small enough to share a commit with the job records (see
/// `crate::content`), keyed by CID.
pub(super) const BLOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("blocks");
/// Facts about the store itself: `wal_id` (u64 LE), the id of the write-ahead log this
/// database goes with (so a missing or foreign log is noticed); `probe`, written to find
/// out whether the store writes again after a failure.
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The file name each CID was stored with, where one is known (`Write::Name`).
pub(super) const NAMES: TableDefinition<&str, &str> = TableDefinition::new("names");
/// The artifact CID of each compiled module executors share, keyed `ENGINE/PROGRAM`
/// (`Write::CompiledModule`).
pub(super) const MODULES: TableDefinition<&str, &str> = TableDefinition::new("modules");
/// The entries each sharded job was listed with at submit (`Write::Shards`), by job id.
pub(super) const SHARDS: TableDefinition<&str, &[u8]> = TableDefinition::new("shards");
/// Bytes of a probe write: more than a page, so it needs room the disk must really have
/// (a write into the unused end of a file's last page succeeds on a full disk).
pub(super) const PROBE_BYTES: usize = 64 << 10;

/// Creates every table, so that readers never see one missing.
pub(super) fn create(tx: &redb::WriteTransaction) -> Result<()> {
    tx.open_table(JOBS)?;
    tx.open_table(EXECUTIONS)?;
    tx.open_table(EVENTS)?;
    tx.open_table(NODES)?;
    tx.open_table(BLOCKS)?;
    tx.open_table(NAMES)?;
    tx.open_table(MODULES)?;
    tx.open_table(SHARDS)?;
    tx.open_table(META)?;
    Ok(())
}

/// Adds `write`'s row to `frame`.
pub(super) fn add_row(frame: &mut FrameBuilder, write: &Write) {
    match write {
        Write::Job(job) => frame.row(Table::Jobs, &job.id, 0, |b| job.encode_raw(b)),
        Write::Execution(execution) => frame.row(Table::Executions, &execution.id, 0, |b| {
            execution.encode_raw(b)
        }),
        Write::Event { job_id, event } => frame.row(Table::Events, job_id, event.sequence, |b| {
            event.encode_raw(b)
        }),
        Write::Node(node) => frame.row(Table::Nodes, &node.id, 0, |b| node.encode_raw(b)),
        Write::Block { cid, data } => {
            frame.row(Table::Blocks, cid, 0, |b| b.extend_from_slice(data))
        }
        Write::Name { cid, name } => frame.row(Table::Names, cid, 0, |b| {
            b.extend_from_slice(name.as_bytes())
        }),
        Write::CompiledModule {
            program,
            engine,
            artifact,
        } => frame.row(Table::Modules, &module_key(program, engine), 0, |b| {
            b.extend_from_slice(artifact.as_bytes())
        }),
        Write::Shards { job_id, listing } => {
            frame.row(Table::Shards, job_id, 0, |b| listing.encode_raw(b))
        }
        Write::Probe => frame.row(Table::Meta, "probe", 0, |b| {
            b.resize(b.len() + PROBE_BYTES, 0)
        }),
    }
}

/// Everything in the store, as the orchestrator restores it: jobs, executions, nodes, each
/// job's last event number, and where the logs of executions still going end.
pub(super) fn load(db: &Database) -> Result<Snapshot> {
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
    // Only executions still going can get chunks; the events of their jobs are read.
    let mut log_ends = LogEnds::of(&snapshot.executions);
    let jobs: Vec<String> = log_ends.jobs().map(str::to_owned).collect();
    for job_id in &jobs {
        for entry in events.range((job_id.as_str(), 0)..=(job_id.as_str(), u64::MAX))? {
            log_ends.read(job_id, JobEvent::decode(entry?.1.value())?);
        }
    }
    snapshot.log_ends = log_ends.finish();
    // Only jobs still going schedule partitions over their listing.
    let shards = tx.open_table(SHARDS)?;
    for job in snapshot.jobs.iter().filter(|j| !j.state().is_terminal()) {
        if let Some(listing) = shards.get(job.id.as_str())? {
            let listing = ShardListing::decode(listing.value())?;
            snapshot.shards.push((job.id.clone(), listing));
        }
    }
    Ok(snapshot)
}

/// A row's value as text (a name, a CID).
pub(super) fn text<'a>(row: &wal::Row<'a>) -> Result<&'a str> {
    std::str::from_utf8(row.value)
        .map_err(|_| Error::Store(format!("the value of {} is not UTF-8", row.key)))
}

/// The `MODULES` key of a program's compiled module for an engine.
pub(super) fn module_key(program: &str, engine: &str) -> String {
    format!("{engine}/{program}")
}

/// Puts `rows` into their tables.
pub(super) fn apply_rows(tx: &redb::WriteTransaction, rows: &[wal::Row<'_>]) -> Result<()> {
    let mut jobs = tx.open_table(JOBS)?;
    let mut executions = tx.open_table(EXECUTIONS)?;
    let mut events = tx.open_table(EVENTS)?;
    let mut nodes = tx.open_table(NODES)?;
    let mut blocks = tx.open_table(BLOCKS)?;
    let mut meta = tx.open_table(META)?;
    let mut names = tx.open_table(NAMES)?;
    let mut modules = tx.open_table(MODULES)?;
    let mut shards = tx.open_table(SHARDS)?;
    for row in rows {
        match row.table {
            Table::Jobs => drop(jobs.insert(row.key, row.value)?),
            Table::Executions => drop(executions.insert(row.key, row.value)?),
            Table::Events => drop(events.insert((row.key, row.sequence), row.value)?),
            Table::Nodes => drop(nodes.insert(row.key, row.value)?),
            Table::Blocks => drop(blocks.insert(row.key, row.value)?),
            Table::Meta => drop(meta.insert(row.key, row.value)?),
            // The first name stays (replaying the log applies the same rule).
            Table::Names => {
                if names.get(row.key)?.is_none() {
                    drop(names.insert(row.key, text(row)?)?);
                }
            }
            Table::Modules => drop(modules.insert(row.key, text(row)?)?),
            Table::Shards => drop(shards.insert(row.key, row.value)?),
        }
    }
    Ok(())
}
