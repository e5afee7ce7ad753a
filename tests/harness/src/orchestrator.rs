//! A `shoal-orchestrator` process on a port it binds itself. It logs JSON; the lines with
//! the `shoal::listening` target say where it listens, so no port is picked before the
//! daemon binds it.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, bail};
use tokio::io::BufReader;
use tokio::process::{Child, Command};

use crate::logs::{Lines, collect, wait_for_line};

/// How to start an orchestrator.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Its `--data-dir`.
    pub data: PathBuf,
    /// The port to bind: 0 for one of its own (a restart passes the port it had).
    pub port: u16,
    /// Extra flags, after the harness's own, so they win.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Log only warnings and where it listens (a benchmark's daemon: its log would cost
    /// time); otherwise the daemon's default, `info`.
    pub quiet: bool,
}

impl Launch {
    pub fn new(data: &Path, port: u16) -> Launch {
        Launch {
            data: data.to_owned(),
            port,
            ..Launch::default()
        }
    }

    pub fn args(mut self, args: &[&str]) -> Launch {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    pub fn env(mut self, env: &[(String, String)]) -> Launch {
        self.env.extend_from_slice(env);
        self
    }

    pub fn quiet(mut self) -> Launch {
        self.quiet = true;
        self
    }

    /// Starts it; returns once it listens. It is killed when the returned value is dropped.
    pub async fn start(&self) -> anyhow::Result<OrchestratorProcess> {
        let mut command = Command::new(crate::binary("shoal-orchestrator")?);
        command
            .args([
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--data-dir",
            ])
            .arg(&self.data)
            .args(["--log-format", "json"])
            .args(&self.args);
        if self.quiet {
            command.env("RUST_LOG", "warn,shoal::listening=info");
        }
        if !self.args.iter().any(|a| a == "--store")
            && let Some(url) = test_store(&self.data).await?
        {
            command.args(["--store", &url]);
        }
        let mut child = command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting shoal-orchestrator")?;
        let mut stderr = BufReader::new(child.stderr.take().context("its stderr")?);
        // The metrics endpoint, if any, says where it listens before the API does.
        let mut metrics = None;
        let listening = loop {
            let line = match wait_for_line(&mut stderr, "listening").await {
                Ok(line) => line,
                Err(e) => {
                    let status = child.try_wait().ok().flatten();
                    return Err(e.context(format!(
                        "the orchestrator did not say where it listens (exit: {status:?})"
                    )));
                }
            };
            let value: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("a log line is not JSON: {line}"))?;
            let address = value["address"].as_str().unwrap_or_default().to_owned();
            match value["message"].as_str() {
                Some("metrics listening") => metrics = Some(address),
                Some("orchestrator listening") => break address,
                _ => {}
            }
        };
        let Some(port) = listening.rsplit(':').next().and_then(|p| p.parse().ok()) else {
            bail!("no port in the listening address {listening:?}");
        };
        Ok(OrchestratorProcess {
            child,
            port,
            address: format!("http://127.0.0.1:{port}"),
            metrics,
            lines: collect(stderr),
        })
    }
}

/// A started orchestrator: `address` is `http://127.0.0.1:PORT`, `metrics` the metrics
/// endpoint's `127.0.0.1:PORT` if it serves one. Killed when dropped.
pub struct OrchestratorProcess {
    pub child: Child,
    pub port: u16,
    pub address: String,
    pub metrics: Option<String>,
    /// The JSON log lines it writes after it listens.
    pub lines: Lines,
}

impl OrchestratorProcess {
    /// Kills it with SIGKILL.
    pub async fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill().await
    }

    /// Stops it with SIGTERM and waits (up to the timeout) for it to exit.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .context("running kill")?;
        }
        tokio::time::timeout(crate::TIMEOUT, self.child.wait())
            .await
            .context("the orchestrator did not stop after SIGTERM")?
            .context("waiting for the orchestrator")
    }
}

/// With `SHOAL_TEST_STORE=postgres`: the URL of a database on the test process's shared
/// PostgreSQL server for the data directory `data` (created on first use), so a process
/// started again on the same directory finds its state there. This runs the end-to-end
/// tests against the PostgreSQL store; otherwise None (the embedded store).
pub async fn test_store(data: &std::path::Path) -> anyhow::Result<Option<String>> {
    if !std::env::var("SHOAL_TEST_STORE").is_ok_and(|store| store == "postgres") {
        return Ok(None);
    }
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut hasher);
    let name = format!("shoal_{:016x}", hasher.finish());
    let url = tokio::task::spawn_blocking(move || crate::PostgresServer::shared()?.database(&name))
        .await
        .context("starting PostgreSQL")??;
    Ok(Some(url))
}

/// An orchestrator on a database it may share with others (`--store postgres://...`),
/// started without waiting for it to lead; its JSON log lines are collected. Killed when
/// dropped.
pub struct Replica {
    pub child: Child,
    pub lines: Lines,
    /// `http://host:port`.
    pub address: String,
}

impl Replica {
    /// Starts one on `data` with `args` (the `--store` among them); returns once it says
    /// where it listens: a standby when it starts waiting, a leader when it serves.
    pub async fn start(data: &Path, args: &[&str]) -> anyhow::Result<Replica> {
        let mut child = Command::new(crate::binary("shoal-orchestrator")?)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--data-dir",
            ])
            .arg(data)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting an orchestrator")?;
        let stderr = child.stderr.take().context("its stderr")?;
        let lines = collect(BufReader::new(stderr));
        let address = lines
            .wait_for("naming its address", |line| {
                let Ok(line) = serde_json::from_str::<serde_json::Value>(line) else {
                    return Ok(None);
                };
                let message = line["message"].as_str().unwrap_or_default();
                let said = message.ends_with("waiting to take over")
                    || message == "orchestrator listening";
                Ok(said
                    .then(|| line["address"].as_str().map(|a| format!("http://{a}")))
                    .flatten())
            })
            .await?;
        Ok(Replica {
            child,
            lines,
            address,
        })
    }

    /// Waits until it serves as the leader.
    pub async fn leads(&self) -> anyhow::Result<()> {
        self.lines
            .wait_for("about serving", |line| {
                Ok(line.contains("orchestrator listening").then_some(()))
            })
            .await
    }
}
