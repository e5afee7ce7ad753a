//! Fetching `s3://` inputs with aws-sdk-s3: one object as a file, or every object below a
//! prefix (or matching a glob) as a directory keeping their relative paths. Endpoint,
//! region and path-style addressing come from the input's settings, else the executor's;
//! credentials from the standard AWS chain. Used by executors (inputs) and by the
//! orchestrator (`CopyFromS3`). Also uploads result trees for the `s3://` publisher. The
//! SDK retries throttling and transient failures itself.

mod upload;

pub use upload::{MULTIPART_THRESHOLD, S3Uploaded};

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt as _, TryStreamExt as _};

use crate::content::transfer::check_tree_path;
use crate::data::DataError;
use crate::proto::{EntryKind, S3Options};
use crate::spec::source::{S3Selection, S3Source, glob_matches};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use tokio::io::AsyncWriteExt;

/// Daemon-wide S3 settings, used where a request or an input names none. The same flags
/// on the executor (inputs, programs) and the orchestrator (`CopyFromS3`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct S3Defaults {
    /// S3 endpoint for sources that name none (an S3-compatible server). Default: AWS.
    #[arg(long = "s3-endpoint", env = "SHOAL_S3_ENDPOINT")]
    pub endpoint: Option<String>,
    /// S3 region for sources that name none.
    #[arg(
        long = "s3-region",
        env = "SHOAL_S3_REGION",
        default_value = "us-east-1"
    )]
    pub region: String,
    /// Path-style S3 addressing (bucket in the path) for every source.
    #[arg(long = "s3-path-style", env = "SHOAL_S3_PATH_STYLE")]
    pub force_path_style: bool,
}

impl S3Defaults {
    /// AWS in us-east-1, virtual-host addressing.
    pub fn aws() -> Self {
        S3Defaults {
            endpoint: None,
            region: "us-east-1".to_owned(),
            force_path_style: false,
        }
    }
}

/// Objects of one prefix input fetched at once.
const PARALLEL_GETS: usize = 16;
/// Write buffer per downloaded object.
const WRITE_BUFFER: usize = 1 << 20;

/// S3 clients by (endpoint, region, path style), built once each.
pub struct S3Fetcher {
    defaults: S3Defaults,
    clients: tokio::sync::Mutex<HashMap<(String, String, bool), aws_sdk_s3::Client>>,
}

/// What a fetch wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct S3Fetched {
    pub bytes: u64,
    pub directory: bool,
}

impl S3Fetcher {
    pub fn new(defaults: S3Defaults) -> Self {
        S3Fetcher {
            defaults,
            clients: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The endpoint, region and addressing a request with `options` uses: its own, else
    /// this daemon's defaults.
    pub fn effective(&self, options: Option<&S3Options>) -> S3Options {
        S3Options {
            endpoint: options
                .map(|o| o.endpoint.clone())
                .filter(|e| !e.is_empty())
                .or_else(|| self.defaults.endpoint.clone())
                .unwrap_or_default(),
            region: options
                .map(|o| o.region.clone())
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| self.defaults.region.clone()),
            force_path_style: options.is_some_and(|o| o.force_path_style)
                || self.defaults.force_path_style,
            version_id: String::new(),
        }
    }

    /// A client for `options` (else this daemon's defaults), built once per setting.
    pub async fn client(&self, options: Option<&S3Options>) -> aws_sdk_s3::Client {
        let S3Options {
            endpoint,
            region,
            force_path_style: path_style,
            ..
        } = self.effective(options);
        let key = (endpoint.clone(), region.clone(), path_style);
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(&key) {
            return client.clone();
        }
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region))
            .load()
            .await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared).force_path_style(path_style);
        if !endpoint.is_empty() {
            config = config.endpoint_url(endpoint);
        }
        let client = aws_sdk_s3::Client::from_conf(config.build());
        clients.insert(key, client.clone());
        client
    }

    /// Fetches `source` to `dest` (a file for an object, a directory otherwise), refusing
    /// more than `max_bytes`. The error says what went wrong, for a STAGING failure.
    pub async fn fetch(
        &self,
        source: &S3Source,
        options: Option<&S3Options>,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<S3Fetched, DataError> {
        let listing = self.list(source, options).await?;
        self.fetch_listed(&listing, options, dest, max_bytes).await
    }

    /// What `source` names right now: the object (HeadObject), or the objects below the
    /// prefix or matching the glob (ListObjectsV2), each with its ETag and size. Fails if
    /// nothing matches, unless the prefix is an empty folder (its `prefix/` marker object).
    pub async fn list(
        &self,
        source: &S3Source,
        options: Option<&S3Options>,
    ) -> Result<S3Listing, DataError> {
        let client = self.client(options).await;
        let bucket = source.bucket.clone();
        let (prefix, pattern) = match source.selection() {
            S3Selection::Object(key) => {
                let version = options
                    .map(|o| o.version_id.clone())
                    .filter(|v| !v.is_empty());
                let head = client
                    .head_object()
                    .bucket(&bucket)
                    .key(key)
                    .set_version_id(version.clone())
                    .send()
                    .await
                    .map_err(|e| classify(&e, describe(&e)));
                let head = match head {
                    Ok(head) => head,
                    Err(head_error) => {
                        // A HEAD answer has no body, so S3 cannot say what is missing (the
                        // key, the bucket, the version): a GET's error names it.
                        let error = match client
                            .get_object()
                            .bucket(&bucket)
                            .key(key)
                            .set_version_id(version)
                            .send()
                            .await
                        {
                            Err(e) => classify(&e, describe(&e)),
                            Ok(_) => head_error,
                        };
                        return Err(error.context(format!("cannot get s3://{bucket}/{key}")));
                    }
                };
                return Ok(S3Listing {
                    bucket,
                    directory: false,
                    objects: vec![ListedObject {
                        key: key.to_owned(),
                        relative: String::new(),
                        etag: head.e_tag().map(str::to_owned),
                        size: head.content_length().unwrap_or(0).max(0) as u64,
                        version,
                    }],
                    empty_directories: Vec::new(),
                });
            }
            S3Selection::Prefix(prefix) => (prefix, None),
            S3Selection::Glob { prefix, pattern } => (prefix, Some(pattern)),
        };
        let mut listing = S3Listing {
            bucket: bucket.clone(),
            directory: true,
            objects: Vec::new(),
            empty_directories: Vec::new(),
        };
        let mut marked = false;
        let mut pages = client
            .list_objects_v2()
            .bucket(&bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| listing_failed(&e, &bucket, prefix))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let relative = &key[prefix.len().min(key.len())..];
                if relative.is_empty() {
                    // The prefix's own marker ("folder/"): the folder exists, if empty.
                    marked |= pattern.is_none();
                    continue;
                }
                // A directory marker ("folder/") holds nothing but keeps an empty directory.
                if let Some(directory) = relative.strip_suffix('/') {
                    if pattern.is_none() && check_tree_path(directory).is_ok() {
                        listing.empty_directories.push(directory.to_owned());
                    }
                    continue;
                }
                if let Some(pattern) = pattern
                    && (relative.contains('/') || !glob_matches(pattern, relative))
                {
                    continue;
                }
                check_tree_path(relative).map_err(|_| {
                    DataError::Invalid(format!(
                        "the object key {key:?} cannot be a file path below the prefix"
                    ))
                })?;
                listing.objects.push(ListedObject {
                    key: key.to_owned(),
                    relative: relative.to_owned(),
                    etag: object.e_tag().map(str::to_owned),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    version: None,
                });
            }
        }
        // An empty folder (only its marker, or markers below it) is an empty directory.
        let folder = marked || !listing.empty_directories.is_empty();
        if listing.objects.is_empty() && !folder {
            return Err(nothing_matches(&bucket, prefix, pattern));
        }
        Ok(listing)
    }

    /// The top-level entries of a prefix or glob, for sharding: the objects directly below
    /// the prefix (those matching the glob), and for a prefix each sub-prefix once, as a
    /// directory (`name/`), in the server's (name) order; one level is listed, not the
    /// whole tree. Fails past `max` entries, or when nothing matches.
    pub async fn list_top_level(
        &self,
        source: &S3Source,
        options: Option<&S3Options>,
        max: usize,
    ) -> Result<Vec<TopLevelEntry>, DataError> {
        let client = self.client(options).await;
        let bucket = &source.bucket;
        let (prefix, pattern) = match source.selection() {
            S3Selection::Object(key) => {
                return Err(DataError::Refused(format!(
                    "s3://{bucket}/{key} is one object"
                )));
            }
            S3Selection::Prefix(prefix) => (prefix, None),
            S3Selection::Glob { prefix, pattern } => (prefix, Some(pattern)),
        };
        let mut pages = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        let mut entries = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| listing_failed(&e, bucket, prefix))?;
            let objects = page
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .map(|key| (key, false));
            let directories = page
                .common_prefixes()
                .iter()
                .filter_map(|p| p.prefix())
                .filter(|_| pattern.is_none())
                .map(|key| (key, true));
            for (key, directory) in objects.chain(directories) {
                let name = key[prefix.len().min(key.len())..].trim_end_matches('/');
                // The prefix's own marker object, and names a glob does not match.
                if name.is_empty() || pattern.is_some_and(|p| !glob_matches(p, name)) {
                    continue;
                }
                entries.push(TopLevelEntry {
                    key: key.to_owned(),
                    name: name.to_owned(),
                    directory,
                });
                if entries.len() > max {
                    return Err(DataError::TooLarge(format!(
                        "s3://{bucket}/{prefix} has more than {max} entries"
                    )));
                }
            }
        }
        if entries.is_empty() {
            return Err(nothing_matches(bucket, prefix, pattern));
        }
        // A page gives its objects, then its sub-prefixes: merged into one name order.
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }

    /// Fetches exactly the listed objects (each request is conditional on the listed ETag,
    /// so an object replaced since is refused rather than mixed in) to `dest`.
    pub async fn fetch_listed(
        &self,
        listing: &S3Listing,
        options: Option<&S3Options>,
        dest: &Path,
        max_bytes: u64,
    ) -> Result<S3Fetched, DataError> {
        let bucket = &listing.bucket;
        let total = listing.bytes();
        if total > max_bytes {
            return Err(DataError::TooLarge(format!(
                "s3://{bucket}/ holds {total} bytes for this input, more than the input limit of {max_bytes} bytes"
            )));
        }
        let client = self.client(options).await;
        if !listing.directory {
            let object = &listing.objects[0];
            let budget = AtomicU64::new(max_bytes);
            let bytes = get_object(&client, bucket, object, dest, &budget).await?;
            return Ok(S3Fetched {
                bytes,
                directory: false,
            });
        }
        tokio::fs::create_dir_all(dest)
            .await
            .map_err(|e| local(dest, e))?;
        for directory in &listing.empty_directories {
            let path = dest.join(directory);
            tokio::fs::create_dir_all(&path)
                .await
                .map_err(|e| local(&path, e))?;
        }
        // Small objects are dominated by round trips, so several are fetched at once; the
        // budget is shared, so together they still cannot exceed the input limit.
        let budget = AtomicU64::new(max_bytes);
        // Built up front rather than in a `map` closure: a closure over these borrows
        // makes the future not provably Send (rust-lang/rust#102211).
        let gets: Vec<_> = listing
            .objects
            .iter()
            .map(|object| {
                get_object(
                    &client,
                    bucket,
                    object,
                    dest.join(&object.relative),
                    &budget,
                )
            })
            .collect();
        let fetches = futures::stream::iter(gets).buffer_unordered(PARALLEL_GETS);
        let written: u64 = fetches
            .try_fold(0u64, |sum, bytes| async move { Ok(sum + bytes) })
            .await?;
        Ok(S3Fetched {
            bytes: written,
            directory: true,
        })
    }
}

/// One top-level entry of a prefix ([`S3Fetcher::list_top_level`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopLevelEntry {
    /// The object's key, or the sub-prefix (ending in `/`).
    pub key: String,
    /// Its name below the prefix, without a trailing `/`.
    pub name: String,
    /// A sub-prefix, fetched as a directory.
    pub directory: bool,
}

/// One object of an [`S3Listing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    /// Its path below the prefix (empty for a single object).
    pub relative: String,
    pub etag: Option<String>,
    pub size: u64,
    pub version: Option<String>,
}

/// What an S3 source named at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Listing {
    pub bucket: String,
    /// A prefix or glob (a directory), or one object (a file).
    pub directory: bool,
    pub objects: Vec<ListedObject>,
    /// Empty directories, from `name/` marker objects.
    pub empty_directories: Vec<String>,
}

impl S3Listing {
    /// Bytes of all the objects.
    pub fn bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }

    /// A digest of exactly what was listed — bucket, keys, ETags, sizes, versions — for
    /// keying a cache; None if an object has no ETag (then nothing identifies its bytes).
    pub fn fingerprint(&self) -> Option<String> {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(self.bucket.as_bytes());
        hasher.update([u8::from(self.directory)]);
        for object in &self.objects {
            let etag = object.etag.as_deref()?;
            for part in [&object.key, &object.relative, etag] {
                hasher.update((part.len() as u64).to_le_bytes());
                hasher.update(part.as_bytes());
            }
            hasher.update(object.size.to_le_bytes());
            hasher.update(object.version.as_deref().unwrap_or_default().as_bytes());
        }
        for directory in &self.empty_directories {
            hasher.update((directory.len() as u64).to_le_bytes());
            hasher.update(directory.as_bytes());
        }
        Some(crate::spec::source::hex(&hasher.finalize()))
    }
}

/// An S3 error on one line: S3's code and message, or the SDK's whole error chain.
pub fn describe<E, R>(error: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match error.as_service_error() {
        Some(service) => match (service.code(), service.message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_owned(),
            _ => DisplayErrorContext(error).to_string(),
        },
        None => DisplayErrorContext(error).to_string(),
    }
}

async fn get_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    object: &ListedObject,
    dest: impl AsRef<Path>,
    budget: &AtomicU64,
) -> Result<u64, DataError> {
    let dest = dest.as_ref();
    let max_bytes = budget.load(Ordering::Relaxed);
    let key = &object.key;
    let mut answer = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_version_id(object.version.clone())
        .set_if_match(object.etag.clone())
        .send()
        .await
        .map_err(|e| {
            let error = match e.raw_response().map(|r| r.status().as_u16()) {
                Some(412) => {
                    DataError::Invalid("the object changed while it was being fetched".to_owned())
                }
                _ => classify(&e, describe(&e)),
            };
            error.context(format!("cannot get s3://{bucket}/{key}"))
        })?;
    if let Some(length) = answer.content_length()
        && length as u64 > max_bytes
    {
        return Err(DataError::TooLarge(format!(
            "s3://{bucket}/{key} is {length} bytes, more than the input limit of {max_bytes} bytes"
        )));
    }
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| local(parent, e))?;
    }
    let file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| local(dest, e))?;
    // The body arrives in pieces of a few KiB; a large buffer turns them into few large
    // writes (each tokio file write is a trip to the blocking pool).
    let mut file = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut written = 0u64;
    while let Some(chunk) = answer.body.next().await {
        let chunk = chunk.map_err(|e| {
            DataError::Unavailable(format!(
                "reading s3://{bucket}/{key} broke off after {written} bytes: {e}"
            ))
        })?;
        written += chunk.len() as u64;
        let within_budget = budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(chunk.len() as u64)
            })
            .is_ok();
        if !within_budget {
            return Err(DataError::TooLarge(format!(
                "s3://{bucket}/{key} is more than the input limit of {max_bytes} bytes"
            )));
        }
        file.write_all(&chunk).await.map_err(|e| local(dest, e))?;
    }
    file.flush().await.map_err(|e| local(dest, e))?;
    Ok(written)
}

/// A local write that failed.
/// A page of a ListObjectsV2 of `prefix` that failed.
fn listing_failed<E>(
    error: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    bucket: &str,
    prefix: &str,
) -> DataError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = format!("cannot list s3://{bucket}/{prefix}: {}", describe(error));
    classify(error, message)
}

/// A listing of `prefix` (with a glob `pattern` below it) that found nothing.
fn nothing_matches(bucket: &str, prefix: &str, pattern: Option<&str>) -> DataError {
    let what = pattern
        .map(|p| format!("{prefix}{p}"))
        .unwrap_or_else(|| prefix.to_owned());
    DataError::Refused(format!("no objects match s3://{bucket}/{what}"))
}

pub(crate) fn local(path: &Path, error: std::io::Error) -> DataError {
    DataError::Local(format!("cannot write {}: {error}", path.display()))
}

/// An S3 call's failure, `reason` being its message: one that never got an answer, or got
/// a server error or throttling (after the SDK's own retries), may pass; any other answer
/// is a refusal.
pub(crate) fn classify<E>(
    error: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    reason: String,
) -> DataError {
    use aws_sdk_s3::error::SdkError;
    match error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            DataError::Unavailable(reason)
        }
        SdkError::ServiceError(service) => {
            DataError::from_http_status(service.raw().status().as_u16(), reason)
        }
        _ => DataError::Refused(reason),
    }
}
