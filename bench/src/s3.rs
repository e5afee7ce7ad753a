//! B6: input staging from a local S3 server (SeaweedFS), a large object and many small
//! ones, with the executor's S3 fetcher; against curl (large) and the aws CLI (small) on
//! the same server. Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, which
//! scripts/bench.sh sets; the server is started with the same.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use shoal::data::s3::{S3Defaults, S3Fetcher};
use shoal::spec::source::S3Source;

use crate::{Args, Figure};

const BUCKET: &str = "shoal-bench";

fn credentials() -> anyhow::Result<(String, String)> {
    let key = std::env::var("AWS_ACCESS_KEY_ID");
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY");
    match (key, secret) {
        (Ok(key), Ok(secret)) => Ok((key, secret)),
        _ => bail!(
            "B6 needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for its local S3 server (scripts/bench.sh sets them)"
        ),
    }
}

/// Runs a baseline command; returns how long it took.
fn timed(command: &mut std::process::Command, what: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let output = command
        .stdout(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(started.elapsed())
}

pub async fn b6(args: &Args, dir: PathBuf) -> anyhow::Result<Vec<Figure>> {
    let (big_bytes, small_count): (u64, usize) = if args.smoke {
        (16 << 20, 20)
    } else {
        (1 << 30, 1000)
    };
    let (key, secret) = credentials()?;
    let weed =
        shoal_harness::SeaweedFs::start(&args.weed, &dir.join("weed"), (&key, &secret), BUCKET)
            .await?;
    let client = weed.client();
    let endpoint = weed.endpoint.as_str();

    // The data: one large object and many 4 KiB ones.
    let big = dir.join("big.bin");
    {
        use std::io::Write as _;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&big)?);
        let block: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(40_503) >> 8) as u8)
            .collect();
        for _ in 0..big_bytes >> 20 {
            file.write_all(&block)?;
        }
    }
    client
        .put_object()
        .bucket(BUCKET)
        .key("big.bin")
        .body(aws_sdk_s3::primitives::ByteStream::from_path(&big).await?)
        .send()
        .await
        .context("uploading the large object")?;
    let uploads = futures::stream::iter(0..small_count).map(|i| {
        let client = client.clone();
        async move {
            client
                .put_object()
                .bucket(BUCKET)
                .key(format!("small/{i:05}.txt"))
                .body(vec![b'a' + (i % 26) as u8; 4096].into())
                .send()
                .await
        }
    });
    use futures::StreamExt as _;
    for result in uploads.buffer_unordered(32).collect::<Vec<_>>().await {
        result.context("uploading a small object")?;
    }

    let fetcher = S3Fetcher::new(S3Defaults {
        endpoint: Some(endpoint.to_owned()),
        region: "us-east-1".to_owned(),
        force_path_style: true,
    });
    let source = |key: &str| S3Source {
        bucket: BUCKET.to_owned(),
        key: key.to_owned(),
    };
    // Each side once untimed, so both find the server's caches equally warm.
    fetcher
        .fetch(&source("big.bin"), None, &dir.join("warm.bin"), u64::MAX)
        .await?;
    let started = Instant::now();
    fetcher
        .fetch(&source("big.bin"), None, &dir.join("ours.bin"), u64::MAX)
        .await?;
    let ours_big = started.elapsed();
    let started = Instant::now();
    let fetched = fetcher
        .fetch(&source("small/"), None, &dir.join("ours-small"), u64::MAX)
        .await?;
    let ours_small = started.elapsed();
    anyhow::ensure!(
        fetched.bytes == small_count as u64 * 4096,
        "fetched {} bytes of small objects",
        fetched.bytes
    );

    let curl = |out: &Path| {
        let mut command = std::process::Command::new("curl");
        command
            .args(["-sSf", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
            .arg(format!("{key}:{secret}"))
            .arg("-o")
            .arg(out)
            .arg(format!("{endpoint}/{BUCKET}/big.bin"));
        command
    };
    timed(&mut curl(&dir.join("curl-warm.bin")), "curl")?;
    let curl_big = timed(&mut curl(&dir.join("curl.bin")), "curl")?;
    let aws_small = timed(
        std::process::Command::new(&args.aws)
            .args(["--endpoint-url", endpoint, "--region", "us-east-1"])
            .args(["s3", "cp", "--recursive", "--quiet"])
            .arg(format!("s3://{BUCKET}/small/"))
            .arg(dir.join("aws-small")),
        "the aws CLI (pip install awscli)",
    )?;

    let mb_s = |d: Duration| big_bytes as f64 / d.as_secs_f64() / 1e6;
    let per_s = |d: Duration| small_count as f64 / d.as_secs_f64();
    Ok(vec![
        Figure {
            id: "B6",
            what: "S3 staging, one large object",
            unit: "MB/s",
            measured: mb_s(ours_big),
            baseline: Some(mb_s(curl_big)),
            ratio: Some(curl_big.as_secs_f64() / ours_big.as_secs_f64() * 100.0),
            ratio_unit: "% of curl",
            target: ">= 90% of curl",
            meets: Some(ours_big.as_secs_f64() <= curl_big.as_secs_f64() / 0.9),
            details: serde_json::json!({"bytes": big_bytes, "baseline": "curl --aws-sigv4, same object"}),
        },
        Figure {
            id: "B6",
            what: "S3 staging, 1,000 objects of 4 KiB under a prefix",
            unit: "obj/s",
            measured: per_s(ours_small),
            baseline: Some(per_s(aws_small)),
            ratio: Some(aws_small.as_secs_f64() / ours_small.as_secs_f64()),
            ratio_unit: "x aws cli",
            target: ">= 5x aws cli on small objects",
            meets: Some(aws_small.as_secs_f64() >= 5.0 * ours_small.as_secs_f64()),
            details: serde_json::json!({"objects": small_count, "baseline": "aws s3 cp --recursive"}),
        },
    ])
}
