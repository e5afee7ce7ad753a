//! `shoal data put|get`, and the upload helper other commands use for local files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use shoal::proto::DownloadRequest;

use crate::client::{Clients, Target, connect, unless_stalled};

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Store a local file or directory; prints its CID.
    Put {
        path: PathBuf,
        /// Print nothing but the CID.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Copy a URL or an s3:// source into the store (the orchestrator fetches it); prints
    /// the CID.
    Cp {
        /// An http(s) URL (optionally `#sha256=HEX`), or s3://bucket/key, s3://bucket/prefix/
        /// or s3://bucket/prefix/*.ext.
        source: String,
        /// S3 endpoint (an S3-compatible server), e.g. http://127.0.0.1:8333.
        #[arg(long)]
        s3_endpoint: Option<String>,
        /// S3 region.
        #[arg(long)]
        s3_region: Option<String>,
        /// Path-style S3 addressing.
        #[arg(long)]
        s3_path_style: bool,
    },
    /// Make sure the store holds a whole CID, fetching what it lacks from the
    /// orchestrator's IPFS gateways (every block verified); prints the CID and its size.
    Pin { cid: String },
    /// Fetch a CID (file or directory) to DEST (default: the CID as a name).
    Get {
        cid: String,
        dest: Option<PathBuf>,
        /// A path inside a directory CID.
        #[arg(long, default_value = "")]
        path: String,
    },
}

pub async fn run(target: &Target, command: DataCommand) -> anyhow::Result<()> {
    let mut clients = connect(target).await?;
    match command {
        DataCommand::Put { path, quiet } => {
            let cid = upload(&mut clients, &path, !quiet).await?;
            crate::outln!("{cid}");
        }
        DataCommand::Cp {
            source,
            s3_endpoint,
            s3_region,
            s3_path_style,
        } => {
            let response = if source.starts_with("s3://") {
                let s3 = shoal::proto::S3Options {
                    endpoint: s3_endpoint.unwrap_or_default(),
                    region: s3_region.unwrap_or_default(),
                    force_path_style: s3_path_style,
                    version_id: String::new(),
                };
                clients
                    .storage
                    .copy_from_s3(shoal::proto::CopyFromS3Request {
                        source,
                        s3: Some(s3),
                    })
                    .await?
            } else {
                clients
                    .storage
                    .copy_from_url(shoal::proto::CopyFromUrlRequest { url: source })
                    .await?
            };
            crate::outln!("{}", response.into_inner().cid);
        }
        DataCommand::Pin { cid } => {
            let cid = cid.trim_start_matches("ipfs://").to_owned();
            let pinned = clients
                .storage
                .pin(shoal::proto::PinRequest { cid })
                .await?
                .into_inner();
            crate::outln!("{}", pinned.cid);
            crate::errln!(
                "pinned: {} ({} block(s) fetched from IPFS gateways)",
                shoal::spec::units::format_size(pinned.size),
                pinned.blocks_fetched
            );
        }
        DataCommand::Get { cid, dest, path } => {
            let dest = dest.unwrap_or_else(|| PathBuf::from(cid.trim_start_matches("ipfs://")));
            let summary = download(&mut clients, &cid, &path, &dest).await?;
            crate::errln!(
                "{} file(s), {} written to {}",
                summary.files,
                shoal::spec::units::format_size(summary.bytes),
                dest.display()
            );
        }
    }
    Ok(())
}

/// Uploads a local file or directory and returns its CID, with a progress bar on stderr
/// when `progress` is set, stderr is a terminal and the upload is at least 1 MiB.
#[tracing::instrument(name = "upload", skip_all, fields(path = %path.display()))]
pub async fn upload(clients: &mut Clients, path: &Path, progress: bool) -> anyhow::Result<String> {
    let total: u64 =
        shoal::content::local_tree::walk_async(path, shoal::content::local_tree::TreeBounds::LOCAL)
            .await?
            .iter()
            .map(|e| e.size)
            .sum();
    let sent = Arc::new(AtomicU64::new(0));
    let bar = progress
        .then(|| ProgressBar::start(format!("uploading {}", path.display()), total, sent.clone()))
        .flatten();
    if progress && bar.is_none() && total >= 1 << 20 {
        // No terminal for a bar: still say why the wait.
        let size = shoal::spec::units::format_size(total);
        crate::errln!("Uploading {} ({size})", path.display());
    }
    let upload = shoal::content::transfer::upload_path(
        &mut clients.storage,
        path,
        shoal::content::transfer::TreeBounds::LOCAL,
        Some(sent.clone()),
    );
    let result = unless_stalled(clients.stall_timeout, &sent, async { Ok(upload.await?) }).await;
    drop(bar);
    let response = result.with_context(|| format!("cannot upload {}", path.display()))?;
    Ok(response.cid)
}

/// Downloads a CID (or a path inside it) to `dest`, with a progress bar on a terminal.
pub async fn download(
    clients: &mut Clients,
    cid: &str,
    path: &str,
    dest: &Path,
) -> anyhow::Result<shoal::content::transfer::DownloadSummary> {
    let storage = &mut clients.storage;
    let total = storage
        .stat(shoal::proto::StatRequest {
            cid: cid.to_owned(),
            path: path.to_owned(),
        })
        .await?
        .into_inner()
        .size;
    let received = Arc::new(AtomicU64::new(0));
    let bar = ProgressBar::start(format!("downloading {cid}"), total, received.clone());
    let request = DownloadRequest {
        cid: cid.to_owned(),
        path: path.to_owned(),
        offset: 0,
    };
    let download = async {
        let stream = storage.download(request).await?.into_inner();
        let progress = Some(received.clone());
        Ok(shoal::content::transfer::download_to_with_progress(stream, dest, progress).await?)
    };
    let summary = unless_stalled(clients.stall_timeout, &received, download).await;
    drop(bar);
    summary
}

/// A progress bar on stderr fed from a byte counter, shown only on a terminal and only for
/// transfers worth watching; cleared when dropped.
struct ProgressBar {
    bar: indicatif::ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl ProgressBar {
    fn start(message: String, total: u64, counter: Arc<AtomicU64>) -> Option<Self> {
        use std::io::IsTerminal as _;
        if total < 1 << 20 || !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(message);
        let shown = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                shown.set_position(counter.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Some(ProgressBar { bar, ticker })
    }
}

impl Drop for ProgressBar {
    fn drop(&mut self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
