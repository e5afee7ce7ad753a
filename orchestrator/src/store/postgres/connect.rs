//! Reaching the database: the URL's settings, TLS through rustls, and errors that say what
//! went wrong (the driver's own `Display` says only "db error").

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{Error, Result};

/// How long a connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server lets a session sit idle inside a transaction (its locks held)
/// before it rolls the transaction back and ends the session.
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(4);

/// A database to connect to: the parsed URL and the TLS connector for it.
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Database {
    /// From a `postgres://user:password@host:port/database?sslmode=...` URL (or the
    /// key=value form libpq takes). With `sslmode=require` (or `verify-full`), the server's
    /// certificate must chain to the Mozilla roots or to `ca_file` (PEM) and name the host.
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<Self> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("--store: not a PostgreSQL URL: {e}")))?;
        if config.get_hosts().is_empty() {
            return Err(Error::InvalidArgument(
                "--store: the PostgreSQL URL names no host".into(),
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A peer that vanishes without closing (a cut network) is noticed within seconds.
        config.keepalives_idle(Duration::from_secs(5));
        config.tcp_user_timeout(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("shoal-orchestrator");
        }
        // A transaction left open by a leader that went silent mid-commit (a partition)
        // would hold its locks, and the next leader's epoch increment would wait for it:
        // the server rolls such a transaction back after a few seconds.
        let options = config.get_options().unwrap_or_default().to_owned();
        config.options(format!(
            "{options} -c idle_in_transaction_session_timeout={}",
            IDLE_IN_TRANSACTION.as_millis()
        ));
        let tls = MakeRustlsConnect::new(client_config(ca_file)?);
        Ok(Database { config, tls })
    }

    /// Where the database is, for logs and errors, without the password.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .zip(
                self.config
                    .get_ports()
                    .iter()
                    .chain(std::iter::repeat(&5432)),
            )
            .map(|(host, port)| match host {
                tokio_postgres::config::Host::Tcp(host) => format!("{host}:{port}"),
                tokio_postgres::config::Host::Unix(path) => {
                    format!("{}:{port}", path.display())
                }
            })
            .collect();
        format!(
            "postgres://{}@{}/{}",
            self.config.get_user().unwrap_or(""),
            hosts.join(","),
            self.config.get_dbname().unwrap_or("")
        )
    }

    /// Whether the connection is encrypted (any `sslmode` but `disable`).
    pub fn tls(&self) -> bool {
        self.config.get_ssl_mode() != SslMode::Disable
    }

    /// A new connection, its driver task spawned (it ends when the client is dropped or
    /// the connection breaks; the client then answers every call with an error).
    pub async fn connect(&self) -> Result<Client> {
        // The driver's connect timeout covers the TCP connection alone: a proxy that
        // accepts and then says nothing (its database down) would hold the rest forever.
        let connecting = self.config.connect(self.tls.clone());
        let (client, connection) = tokio::time::timeout(2 * CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                Error::StoreUnavailable(format!(
                    "connecting to {} failed: no answer within {:?}",
                    self.describe(),
                    2 * CONNECT_TIMEOUT
                ))
            })?
            .map_err(|e| Error::StoreUnavailable(self.failed("connecting to", &e)))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %describe(&error), "a database connection ended");
            }
        });
        Ok(client)
    }

    /// A pool of connections for readers.
    pub fn pool(&self, size: usize) -> Result<deadpool_postgres::Pool> {
        let manager = deadpool_postgres::Manager::from_config(
            self.config.clone(),
            self.tls.clone(),
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        deadpool_postgres::Pool::builder(manager)
            .max_size(size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .wait_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| Error::Internal(format!("building the database pool: {e}")))
    }

    /// "`doing` DATABASE failed: why".
    pub fn failed(&self, doing: &str, error: &tokio_postgres::Error) -> String {
        format!("{doing} {} failed: {}", self.describe(), describe(error))
    }
}

/// The database's own message where there is one (with its SQLSTATE), else the
/// driver's error and its cause.
pub fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} ({}: {})", db.message(), db.severity(), db.code().code());
    }
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

/// A reader pool's error, described.
pub fn pool_error(error: deadpool_postgres::PoolError) -> Error {
    match error {
        deadpool_postgres::PoolError::Backend(error) => Error::StoreUnavailable(describe(&error)),
        other => Error::StoreUnavailable(format!("the database pool: {other}")),
    }
}

fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        use rustls::pki_types::pem::PemObject;
        let certificates = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| {
                Error::InvalidArgument(format!("--store-ca-cert {}: {e}", path.display()))
            })?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| {
                Error::InvalidArgument(format!("--store-ca-cert {}: {e}", path.display()))
            })?;
        if certificates.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "--store-ca-cert {}: no PEM certificate in it",
                path.display()
            )));
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|e| {
                Error::InvalidArgument(format!("--store-ca-cert {}: {e}", path.display()))
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS for the database: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
