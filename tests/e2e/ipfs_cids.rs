//! CIDs from `shoal data put` against a real IPFS implementation: ipfs-unixfs-importer
//! (the importer Helia uses, from `tests/ipfs`, installed by scripts/test.sh) with kubo's
//! `--cid-version=1 --raw-leaves` settings, on the file sizes around every chunk boundary,
//! a 50 MB file, a nested directory and an empty one.

use crate::common::{Devstack, pseudo_random as data, root};

#[tokio::test(flavor = "multi_thread")]
async fn data_put_cids_are_the_ones_ipfs_gives() {
    let stack = Devstack::start(&[]).await;
    let dir = stack.scratch("cids");
    std::fs::create_dir_all(&dir).expect("mkdir");
    const CHUNK: usize = 256 * 1024;
    let mut paths = Vec::new();
    for (i, size) in [0, 12, CHUNK - 1, CHUNK, CHUNK + 1, 3_000_000, 50_000_000]
        .into_iter()
        .enumerate()
    {
        let path = dir.join(format!("file-{size}"));
        std::fs::write(&path, data(size, i as u64 + 7)).expect("write");
        paths.push(path);
    }
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).expect("mkdir");
    std::fs::create_dir_all(tree.join("sub/empty")).expect("mkdir");
    std::fs::write(tree.join("a.txt"), b"alpha\n").expect("write");
    std::fs::write(tree.join("sub/b.bin"), data(CHUNK * 3 + 5, 99)).expect("write");
    std::fs::write(tree.join("sub/deeper/c.txt"), b"hello world\n").expect("write");
    paths.push(tree);

    let output = tokio::process::Command::new("node")
        .arg(root().join("tests/ipfs/cid.mjs"))
        .args(&paths)
        .output()
        .await
        .expect("node runs (and `npm ci` ran in tests/ipfs)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    for path in &paths {
        let text = path.to_string_lossy();
        let ours = stack.shoal(&["data", "put", "-q", &text]).await.success();
        assert_eq!(
            ours.stdout.trim(),
            expected[text.as_ref()].as_str().expect("cid"),
            "{text}"
        );
    }
}
