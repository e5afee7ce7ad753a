//! The orchestrator's trustless IPFS gateway: raw blocks that verify against their CIDs, a
//! CAR holding a file's whole DAG (checked block by block and reassembled), paths inside
//! directory CIDs, and clear statuses for bad requests.

use std::collections::HashMap;

use crate::common::{Devstack, pseudo_random};
use shoal::content::cid::{ContentId, DAG_PB};

fn read_varint(bytes: &[u8], at: &mut usize) -> u64 {
    let (mut value, mut shift) = (0u64, 0);
    loop {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
        shift += 7;
    }
}

/// Splits a CARv1 into its blocks, checking each against its CID.
fn parse_car(car: &[u8]) -> HashMap<ContentId, Vec<u8>> {
    let mut at = 0;
    let header_len = read_varint(car, &mut at) as usize;
    at += header_len;
    let mut blocks = HashMap::new();
    while at < car.len() {
        let len = read_varint(car, &mut at) as usize;
        let section = &car[at..at + len];
        at += len;
        // A CIDv1: version, codec, then a sha2-256 multihash (0x12, 0x20, 32 bytes).
        let mut i = 0;
        read_varint(section, &mut i);
        read_varint(section, &mut i);
        let cid_len = i + 2 + 32;
        let cid = ContentId::from_bytes(&section[..cid_len]).expect("cid");
        let block = &section[cid_len..];
        assert!(cid.verifies(block), "block {cid} does not match its hash");
        blocks.insert(cid, block.to_vec());
    }
    blocks
}

/// Rebuilds a file's bytes from its DAG's blocks.
fn reassemble(cid: &ContentId, blocks: &HashMap<ContentId, Vec<u8>>, out: &mut Vec<u8>) {
    let block = &blocks[cid];
    if cid.codec() != DAG_PB {
        out.extend_from_slice(block);
        return;
    }
    let (node, _) = shoal::content::unixfs::decode_node(block).expect("dag-pb");
    for link in &node.links {
        reassemble(
            &shoal::content::unixfs::link_cid(link).expect("link"),
            blocks,
            out,
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_serves_verifiable_blocks_and_cars() {
    let stack = Devstack::start(&["--gateway-listen", "127.0.0.1:0"]).await;
    let gateway = stack.gateway_url();
    let tree = stack.scratch("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
    let big = pseudo_random(700_000, 3);
    std::fs::write(tree.join("sub/big.bin"), &big).expect("write");
    std::fs::write(tree.join("hello.txt"), b"hello world\n").expect("write");
    let dir_cid = stack
        .shoal(&["data", "put", "-q", &tree.to_string_lossy()])
        .await
        .success()
        .stdout
        .trim()
        .to_owned();
    let file_cid: ContentId = shoal::content::unixfs::file_cid(&big, true);
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.expect("request") }
    };

    // A raw block verifies against its CID.
    let raw = get(format!("{gateway}{file_cid}?format=raw")).await;
    assert_eq!(raw.status(), 200);
    assert_eq!(raw.headers()["content-type"], "application/vnd.ipld.raw");
    assert!(file_cid.verifies(&raw.bytes().await.expect("body")));

    // A CAR by path holds every block of the file, each verifiable, and rebuilds it.
    let car = get(format!("{gateway}{dir_cid}/sub/big.bin?format=car")).await;
    assert_eq!(car.status(), 200);
    assert_eq!(car.headers()["content-type"], "application/vnd.ipld.car");
    let blocks = parse_car(&car.bytes().await.expect("body"));
    let mut rebuilt = Vec::new();
    reassemble(&file_cid, &blocks, &mut rebuilt);
    assert_eq!(rebuilt, big);
    let dir: ContentId = dir_cid.parse().expect("cid");
    assert!(
        blocks.contains_key(&dir),
        "the path's directory blocks come first"
    );

    // The Accept header works too, and a plain GET of a file gives its bytes.
    let by_accept = http
        .get(format!("{gateway}{dir_cid}/hello.txt"))
        .header("accept", "application/vnd.ipld.raw")
        .send()
        .await
        .expect("request");
    assert_eq!(
        by_accept.bytes().await.expect("body").as_ref(),
        b"hello world\n"
    );
    let plain = get(format!("{gateway}{dir_cid}/sub/big.bin")).await;
    assert_eq!(plain.bytes().await.expect("body").as_ref(), big.as_slice());

    assert_eq!(get(format!("{gateway}not-a-cid")).await.status(), 400);
    assert_eq!(
        get(format!("{gateway}{dir_cid}/missing")).await.status(),
        404
    );
    assert_eq!(
        get(format!("{gateway}{dir_cid}?format=zip")).await.status(),
        400
    );
}
