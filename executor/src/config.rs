//! The executor's settings: every field can come from a flag or an environment variable.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// Executor settings; every field can come from a flag or an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// The orchestrator's gRPC address; several, comma-separated, for replicas sharing
    /// one PostgreSQL database (the executor follows whichever leads).
    #[arg(
        long,
        env = "SHOAL_ORCHESTRATOR",
        default_value = "http://127.0.0.1:7070"
    )]
    pub orchestrator: String,
    /// Stable id of this executor. Default: the host name and the process id.
    #[arg(long, env = "SHOAL_EXECUTOR_ID", default_value_t = default_executor_id())]
    pub executor_id: String,
    /// Labels jobs can select on, as KEY=VALUE (repeatable).
    #[arg(long = "label", env = "SHOAL_LABELS", value_delimiter = ',')]
    pub label: Vec<String>,
    /// Executions run at once. Default: the number of CPUs.
    #[arg(long, env = "SHOAL_SLOTS", default_value_t = default_slots())]
    pub slots: u32,
    /// Guest memory offered to all running executions together.
    #[arg(long = "memory", env = "SHOAL_MEMORY", default_value = "8GiB", value_parser = shoal::spec::units::parse_size)]
    pub memory_bytes: u64,
    /// Scratch space for executions and the compiled-module cache.
    #[arg(long, env = "SHOAL_WORK_DIR", default_value = "./shoal-executor")]
    pub work_dir: PathBuf,
    /// Where compiled modules are cached (default: WORK_DIR/modules). Executors on one
    /// machine that trust each other can share one, so a module compiled by one is loaded,
    /// not compiled again, by the others: a compiled module is native code, so share it only
    /// between executors run by the same operator with the same trust.
    #[arg(long, env = "SHOAL_MODULE_CACHE")]
    pub module_cache: Option<PathBuf>,
    /// A file holding a secret of 16 bytes or more (`openssl rand -hex 32 > FILE`) that
    /// executors trusting each other with native code share across machines: each uploads
    /// the modules it compiles to the orchestrator's store, signed with it, and loads the
    /// ones the others signed instead of compiling them again. Off if unset. A holder of
    /// the key can make the others run its code: share it only within one operator's
    /// executors of one trust.
    #[arg(long, env = "SHOAL_MODULE_SHARE_KEY")]
    pub module_share_key: Option<PathBuf>,
    /// Most stdout (and, separately, stderr) kept per execution; the rest is dropped.
    #[arg(long, env = "SHOAL_LOG_CAP", default_value = "64MiB", value_parser = shoal::spec::units::parse_size)]
    pub log_cap: u64,
    /// Most bytes of outputs and logs an execution may publish; what it writes to its /tmp
    /// counts too.
    #[arg(long, env = "SHOAL_MAX_OUTPUT", default_value = "10GiB", value_parser = shoal::spec::units::parse_size)]
    pub max_output_bytes: u64,
    /// Disk space for cached inputs (by CID, or by URL and strong ETag); 0 disables it.
    #[arg(long, env = "SHOAL_INPUT_CACHE", default_value = "10GiB", value_parser = shoal::spec::units::parse_size)]
    pub input_cache_bytes: u64,
    /// Most bytes of inputs (and of a fetched program) per execution.
    #[arg(long = "max-input", env = "SHOAL_MAX_INPUT", default_value = "10GiB", value_parser = shoal::spec::units::parse_size)]
    pub max_input_bytes: u64,
    /// Redirects followed when fetching a URL.
    #[arg(long, env = "SHOAL_HTTP_MAX_REDIRECTS", default_value_t = 5)]
    pub http_max_redirects: usize,
    /// Retries of a URL fetch after a 5xx, a 429 or a broken connection.
    #[arg(long, env = "SHOAL_HTTP_RETRIES", default_value_t = 3)]
    pub http_retries: u32,
    #[command(flatten)]
    pub s3: shoal::data::s3::S3Defaults,
    /// Time allowed for fetching a program and its inputs (not counted in the run timeout).
    #[arg(long, env = "SHOAL_STAGING_TIMEOUT", default_value = "10m", value_parser = shoal::spec::units::parse_duration)]
    pub staging_timeout: Duration,
    /// On SIGTERM, how long running executions may go on (no new work is taken) before
    /// they are stopped and handed back to the orchestrator to run elsewhere.
    #[arg(long, env = "SHOAL_DRAIN_TIMEOUT", default_value = "5m", value_parser = shoal::spec::units::parse_duration)]
    pub drain_timeout: Duration,
    /// Address to serve Prometheus metrics on (`GET /metrics`), e.g. `0.0.0.0:9091`; off
    /// if unset.
    #[arg(long, env = "SHOAL_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Which hosts URL inputs and programs may come from.
    #[command(flatten)]
    pub urls: shoal::data::http::UrlPolicyArgs,
    /// Token and TLS settings for reaching the orchestrator.
    #[command(flatten)]
    pub security: shoal::net::auth::ClientSecurity,
}

fn default_executor_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "executor".to_owned());
    format!("{host}-{}", std::process::id())
}

fn default_slots() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

impl Config {
    /// Defaults for an executor of `orchestrator` working in `work_dir` (for embedding).
    pub fn new(orchestrator: String, executor_id: String, work_dir: PathBuf) -> Self {
        Config {
            orchestrator,
            executor_id,
            label: Vec::new(),
            slots: default_slots(),
            memory_bytes: 8 << 30,
            work_dir,
            module_cache: None,
            module_share_key: None,
            log_cap: 64 << 20,
            max_output_bytes: 10 << 30,
            max_input_bytes: 10 << 30,
            input_cache_bytes: 10 << 30,
            http_max_redirects: 5,
            http_retries: 3,
            s3: shoal::data::s3::S3Defaults::aws(),
            staging_timeout: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(300),
            security: Default::default(),
            urls: Default::default(),
            metrics_listen: None,
        }
    }

    /// The compiled-module cache directory.
    pub fn module_cache_dir(&self) -> PathBuf {
        self.module_cache
            .clone()
            .unwrap_or_else(|| self.work_dir.join("modules"))
    }

    /// Checks what can be checked without starting: labels and slots.
    pub fn check(&self) -> Result<()> {
        self.labels()?;
        if self.slots == 0 {
            return Err(Error::Config("slots must be at least 1".into()));
        }
        Ok(())
    }

    /// The labels as a map; malformed ones are a configuration error.
    pub fn labels(&self) -> Result<HashMap<String, String>> {
        self.label
            .iter()
            .filter(|l| !l.is_empty())
            .map(|label| {
                let (key, value) = label
                    .split_once('=')
                    .ok_or_else(|| Error::Config(format!("label {label:?} must be KEY=VALUE")))?;
                let key = shoal::spec::selector::label_key(key).map_err(Error::Config)?;
                let value = shoal::spec::selector::label_value(value).map_err(Error::Config)?;
                Ok((key, value))
            })
            .collect()
    }
}
