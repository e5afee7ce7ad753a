//! The PostgreSQL store (`--store postgres://...`): the same records as the embedded store,
//! in tables of one database that several orchestrators can share (one leads; see
//! [`leader`]).
//!
//! All writes go through one writer task on a connection of its own, which commits what
//! has queued up as one transaction (group commit, as the embedded store does; see
//! `super::group`): the transaction first reads the leadership row's epoch `FOR SHARE`
//! and is rolled back unless it is this leader's, then upserts each table's rows with one
//! statement (`unnest` over arrays), the statements pipelined on the connection. A row
//! written twice in one group keeps its last value (a name, its first). After a failed
//! commit the writer connects again for the next group; until a probe commits, the
//! group queue refuses other writes, and the orchestrator reloads its state from
//! [`Backend::snapshot`], as after a failed disk write.
//!
//! Readers (a job's events, small blocks, names, compiled modules) use a pool.

pub mod connect;
pub mod leader;
mod schema;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use prost::Message;
use shoal::proto::{Execution, Job, JobEvent, Node};
use tokio::sync::mpsc;
use tokio_postgres::{Client, IsolationLevel, Statement};
use tokio_util::sync::CancellationToken;

use super::group::{self, Batch, Queue};
use super::{Backend, Commit};
use crate::error::{Error, Result};
use crate::records::{LogEnds, ShardListing, Snapshot, Write};
use connect::{Database, describe, pool_error};
pub use leader::{Leader, Leadership};

/// Reader connections at most.
const READERS: usize = 8;

/// The PostgreSQL store of one leadership term.
pub struct Postgres {
    readers: deadpool_postgres::Pool,
    writer: mpsc::Sender<Batch>,
    writer_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Postgres {
    /// Brings the schema up to date (see `schema`).
    pub async fn migrate(database: &Database) -> Result<()> {
        let mut client = database.connect().await?;
        schema::migrate(&mut client).await
    }

    /// The store for the term `leadership`, and what it holds. Its writes are refused once
    /// the term has ended (lost, or a later one begun).
    pub async fn open(database: &Database, leadership: &Leadership) -> Result<(Self, Snapshot)> {
        let readers = database.pool(READERS)?;
        let lost = leadership.lost();
        let snapshot = async {
            let mut client = readers.get().await.map_err(pool_error)?;
            load(&mut client).await
        };
        // The term can end while it loads (the database stalls): then it stands by again.
        let snapshot = tokio::select! {
            loaded = snapshot => loaded?,
            _ = lost.cancelled() => {
                return Err(Error::Deposed("the leadership term ended while loading".into()));
            }
        };
        let (writer, queue) = group::channel();
        let writer_task = tokio::spawn(write_loop(
            database.clone(),
            leadership.epoch,
            leadership.lost(),
            queue,
        ));
        let store = Postgres {
            readers,
            writer,
            writer_task: std::sync::Mutex::new(Some(writer_task)),
        };
        Ok((store, snapshot))
    }

    async fn reader(&self) -> Result<deadpool_postgres::Object> {
        self.readers.get().await.map_err(pool_error)
    }
}

fn read_failed(doing: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| Error::StoreUnavailable(format!("{doing}: {}", describe(&e)))
}

impl Backend for Postgres {
    fn queue(&self, writes: Vec<Write>, deferrable: bool) -> BoxFuture<'_, Result<Commit>> {
        Box::pin(group::send(&self.writer, writes, deferrable))
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<Snapshot>> {
        Box::pin(async move { load(&mut *self.reader().await?).await })
    }

    fn events<'a>(
        &'a self,
        job_id: &'a str,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<JobEvent>>> {
        Box::pin(async move {
            let client = self.reader().await?;
            let statement = client
                .prepare_cached(
                    "SELECT record FROM shoal_events WHERE job_id = $1 AND sequence >= $2 \
                     ORDER BY sequence LIMIT $3",
                )
                .await
                .map_err(read_failed("reading events"))?;
            let from = i64::try_from(from).unwrap_or(i64::MAX);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = client
                .query(&statement, &[&job_id, &from, &limit])
                .await
                .map_err(read_failed("reading events"))?;
            rows.iter()
                .map(|row| Ok(JobEvent::decode(row.get::<_, &[u8]>(0))?))
                .collect()
        })
    }

    /// Every block: the data directory is one replica's, the database everyone's.
    fn largest_block(&self) -> usize {
        usize::MAX
    }

    fn block<'a>(&'a self, cid: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(async move {
            let row = self
                .lookup("SELECT data FROM shoal_blocks WHERE cid = $1", cid)
                .await?;
            Ok(row.map(|row| Bytes::copy_from_slice(row.get::<_, &[u8]>(0))))
        })
    }

    fn name<'a>(&'a self, cid: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let row = self
                .lookup("SELECT name FROM shoal_names WHERE cid = $1", cid)
                .await?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    fn compiled_module<'a>(
        &'a self,
        program: &'a str,
        engine: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            let key = super::tables::module_key(program, engine);
            let row = self
                .lookup("SELECT artifact FROM shoal_modules WHERE key = $1", &key)
                .await?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    /// The writer ends once the last handle (and with it the queue's sender) is gone,
    /// after committing what was queued.
    fn close(self: Arc<Self>) -> BoxFuture<'static, ()> {
        let task = self
            .writer_task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        drop(self);
        Box::pin(async move {
            if let Some(task) = task {
                let _ = task.await;
            }
        })
    }
}

impl Postgres {
    /// The row `sql` (one text parameter) finds, if any.
    async fn lookup(&self, sql: &str, key: &str) -> Result<Option<tokio_postgres::Row>> {
        let client = self.reader().await?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(read_failed("reading the store"))?;
        client
            .query_opt(&statement, &[&key])
            .await
            .map_err(read_failed("reading the store"))
    }
}

/// Everything in the store, read in one repeatable-read transaction (a consistent view).
async fn load(client: &mut Client) -> Result<Snapshot> {
    let fail = read_failed("reading the store's state");
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(&fail)?;
    let records = |table: &'static str| format!("SELECT record FROM {table}");
    let mut snapshot = Snapshot::default();
    for row in tx.query(&records("shoal_jobs"), &[]).await.map_err(&fail)? {
        snapshot.jobs.push(Job::decode(row.get::<_, &[u8]>(0))?);
    }
    for row in tx
        .query(&records("shoal_executions"), &[])
        .await
        .map_err(&fail)?
    {
        snapshot
            .executions
            .push(Execution::decode(row.get::<_, &[u8]>(0))?);
    }
    for row in tx
        .query(&records("shoal_nodes"), &[])
        .await
        .map_err(&fail)?
    {
        snapshot.nodes.push(Node::decode(row.get::<_, &[u8]>(0))?);
    }
    let mut last: HashMap<String, i64> = HashMap::new();
    for row in tx
        .query(
            "SELECT job_id, max(sequence) FROM shoal_events GROUP BY job_id",
            &[],
        )
        .await
        .map_err(&fail)?
    {
        last.insert(row.get(0), row.get(1));
    }
    snapshot.last_sequences = snapshot
        .jobs
        .iter()
        .map(|job| {
            let sequence = last.get(&job.id).copied().unwrap_or(0);
            (job.id.clone(), u64::try_from(sequence).unwrap_or(0))
        })
        .collect();
    // Only executions still going can get chunks; the events of their jobs are read.
    let mut log_ends = LogEnds::of(&snapshot.executions);
    let going: Vec<&str> = log_ends.jobs().collect();
    let rows = tx
        .query(
            "SELECT job_id, record FROM shoal_events WHERE job_id = ANY($1)",
            &[&going],
        )
        .await
        .map_err(&fail)?;
    for row in rows {
        log_ends.read(row.get(0), JobEvent::decode(row.get::<_, &[u8]>(1))?);
    }
    snapshot.log_ends = log_ends.finish();
    // Only jobs still going schedule partitions over their listing.
    let unfinished: Vec<&str> = snapshot
        .jobs
        .iter()
        .filter(|j| !j.state().is_terminal())
        .map(|j| j.id.as_str())
        .collect();
    let rows = tx
        .query(
            "SELECT job_id, listing FROM shoal_shards WHERE job_id = ANY($1)",
            &[&unfinished],
        )
        .await
        .map_err(&fail)?;
    for row in rows {
        let listing = ShardListing::decode(row.get::<_, &[u8]>(1))?;
        snapshot.shards.push((row.get(0), listing));
    }
    tx.commit().await.map_err(&fail)?;
    Ok(snapshot)
}

/// The writer: one connection, one transaction per group, reconnecting after a failure.
async fn write_loop(database: Database, epoch: i64, lost: CancellationToken, mut queue: Queue) {
    let mut connection: Option<(Client, Statements)> = None;
    while let Some(batches) = queue.next_group().await {
        let result = if lost.is_cancelled() {
            Err(Error::Deposed(
                "this orchestrator's leadership term has ended".into(),
            ))
        } else {
            // A commit on a connection that went silent (a partition) would wait for TCP
            // to give up; once the term is lost there is nothing to wait for.
            tokio::select! {
                // A commit that finished counts, even if the term ended meanwhile.
                biased;
                committed = commit(&database, &mut connection, epoch, &batches) => committed,
                _ = lost.cancelled() => {
                    connection = None;
                    Err(Error::Deposed("the leadership term ended during the commit".into()))
                }
            }
        };
        let result = result.map_err(|error| {
            tracing::error!(%error, "store commit failed");
            if matches!(error, Error::Deposed(_)) {
                // Another term has begun: this one is over, whatever its lock connection says.
                lost.cancel();
            }
            if connection.as_ref().is_some_and(|(c, _)| c.is_closed()) {
                connection = None;
            }
            error.to_string()
        });
        queue.finish(batches, &result);
    }
}

/// Commits one group, connecting first if there is no connection.
async fn commit(
    database: &Database,
    connection: &mut Option<(Client, Statements)>,
    epoch: i64,
    batches: &[Batch],
) -> Result<()> {
    let rows = Rows::of(batches);
    if rows.is_empty() {
        // A group that only orders an acknowledgement after what came before it.
        return Ok(());
    }
    // A connection the server closed meanwhile (a restart, a timeout) is replaced before
    // it fails a group.
    if connection
        .as_ref()
        .is_some_and(|(client, _)| client.is_closed())
    {
        *connection = None;
    }
    if connection.is_none() {
        let client = database.connect().await?;
        let statements = Statements::prepare(&client)
            .await
            .map_err(|e| Error::StoreUnavailable(database.failed("preparing writes on", &e)))?;
        *connection = Some((client, statements));
    }
    let Some((client, statements)) = connection.as_mut() else {
        unreachable!("connected above");
    };
    let failed =
        |e: tokio_postgres::Error| Error::StoreUnavailable(database.failed("writing to", &e));
    let tx = client.transaction().await.map_err(failed)?;
    // The epoch check and the writes are sent together (pipelined); the writes are rolled
    // back with the transaction if the check fails. `FOR SHARE` makes a new term's
    // increment wait for this transaction, so a write either commits before the new term
    // begins or sees it and is refused.
    let check = tx.query_one(&statements.epoch, &[]);
    let writes = rows.execute(&tx, statements);
    let (current, written) = futures::join!(check, writes);
    let current: i64 = current.map_err(failed)?.get(0);
    if current != epoch {
        return Err(Error::Deposed(format!(
            "a later leadership term (epoch {current}) has begun; this one ({epoch}) may not write"
        )));
    }
    written.map_err(failed)?;
    tx.commit().await.map_err(failed)
}

/// The writer's statements, prepared once per connection.
struct Statements {
    epoch: Statement,
    jobs: Statement,
    executions: Statement,
    events: Statement,
    nodes: Statement,
    blocks: Statement,
    names: Statement,
    modules: Statement,
    shards: Statement,
    probe: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> std::result::Result<Self, tokio_postgres::Error> {
        let upsert = |table: &str, key: &str, value: &str, kind: &str| {
            format!(
                "INSERT INTO {table} ({key}, {value}) SELECT * FROM unnest($1::text[], $2::{kind}[]) \
                 ON CONFLICT ({key}) DO UPDATE SET {value} = excluded.{value}"
            )
        };
        let (jobs, executions, nodes) = (
            upsert("shoal_jobs", "id", "record", "bytea"),
            upsert("shoal_executions", "id", "record", "bytea"),
            upsert("shoal_nodes", "id", "record", "bytea"),
        );
        let (modules, shards) = (
            upsert("shoal_modules", "key", "artifact", "text"),
            upsert("shoal_shards", "job_id", "listing", "bytea"),
        );
        let (epoch, jobs, executions, events, nodes) = futures::try_join!(
            client.prepare("SELECT epoch FROM shoal_leader FOR SHARE"),
            client.prepare(&jobs),
            client.prepare(&executions),
            client.prepare(
                "INSERT INTO shoal_events (job_id, sequence, record) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[]) \
                 ON CONFLICT (job_id, sequence) DO UPDATE SET record = excluded.record"
            ),
            client.prepare(&nodes),
        )?;
        let (blocks, names, modules, shards, probe) = futures::try_join!(
            // The content store writes a block only when the stored one is missing or
            // fails its CID check: a rewrite replaces a damaged row.
            client.prepare(
                "INSERT INTO shoal_blocks (cid, data) SELECT * FROM unnest($1::text[], $2::bytea[]) \
                 ON CONFLICT (cid) DO UPDATE SET data = excluded.data"
            ),
            // The first name recorded for a CID stays.
            client.prepare(
                "INSERT INTO shoal_names (cid, name) SELECT * FROM unnest($1::text[], $2::text[]) \
                 ON CONFLICT (cid) DO NOTHING"
            ),
            client.prepare(&modules),
            client.prepare(&shards),
            client.prepare(
                "INSERT INTO shoal_probe VALUES (true, now()) ON CONFLICT (id) DO UPDATE SET at = now()"
            ),
        )?;
        Ok(Statements {
            epoch,
            jobs,
            executions,
            events,
            nodes,
            blocks,
            names,
            modules,
            shards,
            probe,
        })
    }
}

/// A group's rows, by table, each key once (its last value; a name, its first), in the
/// order first written.
#[derive(Default)]
struct Rows {
    jobs: Table<Vec<u8>>,
    executions: Table<Vec<u8>>,
    events: Table<Vec<u8>>,
    nodes: Table<Vec<u8>>,
    blocks: Table<Bytes>,
    names: Table<String>,
    modules: Table<String>,
    shards: Table<Vec<u8>>,
    probe: bool,
}

/// Rows of one table: keys in first-written order, and their values.
struct Table<V> {
    keys: Vec<String>,
    sequences: Vec<i64>,
    values: Vec<V>,
    index: HashMap<(String, i64), usize>,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            keys: Vec::new(),
            sequences: Vec::new(),
            values: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<V> Table<V> {
    /// Sets `key`'s value (replacing it if `replace`, else keeping the first).
    fn put(&mut self, key: &str, sequence: i64, value: V, replace: bool) {
        match self.index.get(&(key.to_owned(), sequence)) {
            Some(&at) => {
                if replace {
                    self.values[at] = value;
                }
            }
            None => {
                self.index
                    .insert((key.to_owned(), sequence), self.keys.len());
                self.keys.push(key.to_owned());
                self.sequences.push(sequence);
                self.values.push(value);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl Rows {
    fn of(batches: &[Batch]) -> Self {
        let mut rows = Rows::default();
        for write in batches.iter().flat_map(|b| &b.writes) {
            match write {
                Write::Job(job) => rows.jobs.put(&job.id, 0, job.encode_to_vec(), true),
                Write::Execution(execution) => {
                    rows.executions
                        .put(&execution.id, 0, execution.encode_to_vec(), true)
                }
                Write::Event { job_id, event } => {
                    let sequence = i64::try_from(event.sequence).unwrap_or(i64::MAX);
                    rows.events
                        .put(job_id, sequence, event.encode_to_vec(), true)
                }
                Write::Node(node) => rows.nodes.put(&node.id, 0, node.encode_to_vec(), true),
                Write::Block { cid, data } => rows.blocks.put(cid, 0, data.clone(), false),
                Write::Name { cid, name } => rows.names.put(cid, 0, name.clone(), false),
                Write::CompiledModule {
                    program,
                    engine,
                    artifact,
                } => rows.modules.put(
                    &super::tables::module_key(program, engine),
                    0,
                    artifact.clone(),
                    true,
                ),
                Write::Shards { job_id, listing } => {
                    rows.shards.put(job_id, 0, listing.encode_to_vec(), true)
                }
                Write::Probe => rows.probe = true,
            }
        }
        rows
    }

    fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.executions.is_empty()
            && self.events.is_empty()
            && self.nodes.is_empty()
            && self.blocks.is_empty()
            && self.names.is_empty()
            && self.modules.is_empty()
            && self.shards.is_empty()
            && !self.probe
    }

    /// Runs one statement per table with rows, all at once (pipelined).
    async fn execute(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        statements: &Statements,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        use tokio_postgres::types::ToSql;
        let blocks: Vec<&[u8]> = self.blocks.values.iter().map(|b| b.as_ref()).collect();
        let mut calls: Vec<(&Statement, Vec<&(dyn ToSql + Sync)>)> = Vec::new();
        // Keys and values as two arrays, for the tables keyed by one text column.
        let tables: [(&Statement, &Vec<String>, &(dyn ToSql + Sync)); 7] = [
            (&statements.jobs, &self.jobs.keys, &self.jobs.values),
            (
                &statements.executions,
                &self.executions.keys,
                &self.executions.values,
            ),
            (&statements.nodes, &self.nodes.keys, &self.nodes.values),
            (&statements.blocks, &self.blocks.keys, &blocks),
            (&statements.names, &self.names.keys, &self.names.values),
            (
                &statements.modules,
                &self.modules.keys,
                &self.modules.values,
            ),
            (&statements.shards, &self.shards.keys, &self.shards.values),
        ];
        for (statement, keys, values) in tables {
            if !keys.is_empty() {
                calls.push((statement, vec![keys, values]));
            }
        }
        if !self.events.is_empty() {
            let events = &self.events;
            calls.push((
                &statements.events,
                vec![&events.keys, &events.sequences, &events.values],
            ));
        }
        if self.probe {
            calls.push((&statements.probe, Vec::new()));
        }
        let pending = calls
            .iter()
            .map(|(statement, parameters)| tx.execute(*statement, parameters));
        futures::future::try_join_all(pending).await.map(drop)
    }
}
