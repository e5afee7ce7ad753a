//! The result tree of a partitioned job: `partitions/<i>/` linking each partition's own
//! result tree, built from the stored root blocks (nothing is copied), under one CID.

use shoal::content::cid::{ContentId, DAG_PB};
use shoal::content::unixfs::{self, Link};

use super::ContentStore;
use crate::error::{Error, Result};

impl ContentStore {
    /// Builds and stores the tree `partitions/<index>/` -> each result root of `results`
    /// (by partition index); returns the root's CID. A link's cumulative size comes from
    /// its root block (its own bytes and its links' sizes), as `ipfs add` records it, so the
    /// tree downloaded and added to IPFS gets the same CID, as long as the `partitions`
    /// node stays under the 256 KiB past which kubo shards a directory (HAMT), about 5,000
    /// partitions; a larger one is a plain directory node here, and its CID differs.
    pub async fn partition_tree(&self, results: &[(u32, String)]) -> Result<ContentId> {
        let mut entries = Vec::with_capacity(results.len());
        for (index, text) in results {
            let cid: ContentId = text
                .parse()
                .map_err(|e| Error::Store(format!("partition {index}'s result {text}: {e}")))?;
            let block = self.get_block(&cid).await?;
            let tsize = if cid.codec() == DAG_PB {
                let (node, _) = unixfs::decode_node(&block)
                    .map_err(|e| Error::Store(format!("partition {index}'s result {cid}: {e}")))?;
                block.len() as u64 + node.links.iter().filter_map(|l| l.tsize).sum::<u64>()
            } else {
                block.len() as u64
            };
            entries.push((
                index.to_string(),
                Link {
                    cid,
                    tsize,
                    file_size: 0,
                },
            ));
        }
        let (partitions, link) = unixfs::directory(&mut entries);
        let (root, _) = unixfs::directory(&mut [("partitions".to_owned(), link)]);
        // Children before their parent: a stored root always means a whole DAG.
        self.put_block(&partitions).await?;
        self.put_block(&root).await?;
        Ok(root.cid)
    }
}
