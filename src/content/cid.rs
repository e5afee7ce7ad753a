//! Content ids: CIDv1 with sha2-256 multihashes, as IPFS makes them.
//!
//! Content is laid out as UnixFS, exactly as IPFS does it (see [`crate::content::unixfs`]): raw
//! blocks for file chunks, dag-pb nodes for larger files and directories. CIDv0 (`Qm...`)
//! and `ipfs://` / `/ipfs/` prefixes are accepted on input; ids are always printed as
//! CIDv1 in base32.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::Error;

/// Multicodec of a raw block (a file's bytes).
pub const RAW: u64 = 0x55;
/// Multicodec of a dag-pb block (UnixFS file and directory nodes; all CIDv0 content).
pub const DAG_PB: u64 = 0x70;
/// Multihash code of sha2-256.
pub const SHA2_256: u64 = 0x12;

/// A content id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentId(cid::Cid);

impl ContentId {
    /// The CID of `digest` (a sha2-256 digest) under `codec`.
    pub fn from_sha256(codec: u64, digest: &[u8; 32]) -> Self {
        let hash = multihash::Multihash::<64>::wrap(SHA2_256, digest)
            .expect("a 32-byte digest always fits a 64-byte multihash");
        ContentId(cid::Cid::new_v1(codec, hash))
    }

    /// The CID of `bytes` as one block under `codec`.
    pub fn of_block(codec: u64, bytes: &[u8]) -> Self {
        Self::from_sha256(codec, &Sha256::digest(bytes).into())
    }

    /// The multicodec of the content.
    pub fn codec(&self) -> u64 {
        self.0.codec()
    }

    /// The raw digest bytes.
    pub fn digest(&self) -> &[u8] {
        self.0.hash().digest()
    }

    /// Whether the content is a file (a raw block).
    pub fn is_raw(&self) -> bool {
        self.codec() == RAW
    }

    /// The binary form (as in dag-pb links and CAR files).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }

    /// The multihash alone (a CIDv0's binary form).
    pub fn multihash_bytes(&self) -> Vec<u8> {
        self.0.hash().to_bytes()
    }

    /// Parses the binary form; CIDv0 becomes the same content's CIDv1.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let parsed = cid::Cid::try_from(bytes).map_err(|e| Error::InvalidCid {
            input: format!("{} binary bytes", bytes.len()),
            reason: e.to_string(),
        })?;
        Ok(ContentId(cid::Cid::new_v1(parsed.codec(), *parsed.hash())))
    }

    /// The CIDv0 text (`Qm...`) of dag-pb content, if it has one.
    pub fn to_v0(&self) -> Option<String> {
        (self.codec() == DAG_PB)
            .then(|| cid::Cid::new_v0(*self.0.hash()).ok())
            .flatten()
            .map(|v0| v0.to_string())
    }

    /// Whether `bytes` hash to this CID's digest.
    pub fn verifies(&self, bytes: &[u8]) -> bool {
        Sha256::digest(bytes).as_slice() == self.digest()
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // CIDv1's canonical text form is multibase base32 (lower case, 'b' prefix).
        self.0.fmt(f)
    }
}

impl FromStr for ContentId {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| Error::InvalidCid {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let text = input
            .strip_prefix("ipfs://")
            .or_else(|| input.strip_prefix("/ipfs/"))
            .unwrap_or(input);
        if text.is_empty() {
            return Err(invalid("empty"));
        }
        let parsed = cid::Cid::try_from(text).map_err(|e| invalid(&e.to_string()))?;
        if parsed.hash().code() != SHA2_256 {
            return Err(invalid("only sha2-256 multihashes are supported"));
        }
        // CIDv0 is dag-pb + sha2-256 by definition; normalise it to the same content's v1.
        let v1 = cid::Cid::new_v1(parsed.codec(), *parsed.hash());
        Ok(ContentId(v1))
    }
}

/// Whether `text` looks like a content id rather than a local path (used by the CLI to tell
/// `shoal wasm run bafy...` from `shoal wasm run ./main.wasm`).
pub fn looks_like_cid(text: &str) -> bool {
    // CIDs never contain '/' or '.', which every relative or absolute file path of a
    // program (`main.wasm`, `./x`, `dir/x`) does.
    text.starts_with("ipfs://")
        || text.starts_with("/ipfs/")
        || (!text.contains(['/', '.']) && text.parse::<ContentId>().is_ok())
}

/// Incremental sha2-256 of a stream of bytes, finished into a raw-block CID.
#[derive(Default)]
pub struct RawHasher(Sha256);

impl RawHasher {
    /// Feeds the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The CID of everything fed so far, as one raw block.
    pub fn finish(self) -> ContentId {
        ContentId::from_sha256(RAW, &self.0.finalize().into())
    }
}

impl fmt::Debug for RawHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawHasher")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The known IPFS vector for "hello world\n" as a raw-leaf CIDv1.
    #[test]
    fn raw_cid_matches_ipfs_vector() {
        let cid = ContentId::of_block(RAW, b"hello world\n");
        assert_eq!(
            cid.to_string(),
            "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
        );
        let mut hasher = RawHasher::default();
        hasher.update(b"hello ");
        hasher.update(b"world\n");
        assert_eq!(hasher.finish(), cid);
    }

    /// Prefixes and CIDv0 are accepted; garbage is rejected with the input named.
    #[test]
    fn parses_prefixes_and_v0() {
        let text = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4";
        let plain: ContentId = text.parse().expect("plain");
        assert_eq!(
            format!("ipfs://{text}")
                .parse::<ContentId>()
                .expect("ipfs://"),
            plain
        );
        assert_eq!(
            format!("/ipfs/{text}")
                .parse::<ContentId>()
                .expect("/ipfs/"),
            plain
        );
        let v0: ContentId = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
            .parse()
            .expect("v0");
        assert_eq!(v0.codec(), DAG_PB);
        assert!(v0.to_string().starts_with("bafy"));
        let err = "not-a-cid".parse::<ContentId>().expect_err("garbage");
        assert!(err.to_string().contains("not-a-cid"));
        assert!(looks_like_cid(text));
        assert!(!looks_like_cid("./main.wasm"));
        assert!(!looks_like_cid("examples/hello/hello.wasm"));
    }
}
