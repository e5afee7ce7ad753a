//! Content ids against an independent implementation: Debian's `ipfs_cid` (rust-cid-npm)
//! computes the classic CIDv0 of a file, the layout kubo uses without raw leaves. Our
//! builder makes the same tree for that layout; the raw-leaf layout differs only in its
//! leaves, which the known vectors in `src/unixfs.rs` pin down.

use std::process::Command;

use shoal::content::unixfs::{CHUNK_SIZE, MAX_LINKS, file_cid};

fn oracle(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("file");
    std::fs::write(&path, bytes).expect("write");
    let output = Command::new("ipfs_cid")
        .arg(&path)
        .output()
        .expect("ipfs_cid runs (apt-get install ipfs-cid; scripts/test.sh does)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("ipfs_cid output {stdout:?}: {e}"));
    json["CIDv0"].as_str().expect("CIDv0").to_owned()
}

/// Files around every chunk and fan-out boundary get the CIDv0 an independent
/// implementation computes.
#[test]
fn file_dags_match_an_independent_implementation() {
    let sizes = [
        12,
        CHUNK_SIZE - 1,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        3_000_000,
        CHUNK_SIZE * MAX_LINKS,
        CHUNK_SIZE * MAX_LINKS + 1,
    ];
    for size in sizes {
        let bytes = crate::common::pseudo_random(size, 0x2545_f491_4f6c_dd1d);
        let ours = file_cid(&bytes, false).to_v0().expect("v0");
        assert_eq!(ours, oracle(&bytes), "file of {size} bytes");
    }
}
