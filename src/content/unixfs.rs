//! UnixFS DAGs exactly as IPFS builds them, so a CID from Shoal is the CID `ipfs add` gives
//! for the same bytes and either side can fetch the other's data.
//!
//! The layout is kubo's `ipfs add --cid-version=1 --raw-leaves`: files are cut into fixed
//! 256 KiB chunks stored as raw blocks; more than one chunk makes a balanced tree of dag-pb
//! nodes with at most 174 links each, every node holding a UnixFS `File` record (total size
//! and the size under each link); a file of one chunk is just its raw block (`bafkrei...`).
//! A directory is a dag-pb node with one named link per entry, sorted by name, and a UnixFS
//! `Directory` record. The classic CIDv0 layout (leaves as dag-pb `File` nodes) is also
//! built, for comparison with tools that only make that one.
//!
//! dag-pb must be encoded canonically (links before data, fields in order), so nodes are
//! assembled here field by field; decoding uses prost, which accepts any order.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::Error;
use crate::content::cid::{ContentId, DAG_PB, RAW};

/// Size of file chunks: kubo's default `size-262144` chunker.
pub const CHUNK_SIZE: usize = 256 * 1024;
/// Most links in one file node: kubo's balanced layout.
pub const MAX_LINKS: usize = 174;

/// UnixFS `Data.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum NodeType {
    Raw = 0,
    Directory = 1,
    File = 2,
    Metadata = 3,
    Symlink = 4,
    HamtShard = 5,
}

/// The UnixFS record inside a dag-pb node (proto2, `unixfs.proto`).
#[derive(Clone, PartialEq, Message)]
pub struct UnixfsData {
    #[prost(int32, required, tag = "1")]
    pub r#type: i32,
    #[prost(bytes = "bytes", optional, tag = "2")]
    pub data: Option<Bytes>,
    #[prost(uint64, optional, tag = "3")]
    pub filesize: Option<u64>,
    #[prost(uint64, repeated, packed = "false", tag = "4")]
    pub blocksizes: Vec<u64>,
    #[prost(uint64, optional, tag = "5")]
    pub hash_type: Option<u64>,
    #[prost(uint64, optional, tag = "6")]
    pub fanout: Option<u64>,
}

impl UnixfsData {
    /// The node's type, if it is one this crate knows.
    pub fn node_type(&self) -> Option<NodeType> {
        Some(match self.r#type {
            0 => NodeType::Raw,
            1 => NodeType::Directory,
            2 => NodeType::File,
            3 => NodeType::Metadata,
            4 => NodeType::Symlink,
            5 => NodeType::HamtShard,
            _ => return None,
        })
    }
}

/// A dag-pb link.
#[derive(Clone, PartialEq, Message)]
pub struct PbLink {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub hash: Option<Vec<u8>>,
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "3")]
    pub tsize: Option<u64>,
}

/// A dag-pb node.
#[derive(Clone, PartialEq, Message)]
pub struct PbNode {
    #[prost(message, repeated, tag = "2")]
    pub links: Vec<PbLink>,
    #[prost(bytes = "bytes", optional, tag = "1")]
    pub data: Option<Bytes>,
}

/// A block: its CID and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub cid: ContentId,
    pub data: Bytes,
}

/// A link to a built DAG: its root, the bytes of all its blocks (`Tsize`), and the file
/// bytes it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub cid: ContentId,
    pub tsize: u64,
    pub file_size: u64,
}

/// Encodes a dag-pb node canonically: links (each Hash, Name, Tsize), then Data. In the
/// CIDv0 layout (`v0`) links hold bare multihashes, as CIDv0s are.
pub fn encode_node(links: &[(ContentId, &str, u64)], data: &[u8], v0: bool) -> Bytes {
    let mut out = BytesMut::new();
    for (cid, name, tsize) in links {
        let hash = if v0 {
            cid.multihash_bytes()
        } else {
            cid.to_bytes()
        };
        let link = PbLink {
            hash: Some(hash),
            name: Some((*name).to_owned()),
            tsize: Some(*tsize),
        };
        prost::encoding::message::encode(2, &link, &mut out);
    }
    prost::encoding::bytes::encode(1, &Bytes::copy_from_slice(data), &mut out);
    out.freeze()
}

/// Decodes a dag-pb node.
pub fn decode_node(bytes: &[u8]) -> Result<(PbNode, UnixfsData), Error> {
    let bad = |m: String| Error::MalformedTransfer(format!("invalid dag-pb node: {m}"));
    let node = PbNode::decode(bytes).map_err(|e| bad(e.to_string()))?;
    let data = node
        .data
        .clone()
        .ok_or_else(|| bad("no UnixFS data".into()))?;
    let unixfs = UnixfsData::decode(data).map_err(|e| bad(e.to_string()))?;
    Ok((node, unixfs))
}

/// The CID a link in a decoded node points at.
pub fn link_cid(link: &PbLink) -> Result<ContentId, Error> {
    let bytes = link
        .hash
        .as_deref()
        .ok_or_else(|| Error::MalformedTransfer("a dag-pb link has no hash".into()))?;
    ContentId::from_bytes(bytes)
}

/// Builds the DAG of one file from its bytes, fed in any pieces. Blocks are handed to the
/// caller as they are made, so a file of any size is built in bounded memory.
#[derive(Debug)]
pub struct FileBuilder {
    raw_leaves: bool,
    chunk: BytesMut,
    /// Links waiting to be grouped, per tree level (0 = leaves).
    levels: Vec<Vec<Link>>,
    chunks: u64,
}

impl FileBuilder {
    /// A builder for kubo's CIDv1 layout (raw leaves).
    pub fn new() -> Self {
        Self::with_raw_leaves(true)
    }

    /// `raw_leaves: false` builds the classic CIDv0 layout (dag-pb leaves).
    pub fn with_raw_leaves(raw_leaves: bool) -> Self {
        FileBuilder {
            raw_leaves,
            chunk: BytesMut::with_capacity(CHUNK_SIZE),
            levels: vec![Vec::new()],
            chunks: 0,
        }
    }

    /// Feeds bytes; returns the blocks completed by them.
    pub fn write(&mut self, mut bytes: &[u8]) -> Vec<Block> {
        let mut blocks = Vec::new();
        while !bytes.is_empty() {
            let take = (CHUNK_SIZE - self.chunk.len()).min(bytes.len());
            self.chunk.put_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.chunk.len() == CHUNK_SIZE {
                // Emit full chunks only once more data arrives would delay nothing: a full
                // chunk is final whatever follows.
                let chunk = self.chunk.split().freeze();
                self.push_leaf(chunk, &mut blocks);
            }
        }
        blocks
    }

    fn push_leaf(&mut self, chunk: Bytes, blocks: &mut Vec<Block>) {
        self.chunks += 1;
        let link = if self.raw_leaves {
            let block = Block {
                cid: ContentId::of_block(RAW, &chunk),
                data: chunk,
            };
            let link = Link {
                cid: block.cid,
                tsize: block.data.len() as u64,
                file_size: block.data.len() as u64,
            };
            blocks.push(block);
            link
        } else {
            let size = chunk.len() as u64;
            let data = UnixfsData {
                r#type: NodeType::File as i32,
                data: Some(chunk),
                filesize: Some(size),
                ..Default::default()
            };
            let bytes = encode_node(&[], &data.encode_to_vec(), true);
            let block = Block {
                cid: ContentId::of_block(DAG_PB, &bytes),
                data: bytes,
            };
            let link = Link {
                cid: block.cid,
                tsize: block.data.len() as u64,
                file_size: size,
            };
            blocks.push(block);
            link
        };
        self.push_link(0, link, blocks);
    }

    /// Adds a link at `level`; a level that already holds a full node's worth of links
    /// becomes a node one level up first.
    fn push_link(&mut self, level: usize, link: Link, blocks: &mut Vec<Block>) {
        if self.levels.len() <= level {
            self.levels.push(Vec::new());
        }
        if self.levels[level].len() == MAX_LINKS {
            let full = std::mem::take(&mut self.levels[level]);
            let parent = file_node(&full, !self.raw_leaves, blocks);
            self.push_link(level + 1, parent, blocks);
        }
        self.levels[level].push(link);
    }

    /// Finishes the file; returns the remaining blocks and the root link.
    pub fn finish(mut self) -> (Vec<Block>, Link) {
        let mut blocks = Vec::new();
        if !self.chunk.is_empty() || self.chunks == 0 {
            // An empty file is one empty chunk, as in kubo.
            let chunk = self.chunk.split().freeze();
            self.push_leaf(chunk, &mut blocks);
        }
        let mut level = 0;
        loop {
            let links = std::mem::take(&mut self.levels[level]);
            let is_top = self.levels[level + 1..].iter().all(Vec::is_empty);
            if is_top && links.len() == 1 {
                return (blocks, links[0]);
            }
            let node = file_node(&links, !self.raw_leaves, &mut blocks);
            if self.levels.len() <= level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(node);
            level += 1;
        }
    }
}

impl Default for FileBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// A UnixFS file node over `children`.
fn file_node(children: &[Link], v0: bool, blocks: &mut Vec<Block>) -> Link {
    let file_size = children.iter().map(|l| l.file_size).sum();
    let data = UnixfsData {
        r#type: NodeType::File as i32,
        filesize: Some(file_size),
        blocksizes: children.iter().map(|l| l.file_size).collect(),
        ..Default::default()
    };
    let links: Vec<_> = children.iter().map(|l| (l.cid, "", l.tsize)).collect();
    let bytes = encode_node(&links, &data.encode_to_vec(), v0);
    let tsize = bytes.len() as u64 + children.iter().map(|l| l.tsize).sum::<u64>();
    let cid = ContentId::of_block(DAG_PB, &bytes);
    blocks.push(Block { cid, data: bytes });
    Link {
        cid,
        tsize,
        file_size,
    }
}

/// Builds a directory node from its entries (name and link); names are sorted here.
pub fn directory(entries: &mut [(String, Link)]) -> (Block, Link) {
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let data = UnixfsData {
        r#type: NodeType::Directory as i32,
        ..Default::default()
    };
    let links: Vec<_> = entries
        .iter()
        .map(|(name, link)| (link.cid, name.as_str(), link.tsize))
        .collect();
    let bytes = encode_node(&links, &data.encode_to_vec(), false);
    let tsize = bytes.len() as u64 + entries.iter().map(|(_, l)| l.tsize).sum::<u64>();
    let file_size = entries.iter().map(|(_, l)| l.file_size).sum();
    let cid = ContentId::of_block(DAG_PB, &bytes);
    (
        Block { cid, data: bytes },
        Link {
            cid,
            tsize,
            file_size,
        },
    )
}

/// The directories of a tree being built, by path ("" is the root), each with the named
/// links of the entries already finished in it.
pub type Directories = std::collections::BTreeMap<String, Vec<(String, Link)>>;

/// Builds the node of every directory in `directories`, deepest first, linking each into
/// its parent; returns the nodes in that order (children before parents) and the root's
/// link, None if `directories` has no root.
pub fn close_directories(mut directories: Directories) -> (Vec<Block>, Option<Link>) {
    let mut paths: Vec<String> = directories.keys().cloned().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(depth(p)));
    let mut blocks = Vec::with_capacity(paths.len());
    for path in paths {
        let mut entries = directories.remove(&path).unwrap_or_default();
        let (block, link) = directory(&mut entries);
        blocks.push(block);
        if path.is_empty() {
            return (blocks, Some(link));
        }
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        if let Some(entries) = directories.get_mut(parent) {
            entries.push((name.to_owned(), link));
        }
    }
    (blocks, None)
}

/// How many directories deep `path` is ("" is the root, at 0).
fn depth(path: &str) -> usize {
    if path.is_empty() {
        0
    } else {
        path.matches('/').count() + 1
    }
}

/// Builds a small directory tree held in memory: `entries` are paths below the root
/// (relative, '/'-separated, parents before children) with a file's bytes, or None for a
/// directory. Returns every block, children before parents, and the root's link; the CID
/// is the one an upload of the same tree gets.
pub fn directory_tree(entries: Vec<(String, Option<Bytes>)>) -> (Vec<Block>, Link) {
    let mut directories = Directories::new();
    directories.insert(String::new(), Vec::new());
    let mut blocks = Vec::new();
    for (path, content) in entries {
        let Some(content) = content else {
            directories.insert(path, Vec::new());
            continue;
        };
        let mut builder = FileBuilder::new();
        blocks.extend(builder.write(&content));
        let (rest, link) = builder.finish();
        blocks.extend(rest);
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        directories
            .entry(parent.to_owned())
            .or_default()
            .push((name.to_owned(), link));
    }
    let (nodes, root) = close_directories(directories);
    blocks.extend(nodes);
    (blocks, root.expect("the root directory is always present"))
}

/// The root link of `bytes` as one file (all blocks discarded); for tests and tools.
pub fn file_cid(bytes: &[u8], raw_leaves: bool) -> ContentId {
    let mut builder = FileBuilder::with_raw_leaves(raw_leaves);
    builder.write(bytes);
    builder.finish().1.cid
}

/// A UnixFS block as it travels in messages (result trees sent with completions).
impl From<Block> for crate::proto::ContentBlock {
    fn from(block: Block) -> Self {
        crate::proto::ContentBlock {
            cid: block.cid.to_string(),
            data: block.data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v0(cid: ContentId) -> String {
        cid.to_v0().expect("a dag-pb sha2-256 CID has a v0 form")
    }

    /// Known vectors: IPFS's CIDs of "hello world\n" in both layouts, the empty file and
    /// the empty directory.
    #[test]
    fn known_vectors() {
        assert_eq!(
            file_cid(b"hello world\n", true).to_string(),
            "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
        );
        assert_eq!(
            v0(file_cid(b"hello world\n", false)),
            "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
        );
        assert_eq!(
            file_cid(b"", true).to_string(),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
        let (_, empty) = directory(&mut []);
        assert_eq!(
            empty.cid.to_string(),
            "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
        );
    }

    /// Chunking and tree shape: one chunk is a raw leaf; 175 chunks need a second level.
    #[test]
    fn balanced_tree_shape() {
        let one = vec![7u8; CHUNK_SIZE];
        let mut builder = FileBuilder::new();
        let mut blocks = builder.write(&one);
        let (rest, root) = builder.finish();
        blocks.extend(rest);
        assert_eq!(blocks.len(), 1);
        assert!(root.cid.is_raw());

        let data: Vec<u8> = (0..CHUNK_SIZE * 175 + 1).map(|i| (i % 251) as u8).collect();
        let mut builder = FileBuilder::new();
        let mut blocks = Vec::new();
        for piece in data.chunks(100_000) {
            blocks.extend(builder.write(piece));
        }
        let (rest, root) = builder.finish();
        blocks.extend(rest);
        assert_eq!(root.file_size, data.len() as u64);
        let by_cid: std::collections::HashMap<_, _> =
            blocks.iter().map(|b| (b.cid, b.data.clone())).collect();
        let (node, unixfs) = decode_node(&by_cid[&root.cid]).expect("root");
        assert_eq!(
            node.links.len(),
            2,
            "174 chunks in the first child, 2 in the second"
        );
        assert_eq!(unixfs.filesize, Some(data.len() as u64));
        assert_eq!(
            unixfs.blocksizes,
            vec![(CHUNK_SIZE * 174) as u64, (CHUNK_SIZE + 1) as u64]
        );
        let total: u64 = blocks.iter().map(|b| b.data.len() as u64).sum();
        assert_eq!(root.tsize, total);
        // Same bytes fed differently give the same CID.
        assert_eq!(file_cid(&data, true), root.cid);
    }
}
