//! Serving a download: a stored file or tree streamed in the transfer framing, file blocks
//! read a few ahead of the one being sent.

use bytes::Bytes;
use futures::StreamExt;
use shoal::content::cid::ContentId;
use shoal::content::transfer::check_tree_path;
use shoal::content::unixfs::{self};
use shoal::proto::{DownloadResponse, Entry, EntryKind, download_response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::*;
use crate::error::{Error, Result};

impl ContentStore {
    /// Streams `cid` (or `path` inside it) in the download framing. Errors found before
    /// the first message are returned; later ones end the stream with a status.
    pub async fn download(
        &self,
        cid: &ContentId,
        path: &str,
        offset: u64,
    ) -> Result<ReceiverStream<Result<DownloadResponse, tonic::Status>>> {
        let root = self.resolve(cid, path).await?;
        if root.kind == EntryKind::File && offset > root.size {
            return Err(Error::InvalidArgument(format!(
                "offset {offset} is past the end of a {}-byte file",
                root.size
            )));
        }
        // Bounded: a slow client holds at most a few chunks in memory.
        let (tx, rx) = mpsc::channel(8);
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(error) = store.send_tree(&tx, root, offset).await {
                let _ = tx.send(Err(error.into())).await;
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    async fn send_tree(
        &self,
        tx: &mpsc::Sender<Result<DownloadResponse, tonic::Status>>,
        root: Resolved,
        offset: u64,
    ) -> Result<()> {
        // Depth-first with an explicit stack, parents before children, names in order.
        let mut stack = vec![(root, String::new())];
        while let Some((entry, path)) = stack.pop() {
            let is_root = path.is_empty();
            let header = DownloadResponse {
                item: Some(download_response::Item::Entry(Entry {
                    path: path.clone(),
                    kind: entry.kind as i32,
                    size: entry.size,
                    name: String::new(),
                })),
            };
            if tx.send(Ok(header)).await.is_err() {
                return Ok(()); // the client went away
            }
            if entry.kind == EntryKind::File {
                let skip = if is_root { offset } else { 0 };
                if !self.send_file(tx, entry.cid, skip, 0).await? {
                    return Ok(());
                }
                continue;
            }
            let (node, _) = self.node(&entry.cid).await?;
            for link in node.links.iter().rev() {
                let name = link.name.clone().unwrap_or_default();
                check_tree_path(&name).map_err(|_| {
                    Error::Store(format!(
                        "{} holds an unusable entry name {name:?}",
                        entry.cid
                    ))
                })?;
                let child_path = if path.is_empty() {
                    name
                } else {
                    format!("{path}/{name}")
                };
                let child = self.resolve_root(&unixfs::link_cid(link)?).await?;
                stack.push((child, child_path));
            }
        }
        Ok(())
    }

    /// Sends a file DAG's bytes, skipping the first `skip`; false if the client went away.
    fn send_file<'a>(
        &'a self,
        tx: &'a mpsc::Sender<Result<DownloadResponse, tonic::Status>>,
        cid: ContentId,
        skip: u64,
        depth: usize,
    ) -> futures::future::BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            if depth > MAX_DAG_DEPTH {
                return Err(Error::Store(format!("the DAG under {cid} is too deep")));
            }
            if cid.is_raw() {
                let data = self.get_block(&cid).await?;
                let start = (skip as usize).min(data.len());
                return Ok(send_data(tx, data.slice(start..)).await);
            }
            let (node, data) = self.node(&cid).await?;
            let mut skip = skip;
            if let Some(inline) = data.data.filter(|d| !d.is_empty()) {
                let start = (skip as usize).min(inline.len());
                skip -= start as u64;
                if !send_data(tx, inline.slice(start..)).await {
                    return Ok(false);
                }
            }
            let mut children = Vec::with_capacity(node.links.len());
            for (i, link) in node.links.iter().enumerate() {
                let size = data.blocksizes.get(i).copied().unwrap_or(0);
                if skip >= size && size > 0 {
                    skip -= size;
                    continue;
                }
                children.push((unixfs::link_cid(link)?, skip));
                skip = 0;
            }
            // Leaf blocks are read a few ahead of the one being sent, so the disk and the
            // network work at the same time instead of taking turns (B5).
            let mut children = futures::stream::iter(children)
                .map(|(cid, skip)| async move {
                    let leaf = if cid.is_raw() {
                        Some(self.get_block(&cid).await?)
                    } else {
                        None
                    };
                    Ok::<_, Error>((cid, skip, leaf))
                })
                .buffered(READ_AHEAD_BLOCKS);
            while let Some(child) = children.next().await {
                let (cid, skip, leaf) = child?;
                let sent = match leaf {
                    Some(data) => {
                        let start = (skip as usize).min(data.len());
                        send_data(tx, data.slice(start..)).await
                    }
                    None => self.send_file(tx, cid, skip, depth + 1).await?,
                };
                if !sent {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }
}

async fn send_data(
    tx: &mpsc::Sender<Result<DownloadResponse, tonic::Status>>,
    data: Bytes,
) -> bool {
    if data.is_empty() {
        return true;
    }
    tx.send(Ok(DownloadResponse {
        item: Some(download_response::Item::Data(data)),
    }))
    .await
    .is_ok()
}
