//! Fetching `s3://` inputs with aws-sdk-s3: one object as a file, or every object below a
//! prefix (or matching a glob) as a directory keeping their relative paths. Endpoint,
//! region and path-style addressing come from the input's settings, else the executor's;
//! credentials from the standard AWS chain. Used by executors (inputs) and by the
//! orchestrator (`CopyFromS3`). The SDK retries throttling and transient
//! failures itself.

use std::collections::HashMap;
use std::path::Path;

use crate::proto::S3Options;
use crate::source::{S3Selection, S3Source, glob_matches};
use crate::transfer::check_tree_path;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use tokio::io::AsyncWriteExt;

/// Daemon-wide S3 settings, used where a request or an input names none. The same flags
/// on the executor (inputs, programs) and the orchestrator (`CopyFromS3`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct S3Defaults {
    /// S3 endpoint for sources that name none (an S3-compatible server). Default: AWS.
    #[arg(long = "s3-endpoint", env = "SHOAL_S3_ENDPOINT")]
    pub endpoint: Option<String>,
    /// S3 region for sources that name none.
    #[arg(
        long = "s3-region",
        env = "SHOAL_S3_REGION",
        default_value = "us-east-1"
    )]
    pub region: String,
    /// Path-style S3 addressing (bucket in the path) for every source.
    #[arg(long = "s3-path-style", env = "SHOAL_S3_PATH_STYLE")]
    pub force_path_style: bool,
}

impl S3Defaults {
    /// AWS in us-east-1, virtual-host addressing.
    pub fn aws() -> Self {
        S3Defaults {
            endpoint: None,
            region: "us-east-1".to_owned(),
            force_path_style: false,
        }
    }
}

/// S3 clients by (endpoint, region, path style), built once each.
pub struct S3Fetcher {
    defaults: S3Defaults,
    clients: tokio::sync::Mutex<HashMap<(String, String, bool), aws_sdk_s3::Client>>,
}

/// What a fetch wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S3Fetched {
    pub bytes: u64,
    pub directory: bool,
}

impl S3Fetcher {
    pub fn new(defaults: S3Defaults) -> Self {
        S3Fetcher {
            defaults,
            clients: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn client(&self, options: Option<&S3Options>) -> aws_sdk_s3::Client {
        let endpoint = options
            .map(|o| o.endpoint.clone())
            .filter(|e| !e.is_empty())
            .or_else(|| self.defaults.endpoint.clone())
            .unwrap_or_default();
        let region = options
            .map(|o| o.region.clone())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| self.defaults.region.clone());
        let path_style =
            options.is_some_and(|o| o.force_path_style) || self.defaults.force_path_style;
        let key = (endpoint.clone(), region.clone(), path_style);
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(&key) {
            return client.clone();
        }
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region))
            .load()
            .await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared).force_path_style(path_style);
        if !endpoint.is_empty() {
            config = config.endpoint_url(endpoint);
        }
        let client = aws_sdk_s3::Client::from_conf(config.build());
        clients.insert(key, client.clone());
        client
    }

    /// Fetches `source` to `dest` (a file for an object, a directory otherwise), refusing
    /// more than `max_bytes`. The error says what went wrong, for a STAGING failure.
    pub async fn fetch(
        &self,
        source: &S3Source,
        options: Option<&S3Options>,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<S3Fetched, String> {
        let client = self.client(options).await;
        match source.selection() {
            S3Selection::Object(key) => {
                let version = options
                    .map(|o| o.version_id.clone())
                    .filter(|v| !v.is_empty());
                let bytes =
                    get_object(&client, &source.bucket, key, version, dest, max_bytes).await?;
                Ok(S3Fetched {
                    bytes,
                    directory: false,
                })
            }
            S3Selection::Prefix(prefix) => {
                fetch_many(&client, &source.bucket, prefix, None, dest, max_bytes).await
            }
            S3Selection::Glob { prefix, pattern } => {
                fetch_many(
                    &client,
                    &source.bucket,
                    prefix,
                    Some(pattern),
                    dest,
                    max_bytes,
                )
                .await
            }
        }
    }
}

fn describe<E, R>(error: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match error.as_service_error() {
        Some(service) => match (service.code(), service.message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_owned(),
            _ => DisplayErrorContext(error).to_string(),
        },
        None => DisplayErrorContext(error).to_string(),
    }
}

async fn get_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    version: Option<String>,
    dest: &Path,
    max_bytes: u64,
) -> Result<u64, String> {
    let mut object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_version_id(version)
        .send()
        .await
        .map_err(|e| format!("cannot get s3://{bucket}/{key}: {}", describe(&e)))?;
    if let Some(length) = object.content_length()
        && length as u64 > max_bytes
    {
        return Err(format!(
            "s3://{bucket}/{key} is {length} bytes, more than the input limit of {max_bytes} bytes"
        ));
    }
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    let mut written = 0u64;
    while let Some(chunk) = object.body.next().await {
        let chunk = chunk.map_err(|e| {
            format!("reading s3://{bucket}/{key} broke off after {written} bytes: {e}")
        })?;
        written += chunk.len() as u64;
        if written > max_bytes {
            return Err(format!(
                "s3://{bucket}/{key} is more than the input limit of {max_bytes} bytes"
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    }
    file.flush().await.map_err(|e| e.to_string())?;
    Ok(written)
}

async fn fetch_many(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    pattern: Option<&str>,
    dest: &Path,
    max_bytes: u64,
) -> Result<S3Fetched, String> {
    tokio::fs::create_dir_all(dest)
        .await
        .map_err(|e| e.to_string())?;
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    let mut total = 0u64;
    let mut count = 0usize;
    while let Some(page) = pages.next().await {
        let page =
            page.map_err(|e| format!("cannot list s3://{bucket}/{prefix}: {}", describe(&e)))?;
        for object in page.contents() {
            let Some(key) = object.key() else { continue };
            let relative = &key[prefix.len().min(key.len())..];
            // Directory markers ("folder/") hold nothing.
            if relative.is_empty() || relative.ends_with('/') {
                continue;
            }
            if let Some(pattern) = pattern
                && (relative.contains('/') || !glob_matches(pattern, relative))
            {
                continue;
            }
            check_tree_path(relative).map_err(|_| {
                format!("the object key {key:?} cannot be a file path below the prefix")
            })?;
            let size = object.size().unwrap_or(0).max(0) as u64;
            if total + size > max_bytes {
                return Err(format!(
                    "s3://{bucket}/{prefix} holds more than the input limit of {max_bytes} bytes"
                ));
            }
            total += get_object(
                client,
                bucket,
                key,
                None,
                &dest.join(relative),
                max_bytes - total,
            )
            .await?;
            count += 1;
        }
    }
    if count == 0 {
        let what = pattern
            .map(|p| format!("{prefix}{p}"))
            .unwrap_or_else(|| prefix.to_owned());
        return Err(format!("no objects match s3://{bucket}/{what}"));
    }
    Ok(S3Fetched {
        bytes: total,
        directory: true,
    })
}
