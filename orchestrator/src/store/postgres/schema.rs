//! The tables the orchestrator keeps in PostgreSQL, created and migrated by the
//! orchestrator itself: each migration runs once, in order, in one transaction with the
//! recorded version, under a transaction-level advisory lock so that replicas starting
//! together do not both run it. An orchestrator refuses a database whose schema is newer
//! than the newest it knows (a newer release wrote it; running older code on it could
//! lose what that release stores).
//!
//! Records are kept as the same protobuf bytes the embedded store keeps, keyed by id: the
//! orchestrator reads them back whole at start-up and never queries inside them.

use tokio_postgres::Client;

use super::connect::describe;
use crate::error::{Error, Result};

/// The advisory lock (a fixed 64-bit key, "shoal" + 1) held while migrating.
const MIGRATION_LOCK: i64 = 0x7368_6f61_6c01;

/// Migrations in order; the schema's version is how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: the records of the embedded store's tables, and the leadership row.
    "CREATE TABLE shoal_jobs (id text PRIMARY KEY, record bytea NOT NULL);
     CREATE TABLE shoal_executions (id text PRIMARY KEY, record bytea NOT NULL);
     CREATE TABLE shoal_events (
         job_id text NOT NULL,
         sequence bigint NOT NULL,
         record bytea NOT NULL,
         PRIMARY KEY (job_id, sequence)
     );
     CREATE TABLE shoal_nodes (id text PRIMARY KEY, record bytea NOT NULL);
     CREATE TABLE shoal_blocks (cid text PRIMARY KEY, data bytea NOT NULL);
     CREATE TABLE shoal_names (cid text PRIMARY KEY, name text NOT NULL);
     CREATE TABLE shoal_modules (key text PRIMARY KEY, artifact text NOT NULL);
     CREATE TABLE shoal_shards (job_id text PRIMARY KEY, listing bytea NOT NULL);
     CREATE TABLE shoal_probe (id boolean PRIMARY KEY, at timestamptz NOT NULL);
     CREATE TABLE shoal_leader (
         id boolean PRIMARY KEY CHECK (id),
         epoch bigint NOT NULL,
         holder text NOT NULL,
         address text NOT NULL,
         since timestamptz NOT NULL
     );
     INSERT INTO shoal_leader VALUES (true, 0, '', '', now());",
];

/// The oldest server version taken (`server_version_num`).
const OLDEST_SERVER: i64 = 140000;

/// The newest schema version this orchestrator knows.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database's schema up to [`VERSION`], or refuses a newer one.
pub async fn migrate(client: &mut Client) -> Result<()> {
    let fail = |doing: &str| {
        let doing = doing.to_owned();
        move |e: tokio_postgres::Error| Error::Store(format!("{doing}: {}", describe(&e)))
    };
    // The leadership's lock connection relies on `idle_session_timeout` (PostgreSQL 14).
    let version: i64 = client
        .query_one("SELECT current_setting('server_version_num')::bigint", &[])
        .await
        .map_err(fail("asking the server's version"))?
        .get(0);
    if version < OLDEST_SERVER {
        return Err(Error::InvalidArgument(format!(
            "the PostgreSQL server is version {}.{}; the orchestrator needs 14 or later",
            version / 10000,
            version % 10000
        )));
    }
    let tx = client
        .transaction()
        .await
        .map_err(fail("starting the migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(fail("taking the migration lock"))?;
    // `IF NOT EXISTS` on an existing table raises a NOTICE, which would be logged.
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning; \
         CREATE TABLE IF NOT EXISTS shoal_schema (version bigint NOT NULL)",
    )
    .await
    .map_err(fail("creating shoal_schema"))?;
    let current: Option<i64> = tx
        .query_opt("SELECT version FROM shoal_schema", &[])
        .await
        .map_err(fail("reading the schema version"))?
        .map(|row| row.get(0));
    let current = current.unwrap_or(0);
    if current > VERSION {
        return Err(Error::Store(format!(
            "the database's schema is version {current}, newer than this orchestrator's \
             ({VERSION}): a newer Shoal wrote it; run that release (or newer)"
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(migration)
            .await
            .map_err(fail(&format!("migration {}", index + 1)))?;
    }
    if current < VERSION {
        tx.execute("DELETE FROM shoal_schema", &[])
            .await
            .map_err(fail("recording the schema version"))?;
        tx.execute("INSERT INTO shoal_schema VALUES ($1)", &[&VERSION])
            .await
            .map_err(fail("recording the schema version"))?;
    }
    tx.commit()
        .await
        .map_err(fail("committing the migration"))?;
    if current < VERSION {
        tracing::info!(from = current, to = VERSION, "migrated the database schema");
    }
    Ok(())
}
