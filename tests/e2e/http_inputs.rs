//! Inputs and programs fetched by URL from an in-test HTTP server that misbehaves on
//! purpose: 404, a 500 before a 200, a 503 that lasts, a redirect loop, a truncated body, an oversize body, a
//! wrong checksum and a body too slow for the staging timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::common::{Devstack, path};
use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const DATA: &str = "hello over http\n";

#[derive(Default)]
struct Hits {
    missing: AtomicU32,
    flaky: AtomicU32,
    etag_full: AtomicU32,
    etag_not_modified: AtomicU32,
}

/// Serves the test routes on an ephemeral port; returns the base URL.
async fn serve(hits: Arc<Hits>) -> String {
    let hello = std::fs::read(path("examples/hello/hello.wasm")).expect("hello.wasm");
    let (missing, flaky, etag) = (hits.clone(), hits.clone(), hits);
    let app = axum::Router::new()
        .route(
            "/etag.txt",
            get(move |headers: axum::http::HeaderMap| async move {
                if headers
                    .get(header::IF_NONE_MATCH)
                    .is_some_and(|v| v == "\"v1\"")
                {
                    etag.etag_not_modified.fetch_add(1, Ordering::SeqCst);
                    return StatusCode::NOT_MODIFIED.into_response();
                }
                etag.etag_full.fetch_add(1, Ordering::SeqCst);
                ([(header::ETAG, "\"v1\"")], DATA).into_response()
            }),
        )
        .route("/data.txt", get(|| async { DATA }))
        .route(
            "/down",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance") }),
        )
        .route("/hello.wasm", get(move || async move { hello }))
        .route(
            "/missing",
            get(move || async move {
                missing.missing.fetch_add(1, Ordering::SeqCst);
                StatusCode::NOT_FOUND
            }),
        )
        .route(
            "/flaky",
            get(move || async move {
                if flaky.flaky.fetch_add(1, Ordering::SeqCst) == 0 {
                    (StatusCode::INTERNAL_SERVER_ERROR, "try again").into_response()
                } else {
                    "recovered\n".into_response()
                }
            }),
        )
        .route(
            "/to-metadata",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, "http://169.254.169.254/latest/meta-data/")],
                )
            }),
        )
        .route(
            "/loop",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop")]) }),
        )
        .route(
            "/truncated",
            get(|| async {
                // A stream has no known length, so the server sends the promised 1000-byte
                // header, then 5 bytes, then closes the connection.
                // The pause lets the headers and the first bytes go out before the end.
                let short = futures::stream::unfold(0u32, |n| async move {
                    match n {
                        0 => Some((Ok::<_, std::io::Error>(b"short".to_vec()), 1)),
                        1 => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Some((Ok(Vec::new()), 2))
                        }
                        _ => None,
                    }
                });
                Response::builder()
                    .header(header::CONTENT_LENGTH, "1000")
                    .body(Body::from_stream(short))
                    .expect("response")
            }),
        )
        .route("/big", get(|| async { vec![b'x'; 2 << 20] }))
        .route(
            "/slow",
            get(|| async {
                let drip = futures::stream::unfold(0u32, |n| async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Some((Ok::<_, std::io::Error>(vec![b'.']), n + 1))
                });
                Body::from_stream(drip)
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(bytes);
    digest.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// URL inputs and programs are fetched; transient failures are retried; every bad source
/// fails the job in STAGING naming the input, the URL and the reason.
#[tokio::test(flavor = "multi_thread")]
async fn url_inputs_are_fetched_verified_and_failures_named() {
    let hits = Arc::new(Hits::default());
    let base = serve(hits.clone()).await;
    // The test's server is on loopback, which only an explicit allowance opens.
    let stack = Devstack::start(&[
        "--max-input",
        "1MiB",
        "--staging-timeout",
        "3s",
        "--allow-url",
        "127.0.0.1",
    ])
    .await;
    let copytree = path("tests/fixtures/copytree.wasm");

    // A URL input, pinned by its checksum, lands read-only at its target.
    let pinned = format!("{base}/data.txt#sha256={}", sha256_hex(DATA.as_bytes()));
    let results = stack.scratch("results");
    stack
        .shoal(&[
            "wasm",
            "run",
            &copytree,
            "-i",
            &format!("{pinned}:/inputs/data.txt"),
            "-i",
            &format!("{base}/flaky"),
            "--download",
            &results.to_string_lossy(),
        ])
        .await
        .success();
    assert_eq!(
        std::fs::read_to_string(results.join("outputs/copy/data.txt")).expect("data"),
        DATA
    );
    assert_eq!(
        std::fs::read_to_string(results.join("outputs/copy/flaky")).expect("flaky"),
        "recovered\n"
    );
    assert_eq!(
        hits.flaky.load(Ordering::SeqCst),
        2,
        "one 500, then one retry"
    );

    // A URL list, sharded: one partition per URL, each seeing only its own file, under the
    // URL's file name. A list whose URLs share a file name is refused at submit.
    let list = stack.scratch("urls.txt");
    std::fs::write(
        &list,
        format!("{base}/data.txt\n\n# a comment\n{base}/hello.wasm\n"),
    )
    .expect("write");
    let sharded = stack.scratch("sharded");
    let list_input = format!("@{}:/inputs/web", list.display());
    stack
        .shoal(&[
            "wasm",
            "run",
            &copytree,
            "-i",
            &list_input,
            "--shard",
            "/inputs/web",
            "--download",
            &sharded.to_string_lossy(),
        ])
        .await
        .success();
    let copied = |i: u32| {
        let dir = sharded.join(format!("partitions/{i}/outputs/copy/web"));
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(copied(0), ["data.txt"]);
    assert_eq!(copied(1), ["hello.wasm"]);
    assert_eq!(
        std::fs::read_to_string(sharded.join("partitions/0/outputs/copy/web/data.txt"))
            .expect("data"),
        DATA
    );
    std::fs::write(&list, format!("{base}/data.txt\n{base}/data.txt?again=1\n")).expect("write");
    let refused = stack
        .shoal(&[
            "wasm",
            "run",
            &copytree,
            "-i",
            &list_input,
            "--shard",
            "/inputs/web",
        ])
        .await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("two entries are named \"data.txt\""),
        "{}",
        refused.stderr
    );
    let unsharded = stack
        .shoal(&["wasm", "run", &copytree, "-i", &list_input])
        .await;
    assert_eq!(unsharded.code, 2, "a list needs --shard: {unsharded:?}");

    // `data cp` stores a URL's body under the CID `data put` gives the same bytes.
    let copied = stack
        .shoal(&["data", "cp", &format!("{base}/data.txt")])
        .await
        .success();
    let local = stack.scratch("data.txt");
    std::fs::write(&local, DATA).expect("write");
    let put = stack
        .shoal(&["data", "put", "-q", &local.to_string_lossy()])
        .await
        .success();
    assert_eq!(copied.stdout.trim(), put.stdout.trim());
    // The copy kept the URL's file name: `-i CID` mounts it at /inputs/data.txt.
    let results = stack.scratch("named");
    let results_arg = results.to_string_lossy();
    let wordcount = path("examples/wordcount/wordcount.wasm");
    let cid = copied.stdout.trim();
    stack
        .shoal(&[
            "wasm",
            "run",
            &wordcount,
            "-i",
            cid,
            "--download",
            &results_arg,
        ])
        .await
        .success();
    let summary = std::fs::read_to_string(results.join("outputs/summary.txt")).expect("summary");
    assert!(summary.starts_with("data.txt: 1 lines"), "{summary}");
    // Another file stored under the same name goes under its CID beside it, not over it.
    let other = stack.scratch("other").join("data.txt");
    std::fs::create_dir_all(other.parent().expect("parent")).expect("mkdir");
    std::fs::write(&other, "other\nbytes\n").expect("write");
    let other_cid = stack
        .shoal(&["data", "put", "-q", &other.to_string_lossy()])
        .await
        .success()
        .stdout
        .trim()
        .to_owned();
    let both = stack.scratch("both");
    let both_arg = both.to_string_lossy();
    let args = [
        "wasm",
        "run",
        &wordcount,
        "-i",
        cid,
        "-i",
        &other_cid,
        "--download",
        &both_arg,
    ];
    stack.shoal(&args).await.success();
    let summary = std::fs::read_to_string(both.join("outputs/summary.txt")).expect("summary");
    assert!(summary.contains("data.txt: 1 lines"), "{summary}");
    assert!(
        summary.contains(&format!("{other_cid}: 2 lines")),
        "{summary}"
    );
    let missing = stack
        .shoal(&["data", "cp", &format!("{base}/missing")])
        .await;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(
        missing.stderr.contains("HTTP 404") && missing.stderr.contains("FailedPrecondition"),
        "{}",
        missing.stderr
    );
    // A server that stays down is UNAVAILABLE (worth trying later), after the retries.
    let down = stack.shoal(&["data", "cp", &format!("{base}/down")]).await;
    assert_eq!(down.code, 1, "{down:?}");
    assert!(
        down.stderr.contains("HTTP 503")
            && down.stderr.contains("gave up after")
            && down.stderr.contains("Unavailable"),
        "{}",
        down.stderr
    );

    // A program by URL.
    let out = stack
        .shoal(&["wasm", "run", &format!("{base}/hello.wasm"), "web"])
        .await
        .success();
    assert!(
        out.stdout.contains("Hello from hello.wasm!\narg[1]=web"),
        "{}",
        out.stdout
    );

    let wrong = format!("{base}/data.txt#sha256={}", "0".repeat(64));
    let cases = [
        (format!("{base}/missing"), "HTTP 404"),
        (format!("{base}/loop"), "too many redirects"),
        (format!("{base}/truncated"), "broke off"),
        (format!("{base}/big"), "input limit"),
        (wrong, "sha256 mismatch"),
        (format!("{base}/slow"), "staging took longer than 3s"),
    ];
    for (url, reason) in cases {
        let out = stack.shoal(&["wasm", "run", &copytree, "-i", &url]).await;
        assert_eq!(out.code, 125, "{url}: {out:?}");
        assert!(
            out.stderr.contains("FAILED: STAGING"),
            "{url}: {}",
            out.stderr
        );
        assert!(out.stderr.contains(reason), "{url}: {}", out.stderr);
        if reason != "staging took longer than 3s" {
            let shown = url.split('#').next().unwrap_or_default();
            assert!(
                out.stderr.contains(&format!("inputs[0] ({shown}")),
                "{url}: {}",
                out.stderr
            );
        }
    }
    // One request from `data cp`, one from the job: a 404 is never retried.
    assert_eq!(
        hits.missing.load(Ordering::SeqCst),
        2,
        "a 404 is not retried"
    );
}

/// A second job on the same inputs downloads nothing again: a URL with a strong ETag is
/// revalidated (304), a CID is reused outright.
#[tokio::test(flavor = "multi_thread")]
async fn cached_inputs_are_not_downloaded_again() {
    let hits = Arc::new(Hits::default());
    let base = serve(hits.clone()).await;
    let stack = Devstack::start(&["--executors", "1", "--allow-url", "127.0.0.1"]).await;
    let input = stack.scratch("tree");
    std::fs::create_dir_all(input.join("sub")).expect("mkdir");
    std::fs::write(input.join("sub/x.txt"), b"cached\n").expect("write");
    let cid = stack
        .shoal(&["data", "put", "-q", &input.to_string_lossy()])
        .await
        .success()
        .stdout
        .trim()
        .to_owned();
    let copytree = path("tests/fixtures/copytree.wasm");
    let url = format!("{base}/etag.txt:/inputs/etag.txt");
    let tree = format!("{cid}:/inputs/tree");
    for run in 0..2 {
        let results = stack.scratch(&format!("results-{run}"));
        stack
            .shoal(&[
                "wasm",
                "run",
                &copytree,
                "-i",
                &url,
                "-i",
                &tree,
                "--download",
                &results.to_string_lossy(),
            ])
            .await
            .success();
        assert_eq!(
            std::fs::read_to_string(results.join("outputs/copy/etag.txt")).expect("etag"),
            DATA
        );
        assert_eq!(
            std::fs::read_to_string(results.join("outputs/copy/tree/sub/x.txt")).expect("tree"),
            "cached\n"
        );
    }
    assert_eq!(
        hits.etag_full.load(Ordering::SeqCst),
        1,
        "one full download"
    );
    assert_eq!(
        hits.etag_not_modified.load(Ordering::SeqCst),
        1,
        "then a revalidation"
    );
    // Every fetch takes a fresh cache path: two entries mean nothing was fetched twice.
    let mut entries: Vec<_> = std::fs::read_dir(stack.scratch("data/executor-0/inputs"))
        .expect("cache dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["entry-1", "entry-2"]);
}

/// Cloud metadata addresses are refused, directly, by name or through a redirect; with an
/// allowlist, only the listed hosts and networks are fetched from.
#[tokio::test(flavor = "multi_thread")]
async fn url_policy_refuses_metadata_and_unlisted_hosts() {
    let base = serve(Arc::new(Hits::default())).await;
    let stack = Devstack::start(&["--allow-url", "127.0.0.1/32,*.example.internal"]).await;
    let copytree = path("tests/fixtures/copytree.wasm");
    let ok = format!("{base}/data.txt:/inputs/data.txt");
    stack
        .shoal(&["wasm", "run", &copytree, "-i", &ok])
        .await
        .success();
    let cases = [
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "169.254.169.254 is a cloud metadata address",
        ),
        (
            "http://metadata.google.internal/computeMetadata/v1/".to_owned(),
            "metadata.google.internal is a cloud metadata host",
        ),
        (
            format!("{base}/to-metadata"),
            "redirect to http://169.254.169.254/latest/meta-data/ refused",
        ),
        (
            "http://10.1.2.3/data".to_owned(),
            "10.1.2.3 is not among the allowed hosts",
        ),
        (
            format!("{}/data.txt", base.replace("127.0.0.1", "localhost")),
            "",
        ),
    ];
    for (url, reason) in cases {
        let out = stack
            .shoal(&["wasm", "run", &copytree, "-i", &format!("{url}:/inputs/x")])
            .await;
        if reason.is_empty() {
            // localhost resolves to 127.0.0.1, which is allowed.
            assert_eq!(out.code, 0, "{url}: {out:?}");
            continue;
        }
        assert_eq!(out.code, 125, "{url}: {out:?}");
        assert!(
            out.stderr.contains("FAILED: STAGING"),
            "{url}: {}",
            out.stderr
        );
        assert!(out.stderr.contains(reason), "{url}: {}", out.stderr);
        assert!(
            !out.stderr.contains("attempts"),
            "refusals are not retried: {}",
            out.stderr
        );
    }
    // The orchestrator's CopyFromUrl follows the same policy, and never fetches from its
    // own listeners, whatever the allowlist says (127.0.0.1 is allowed here).
    let own = format!("{}/", stack.address);
    for (url, reason) in [
        (
            "http://169.254.169.254/latest/meta-data/",
            "cloud metadata address",
        ),
        (own.as_str(), "one of this daemon's own listeners"),
    ] {
        let out = stack.shoal(&["data", "cp", url]).await;
        assert_eq!(out.code, 1, "{out:?}");
        assert!(out.stderr.contains(reason), "{url}: {}", out.stderr);
    }
}

/// By default loopback is refused to URL inputs and to CopyFromUrl, by address or by a
/// name that resolves to it: a client cannot make a daemon fetch from the machine it runs
/// on (its metrics page, a sidecar). `--allow-url 127.0.0.1` opens it, as tests do.
#[tokio::test(flavor = "multi_thread")]
async fn loopback_is_refused_unless_allowed() {
    let base = serve(Arc::new(Hits::default())).await;
    let stack = Devstack::start(&["--executors", "1"]).await;
    let copytree = path("tests/fixtures/copytree.wasm");
    let by_name = base.replace("127.0.0.1", "localhost");
    for url in [format!("{base}/data.txt"), format!("{by_name}/data.txt")] {
        let out = stack
            .shoal(&["wasm", "run", &copytree, "-i", &format!("{url}:/inputs/x")])
            .await;
        assert_eq!(out.code, 125, "{url}: {out:?}");
        assert!(
            out.stderr.contains("FAILED: STAGING"),
            "{url}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("loopback address"),
            "{url}: {}",
            out.stderr
        );
        let out = stack.shoal(&["data", "cp", &url]).await;
        assert_eq!(out.code, 1, "{url}: {out:?}");
        assert!(
            out.stderr.contains("loopback address"),
            "{url}: {}",
            out.stderr
        );
    }
}
