//! Fetching HTTP(S) inputs and programs: streamed to disk, bounded redirects, retries with
//! capped exponential backoff on 5xx/429 and connection failures (never on other 4xx), a
//! size cap, and the optional `#sha256=` pin checked before the file is used.

use std::path::Path;
use std::time::Duration;

use crate::source::{HttpSource, hex};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// How URL fetches behave.
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    client: reqwest::Client,
    retries: u32,
    first_backoff: Duration,
}

/// What a fetch produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The server confirmed the cached copy (`304 Not Modified`); nothing was written.
    NotModified,
    /// The body was written: its size, and its strong ETag if the server gave one.
    Body { bytes: u64, etag: Option<String> },
}

/// Why a fetch attempt failed, and whether another attempt may succeed.
#[derive(Debug)]
enum Attempt {
    Retry(String),
    Fatal(String),
}

impl HttpFetcher {
    /// A fetcher following at most `max_redirects` redirects and retrying transient
    /// failures `retries` times.
    pub fn new(max_redirects: usize, retries: u32) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(max_redirects))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpFetcher {
            client,
            retries,
            first_backoff: Duration::from_millis(100),
        })
    }

    /// Downloads `source` to the file `dest`, refusing more than `max_bytes`. With
    /// `if_none_match` (the ETag of a cached copy) the server may answer that the copy is
    /// current instead. The error says what went wrong, for a STAGING failure.
    pub async fn fetch(
        &self,
        source: &HttpSource,
        dest: &Path,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched, String> {
        let mut attempt = 0;
        loop {
            match self.attempt(source, dest, max_bytes, if_none_match).await {
                Ok(fetched) => return Ok(fetched),
                Err(Attempt::Retry(reason)) if attempt < self.retries => {
                    attempt += 1;
                    let delay = self.first_backoff * 2u32.pow(attempt - 1);
                    tracing::info!(url = %source.url, attempt, %reason, "retrying a fetch");
                    tokio::time::sleep(delay.min(Duration::from_secs(10))).await;
                }
                Err(Attempt::Retry(reason)) => {
                    return Err(format!("{reason} (gave up after {} attempts)", attempt + 1));
                }
                Err(Attempt::Fatal(reason)) => return Err(reason),
            }
        }
    }

    async fn attempt(
        &self,
        source: &HttpSource,
        dest: &Path,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched, Attempt> {
        let mut request = self.client.get(source.url.clone());
        if let Some(etag) = if_none_match {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_redirect() {
                Attempt::Fatal(format!("too many redirects: {}", error_chain(&e)))
            } else {
                Attempt::Retry(format!("request failed: {}", error_chain(&e)))
            }
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_MODIFIED && if_none_match.is_some() {
            return Ok(Fetched::NotModified);
        }
        if !status.is_success() {
            let reason = format!("HTTP {status}");
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                Attempt::Retry(reason)
            } else {
                Attempt::Fatal(reason)
            });
        }
        if let Some(length) = response.content_length()
            && length > max_bytes
        {
            return Err(Attempt::Fatal(format!(
                "the body is {length} bytes, more than the input limit of {max_bytes} bytes"
            )));
        }
        // Only a strong validator identifies the bytes; a weak one (W/"...") may not.
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.starts_with('"'))
            .map(str::to_owned);
        let io =
            |e: std::io::Error| Attempt::Fatal(format!("cannot write {}: {e}", dest.display()));
        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                Attempt::Retry(format!(
                    "the body broke off after {written} bytes: {}",
                    error_chain(&e)
                ))
            })?;
            written += chunk.len() as u64;
            if written > max_bytes {
                return Err(Attempt::Fatal(format!(
                    "the body is more than the input limit of {max_bytes} bytes"
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        if let Some(expected) = source.sha256 {
            let actual: [u8; 32] = hasher.finalize().into();
            if actual != expected {
                return Err(Attempt::Fatal(format!(
                    "sha256 mismatch: expected {}, got {}",
                    hex(&expected),
                    hex(&actual)
                )));
            }
        }
        Ok(Fetched::Body {
            bytes: written,
            etag,
        })
    }
}

/// An error with its sources, on one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}
