//! Fetching content from IPFS trustless gateways
//! (<https://specs.ipfs.tech/http-gateways/trustless-gateway/>), block by block with
//! `?format=raw`, checking every block against the hash in its CID before anything reads
//! it. A gateway is only trusted to be available, never to be honest: a tampered or
//! truncated block is rejected, and the next gateway is asked.
//!
//! Used by executors for input and program CIDs the orchestrator does not hold, and by the
//! orchestrator's `Pin` to bring such a CID into its store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;
use url::Url;

use crate::content::cid::ContentId;
use crate::content::transfer::check_tree_path;
use crate::content::unixfs::{self, NodeType};
use crate::data::DataError;
use crate::data::http::error_chain;
use crate::net::retry::Retry;

/// Largest block accepted from a gateway; IPFS itself limits blocks to 2 MiB for exchange
/// (UnixFS file chunks are 256 KiB, directory nodes grow with their entry count).
pub const MAX_BLOCK_BYTES: usize = 4 << 20;
/// Deepest DAG followed (a balanced file DAG of 174-link nodes is 5 levels deep at 1 PiB).
const MAX_DEPTH: usize = 64;
/// Attempts per gateway for one block on connection errors and 5xx answers.
const ATTEMPTS: u32 = 3;

/// Fetches and verifies blocks from an ordered list of gateways.
#[derive(Debug, Clone)]
pub struct GatewayFetcher {
    client: reqwest::Client,
    gateways: Vec<Url>,
}

/// What [`GatewayFetcher::fetch_to`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// File bytes written.
    pub bytes: u64,
    /// Whether the CID is a directory.
    pub directory: bool,
}

/// Parses a gateway base URL (`http(s)://host[:port][/prefix]`), as given to `--ipfs-gateway`.
pub fn parse_gateway(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text).map_err(|e| format!("IPFS gateway {text:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(format!(
            "IPFS gateway {text:?}: must be an http:// or https:// URL with a host"
        ));
    }
    // Requests are made relative to the base, which only keeps a path ending in '/'.
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

impl GatewayFetcher {
    /// A fetcher asking `gateways` in order.
    pub fn new(gateways: Vec<Url>) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(GatewayFetcher { client, gateways })
    }

    /// The gateways asked, in order.
    pub fn gateways(&self) -> &[Url] {
        &self.gateways
    }

    /// One block, verified against `cid`. The error names every gateway asked and why
    /// each failed; it is transient if any gateway's failure was (that one may answer
    /// later).
    pub async fn block(&self, cid: &ContentId) -> Result<Bytes, DataError> {
        if self.gateways.is_empty() {
            return Err(DataError::Refused(format!(
                "{cid} is not in the orchestrator's store and no IPFS gateway is configured"
            )));
        }
        let mut reasons = Vec::new();
        let mut transient = false;
        let mut last = None;
        for gateway in &self.gateways {
            match self.block_from(gateway, cid).await {
                Ok(block) => return Ok(block),
                Err(error) => {
                    tracing::info!(%cid, %gateway, reason = %error, "IPFS gateway fetch failed");
                    reasons.push(format!("{gateway}: {error}"));
                    transient |= error.is_transient();
                    last = Some(error);
                }
            }
        }
        let reasons = format!("block {cid}: {}", reasons.join("; "));
        Err(match last {
            Some(_) if transient => DataError::Unavailable(reasons),
            Some(last) => last.map(|_| reasons),
            None => DataError::Refused(reasons),
        })
    }

    async fn block_from(&self, gateway: &Url, cid: &ContentId) -> Result<Bytes, DataError> {
        let mut url = gateway
            .join(&format!("ipfs/{cid}"))
            .map_err(|e| DataError::Refused(e.to_string()))?;
        url.set_query(Some("format=raw"));
        let retry =
            Retry::attempts(ATTEMPTS).delays(Duration::from_millis(200), Duration::from_secs(2));
        retry
            .run("fetching a block from a gateway", || {
                self.try_block(&url, cid)
            })
            .await
    }

    /// One attempt; the error says whether another attempt may succeed.
    async fn try_block(&self, url: &Url, cid: &ContentId) -> Result<Bytes, DataError> {
        let response = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/vnd.ipld.raw")
            .send()
            .await
            .map_err(|e| DataError::Unavailable(format!("request failed: {}", error_chain(&e))))?;
        let status = response.status();
        if !status.is_success() {
            let reason = format!("HTTP {status}");
            return Err(DataError::from_http_status(status.as_u16(), reason));
        }
        let mut block = BytesMut::new();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                let reason = format!("the block broke off: {}", error_chain(&e));
                DataError::Unavailable(reason)
            })?;
            if block.len() + chunk.len() > MAX_BLOCK_BYTES {
                let reason = format!("the block is larger than {MAX_BLOCK_BYTES} bytes");
                return Err(DataError::Invalid(reason));
            }
            block.extend_from_slice(&chunk);
        }
        let block = block.freeze();
        if !cid.verifies(&block) {
            // Never retried on the same gateway: it served what it holds.
            let reason = format!(
                "the {} bytes served do not hash to {cid}: tampered or corrupt data, rejected",
                block.len()
            );
            return Err(DataError::Invalid(reason));
        }
        Ok(block)
    }

    /// Writes the file or directory `cid` names to `dest` (which must not exist), refusing
    /// more than `max_bytes` of file data. Every block is verified before it is written.
    pub async fn fetch_to(
        &self,
        cid: &ContentId,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<Fetched, DataError> {
        let mut written = 0;
        let directory = self
            .write_entry(*cid, dest.to_owned(), max_bytes, &mut written, 0)
            .await?;
        Ok(Fetched {
            bytes: written,
            directory,
        })
    }

    /// Writes one entry; true if it is a directory.
    fn write_entry<'a>(
        &'a self,
        cid: ContentId,
        dest: PathBuf,
        max_bytes: u64,
        written: &'a mut u64,
        depth: usize,
    ) -> BoxFuture<'a, Result<bool, DataError>> {
        Box::pin(async move {
            if depth > MAX_DEPTH {
                let reason = format!("the DAG is deeper than {MAX_DEPTH} levels");
                return Err(DataError::Invalid(reason));
            }
            let io = |e: std::io::Error| {
                DataError::Local(format!("cannot write {}: {e}", dest.display()))
            };
            let block = self.block(&cid).await?;
            if !cid.is_raw() {
                let (node, data) = unixfs::decode_node(&block)
                    .map_err(|e| DataError::Invalid(format!("{cid}: {e}")))?;
                match data.node_type() {
                    Some(NodeType::Directory) => {
                        tokio::fs::create_dir(&dest).await.map_err(io)?;
                        for link in &node.links {
                            let name = link.name.clone().unwrap_or_default();
                            if name.is_empty()
                                || name.contains('/')
                                || check_tree_path(&name).is_err()
                            {
                                return Err(DataError::Invalid(format!(
                                    "{cid} holds an unusable entry name {name:?}"
                                )));
                            }
                            let child = unixfs::link_cid(link)
                                .map_err(|e| DataError::Invalid(e.to_string()))?;
                            self.write_entry(
                                child,
                                dest.join(&name),
                                max_bytes,
                                written,
                                depth + 1,
                            )
                            .await?;
                        }
                        return Ok(true);
                    }
                    Some(NodeType::File | NodeType::Raw) => {}
                    Some(NodeType::HamtShard) => {
                        return Err(DataError::Invalid(format!(
                            "{cid} is a sharded (HAMT) directory, which Shoal does not read yet"
                        )));
                    }
                    other => {
                        return Err(DataError::Invalid(format!(
                            "{cid} is a UnixFS {other:?} node, not a file or directory"
                        )));
                    }
                }
            }
            let mut file = tokio::fs::File::create(&dest).await.map_err(io)?;
            self.write_file(cid, block, &mut file, max_bytes, written, depth)
                .await?;
            file.flush().await.map_err(io)?;
            Ok(false)
        })
    }

    /// Appends the bytes of the file DAG rooted at `cid` (whose block is `block`) to `file`.
    fn write_file<'a>(
        &'a self,
        cid: ContentId,
        block: Bytes,
        file: &'a mut tokio::fs::File,
        max_bytes: u64,
        written: &'a mut u64,
        depth: usize,
    ) -> BoxFuture<'a, Result<(), DataError>> {
        Box::pin(async move {
            if depth > MAX_DEPTH {
                let reason = format!("the DAG is deeper than {MAX_DEPTH} levels");
                return Err(DataError::Invalid(reason));
            }
            if cid.is_raw() {
                return append(file, &block, max_bytes, written).await;
            }
            let (node, data) = unixfs::decode_node(&block)
                .map_err(|e| DataError::Invalid(format!("{cid}: {e}")))?;
            if !matches!(data.node_type(), Some(NodeType::File | NodeType::Raw)) {
                let reason = format!("{cid} is inside a file but is not file data");
                return Err(DataError::Invalid(reason));
            }
            if let Some(inline) = &data.data {
                append(file, inline, max_bytes, written).await?;
            }
            for link in &node.links {
                let child =
                    unixfs::link_cid(link).map_err(|e| DataError::Invalid(e.to_string()))?;
                let child_block = self.block(&child).await?;
                self.write_file(child, child_block, file, max_bytes, written, depth + 1)
                    .await?;
            }
            Ok(())
        })
    }
}

/// Appends `bytes` to `file`, keeping the total within `max_bytes`.
async fn append(
    file: &mut tokio::fs::File,
    bytes: &[u8],
    max_bytes: u64,
    written: &mut u64,
) -> Result<(), DataError> {
    *written += bytes.len() as u64;
    if *written > max_bytes {
        let reason = format!("it holds more than the limit of {max_bytes} bytes");
        return Err(DataError::TooLarge(reason));
    }
    file.write_all(bytes)
        .await
        .map_err(|e| DataError::Local(format!("cannot write: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_urls_are_normalised_and_checked() {
        let url = parse_gateway("http://127.0.0.1:8080").expect("valid");
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/");
        let url = parse_gateway("https://example.org/prefix").expect("valid");
        assert_eq!(
            url.join("ipfs/x").expect("join").as_str(),
            "https://example.org/prefix/ipfs/x"
        );
        assert!(parse_gateway("ftp://example.org").is_err());
        assert!(parse_gateway("not a url").is_err());
    }
}
