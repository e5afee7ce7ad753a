//! Which of the orchestrators sharing one database leads: the one holding a session-level
//! advisory lock on a connection of its own. Each term starts by incrementing the epoch in
//! `shoal_leader` (with the holder's name and address, which followers tell callers);
//! every write transaction of the leader checks that epoch (`super::write`), so a leader
//! that was deposed without noticing cannot write.
//!
//! The lock connection is also the lease. The leader asks it something every
//! [`CHECK_EVERY`]; an answer that fails or takes longer than [`ANSWER_WITHIN`] ends the
//! term at once ([`Leadership::lost`]). The database, for its part, ends a session silent
//! for [`IDLE_SESSION_TIMEOUT`] (a cut network), which frees the lock for another replica
//! only after the cut-off leader has stopped; a leader killed outright closes its socket
//! and frees the lock at once.

use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::connect::{Database, describe};
use crate::error::{Error, Result};

/// The advisory lock (a fixed 64-bit key, "shoal" + 0) whose holder leads.
const LEADER_LOCK: i64 = 0x7368_6f61_6c00;
/// How often the leader checks its lock connection, and a follower tries the lock.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long the leader waits for an answer on its lock connection before stepping down.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// After this long without a query, the database ends the lock's session (freeing the
/// lock): longer than the leader takes to notice a dead connection
/// (`CHECK_EVERY + ANSWER_WITHIN`).
pub const IDLE_SESSION_TIMEOUT: Duration = Duration::from_secs(4);

/// Who leads, as the leadership row says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub epoch: i64,
    /// The leader's name (`--replica-name`, or host and process id).
    pub holder: String,
    /// The address clients reach it at.
    pub address: String,
}

/// This process's term as leader: held while the lock connection lives.
pub struct Leadership {
    pub epoch: i64,
    lost: CancellationToken,
    /// Dropping the guard (the leadership) ends the watch and closes the lock connection.
    _watch: tokio_util::sync::DropGuard,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Leadership(epoch {})", self.epoch)
    }
}

impl Leadership {
    /// Waits until this process holds the lock (trying every [`CHECK_EVERY`], and telling
    /// `leader` who leads meanwhile), then starts a term: the epoch incremented, `holder`
    /// and `address` recorded. Errors if the database cannot be reached; Ok(None) if
    /// `shutdown` comes first.
    pub async fn acquire(
        database: &Database,
        holder: &str,
        address: &str,
        leader: &watch::Sender<Option<Leader>>,
        shutdown: &CancellationToken,
    ) -> Result<Option<Leadership>> {
        // The first connection's failure is the caller's (wrong settings); later ones
        // (the database restarting while this one waits) are waited out.
        let mut client = lock_connection(database).await?;
        loop {
            let tried = tokio::time::timeout(ANSWER_WITHIN, try_lock(&client, leader, address));
            let broken = match tried.await {
                Ok(Ok(true)) => break,
                Ok(Ok(false)) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(_) => Some(format!("no answer within {ANSWER_WITHIN:?}")),
            }
            .inspect(|why| {
                tracing::warn!(
                    why,
                    "the database connection failed while standing by; connecting again"
                );
                leader.send_replace(None);
            })
            .is_some();
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(CHECK_EVERY) => {}
            }
            if broken || client.is_closed() {
                match lock_connection(database).await {
                    Ok(connected) => client = connected,
                    Err(error) => tracing::warn!(%error, "cannot reach the database yet"),
                }
            }
        }
        let epoch: i64 = client
            .query_one(
                "UPDATE shoal_leader SET epoch = epoch + 1, holder = $1, address = $2, \
                 since = now() RETURNING epoch",
                &[&holder, &address],
            )
            .await
            .map_err(failed("starting a leadership term"))?
            .get(0);
        tracing::info!(epoch, holder, "leading");
        leader.send_replace(Some(Leader {
            epoch,
            holder: holder.to_owned(),
            address: address.to_owned(),
        }));
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        tokio::spawn(watch(client, lost.clone(), stop.clone()));
        Ok(Some(Leadership {
            epoch,
            lost,
            _watch: stop.drop_guard(),
        }))
    }

    /// Cancelled when the term has ended: the lock connection failed or stopped answering.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }
}

fn failed(doing: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| Error::StoreUnavailable(format!("{doing}: {}", describe(&e)))
}

/// A connection for the lock: one the database ends after [`IDLE_SESSION_TIMEOUT`] of
/// silence.
async fn lock_connection(database: &Database) -> Result<Client> {
    let client = database.connect().await?;
    client
        .batch_execute(&format!(
            "SET idle_session_timeout = {}",
            IDLE_SESSION_TIMEOUT.as_millis()
        ))
        .await
        .map_err(failed("setting up the leadership connection"))?;
    Ok(client)
}

/// Tries the lock once; if another holds it, tells `leader` who (logging a change).
async fn try_lock(
    client: &Client,
    leader: &watch::Sender<Option<Leader>>,
    address: &str,
) -> Result<bool> {
    let held: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
        .await
        .map_err(failed("trying the leadership lock"))?
        .get(0);
    if held {
        return Ok(true);
    }
    let now = current(client).await?;
    let changed = leader.send_if_modified(|known| {
        let changed = *known != now;
        *known = now.clone();
        changed
    });
    if changed {
        let (name, at) = now.map(|l| (l.holder, l.address)).unwrap_or_default();
        // `address` is this one's (where it will serve once it leads).
        tracing::info!(leader = %name, leader_address = %at, address, "another orchestrator leads; waiting to take over");
    }
    Ok(false)
}

/// Who the leadership row names.
pub async fn current(client: &Client) -> Result<Option<Leader>> {
    let row = client
        .query_opt("SELECT epoch, holder, address FROM shoal_leader", &[])
        .await
        .map_err(|e| Error::StoreUnavailable(format!("reading the leader: {}", describe(&e))))?;
    Ok(row.map(|row| Leader {
        epoch: row.get(0),
        holder: row.get(1),
        address: row.get(2),
    }))
}

/// Asks the lock connection something every [`CHECK_EVERY`] until `stop`; the first
/// failure or slow answer cancels `lost`.
async fn watch(client: Client, lost: CancellationToken, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let answer = tokio::time::timeout(ANSWER_WITHIN, client.simple_query("SELECT 1")).await;
        let why = match answer {
            Ok(Ok(_)) => continue,
            Ok(Err(error)) => describe(&error),
            Err(_) => format!("no answer within {ANSWER_WITHIN:?}"),
        };
        tracing::error!(
            why,
            "lost the leadership: the lock connection to the database failed"
        );
        lost.cancel();
        return;
    }
}
