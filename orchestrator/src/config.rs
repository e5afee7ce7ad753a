//! The orchestrator's settings: every field can come from a flag or an environment variable.

use std::path::PathBuf;
use std::time::Duration;

/// Orchestrator settings; every field can come from a flag or an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Directory for the job database and the content store.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = "./shoal-data")]
    pub data_dir: PathBuf,
    /// Where the orchestrator keeps its state: unset for the embedded store in the data
    /// directory, or a PostgreSQL URL (`postgres://user:password@host:port/database`,
    /// `?sslmode=require` for TLS), which several orchestrators can share: one leads, the
    /// others wait to take over.
    #[arg(long, env = "SHOAL_STORE", value_parser = StoreUrl::parse)]
    pub store: Option<StoreUrl>,
    /// CA certificate (PEM) the PostgreSQL server's certificate must chain to, besides the
    /// Mozilla roots.
    #[arg(long, env = "SHOAL_STORE_CA_CERT", requires = "store")]
    pub store_ca_cert: Option<PathBuf>,
    /// The address clients and executors reach this orchestrator at, recorded when it
    /// leads so the others can name it (default: its gRPC listener's address).
    #[arg(long, env = "SHOAL_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<String>,
    /// How often executors send heartbeats.
    #[arg(long, env = "SHOAL_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = shoal::spec::units::parse_duration)]
    pub heartbeat_interval: Duration,
    /// An executor silent for this long is lost and its executions are retried elsewhere.
    #[arg(long, env = "SHOAL_LEASE", default_value = "10s", value_parser = shoal::spec::units::parse_duration)]
    pub lease: Duration,
    /// Run timeout for jobs whose spec names none.
    #[arg(long, env = "SHOAL_DEFAULT_TIMEOUT", default_value = "1h", value_parser = shoal::spec::units::parse_duration)]
    pub default_timeout: Duration,
    /// Queue timeout for jobs whose spec names none.
    #[arg(long, env = "SHOAL_DEFAULT_QUEUE_TIMEOUT", default_value = "24h", value_parser = shoal::spec::units::parse_duration)]
    pub default_queue_timeout: Duration,
    #[command(flatten)]
    pub s3: shoal::data::s3::S3Defaults,
    /// Most jobs waiting for an executor; past it SubmitJob answers RESOURCE_EXHAUSTED.
    #[arg(long, env = "SHOAL_MAX_QUEUED_JOBS", default_value_t = 100_000)]
    pub max_queued_jobs: usize,
    /// Largest upload (total file bytes) the content store accepts.
    #[arg(long, env = "SHOAL_MAX_UPLOAD", default_value = "16GiB", value_parser = shoal::spec::units::parse_size)]
    pub max_upload_bytes: u64,
    /// Bearer tokens and their roles, one `ROLE TOKEN` per line (roles client, executor,
    /// admin). Without it every caller may do everything: a development setup.
    #[arg(long, env = "SHOAL_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// TLS certificate (PEM) for the gRPC listener; with `--tls-key`, clients must use
    /// https:// addresses.
    #[arg(long, env = "SHOAL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the TLS certificate.
    #[arg(long, env = "SHOAL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM) for mutual TLS: executors must then present a client
    /// certificate it signed. Needs `--tls-cert`.
    #[arg(long, env = "SHOAL_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Which hosts `CopyFromUrl` may fetch from.
    #[command(flatten)]
    pub urls: shoal::data::http::UrlPolicyArgs,
    /// Where the content store keeps its blocks: `s3://bucket/prefix` for an S3 bucket
    /// (reached with the `--s3-*` settings and the standard AWS credentials), or unset for
    /// `DATA_DIR/content`.
    #[arg(long, env = "SHOAL_CONTENT_STORE", value_parser = shoal::spec::source::S3Location::parse)]
    pub content_store: Option<shoal::spec::source::S3Location>,
    /// An IPFS trustless gateway (`http(s)://host[:port]`) to fetch CIDs the store lacks
    /// from; repeat the flag (or separate with commas) for several, asked in order. With
    /// one, jobs may name CIDs the store does not hold: executors fetch and verify them.
    #[arg(long = "ipfs-gateway", env = "SHOAL_IPFS_GATEWAYS", value_delimiter = ',', value_parser = shoal::data::ipfs::parse_gateway)]
    pub ipfs_gateways: Vec<url::Url>,
    /// Address to serve Prometheus metrics on (`GET /metrics`), e.g. `0.0.0.0:9090`; off
    /// if unset.
    #[arg(long, env = "SHOAL_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// An assignment its executor has not acknowledged (reported on) within this long is
    /// taken back: cancelled there, failed EXECUTOR_LOST and retried under the job's policy.
    #[arg(long, env = "SHOAL_ASSIGN_ACK_TIMEOUT", default_value = "5s", value_parser = shoal::spec::units::parse_duration)]
    pub assign_ack_timeout: Duration,
    /// The most slots one executor may offer; a registration claiming more is refused.
    #[arg(long, env = "SHOAL_MAX_EXECUTOR_SLOTS", default_value_t = 256)]
    pub max_executor_slots: u32,
    /// The most guest memory one executor may offer; a registration claiming more is
    /// refused.
    #[arg(long, env = "SHOAL_MAX_EXECUTOR_MEMORY", default_value = "1TiB", value_parser = shoal::spec::units::parse_size)]
    pub max_executor_memory: u64,
    /// The most log bytes kept per execution and stream (stdout, stderr); an executor
    /// sending more has the rest dropped. Match it to the executors' `--log-cap`.
    #[arg(long, env = "SHOAL_MAX_LOG_PER_EXECUTION", default_value = "64MiB", value_parser = shoal::spec::units::parse_size)]
    pub max_log_per_execution: u64,
    /// Start even though the write-ahead log `state.wal` is damaged or missing: keep the
    /// intact frames before the damage, move the damaged log aside as
    /// `state.wal.damaged-<unix time>`, and go on without the writes after it (they are
    /// logged as lost). Without it the orchestrator refuses to start on such a log and
    /// changes nothing. Use it once, after taking a copy of the data directory.
    #[arg(long, env = "SHOAL_RECOVER_WAL")]
    pub recover_wal: bool,
}

/// A PostgreSQL URL; shown without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(String);

impl StoreUrl {
    /// Takes `postgres://` and `postgresql://` URLs (checked further when connecting).
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(StoreUrl(url.to_owned()))
        } else {
            Err("expected a postgres://user:password@host:port/database URL".into())
        }
    }

    /// The URL as given, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Everything after the scheme up to the host may hold a password.
        match self.0.split_once('@') {
            Some((_, host)) => write!(f, "postgres://***@{host}"),
            None => f.write_str(&self.0),
        }
    }
}

impl Config {
    /// The defaults a submitted spec is completed with.
    pub fn spec_defaults(&self) -> shoal::spec::SpecDefaults {
        shoal::spec::SpecDefaults {
            timeout: self.default_timeout,
            queue_timeout: self.default_queue_timeout,
        }
    }

    /// Defaults with the given data directory (for embedding, e.g. the devstack).
    pub fn with_data_dir(data_dir: PathBuf) -> Self {
        Config {
            data_dir,
            store: None,
            store_ca_cert: None,
            advertise_address: None,
            heartbeat_interval: Duration::from_secs(2),
            lease: Duration::from_secs(10),
            default_timeout: Duration::from_secs(3600),
            default_queue_timeout: Duration::from_secs(24 * 3600),
            max_upload_bytes: 16 << 30,
            max_queued_jobs: 100_000,
            s3: shoal::data::s3::S3Defaults::aws(),
            ipfs_gateways: Vec::new(),
            content_store: None,
            tokens_file: None,
            urls: Default::default(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            metrics_listen: None,
            recover_wal: false,
            assign_ack_timeout: Duration::from_secs(5),
            max_executor_slots: 256,
            max_executor_memory: 1 << 40,
            max_log_per_execution: 64 << 20,
        }
    }
}
