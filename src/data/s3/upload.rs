//! Uploading a result tree for the `s3://` publisher: one object per file keyed by its
//! relative path, multipart past [`MULTIPART_THRESHOLD`], and a marker object per empty
//! directory so the tree comes back whole.

use std::path::Path;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::io::AsyncReadExt;

use super::*;
use crate::proto::S3Options;

impl S3Fetcher {
    /// Uploads the file tree under `root` to `s3://bucket/prefix...`, one object per file
    /// keyed by its relative path (multipart past [`MULTIPART_THRESHOLD`]), and a `name/`
    /// marker object per empty directory so the tree comes back whole.
    pub async fn upload_tree(
        &self,
        bucket: &str,
        prefix: &str,
        options: Option<&S3Options>,
        root: &Path,
        bounds: crate::content::local_tree::TreeBounds,
    ) -> Result<S3Uploaded, DataError> {
        let client = self.client(options).await;
        let entries = crate::content::local_tree::walk_async(root, bounds)
            .await
            .map_err(|e| DataError::Local(e.to_string()))?;
        let mut uploaded = S3Uploaded::default();
        for (i, entry) in entries.iter().enumerate() {
            let key = format!("{prefix}{}", entry.relative);
            match entry.kind {
                EntryKind::File => {
                    put_file(&client, bucket, &key, &entry.absolute, entry.size).await?;
                    uploaded.objects += 1;
                    uploaded.bytes += entry.size;
                }
                EntryKind::Directory if !entry.relative.is_empty() => {
                    // `walk` lists a directory's children right after it.
                    let inside = format!("{}/", entry.relative);
                    let empty = !entries
                        .get(i + 1)
                        .is_some_and(|next| next.relative.starts_with(&inside));
                    if empty {
                        put_object(
                            &client,
                            bucket,
                            &format!("{key}/"),
                            ByteStream::from(Vec::new()),
                        )
                        .await?;
                        uploaded.objects += 1;
                    }
                }
                _ => {}
            }
        }
        Ok(uploaded)
    }
}

/// What [`S3Fetcher::upload_tree`] uploaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct S3Uploaded {
    pub objects: u64,
    pub bytes: u64,
}

/// Files at least this big are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Size of each part of a multipart upload (S3 allows 5 MiB to 5 GiB, at most 10,000 parts).
const PART_SIZE: usize = 16 << 20;

async fn put_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    body: ByteStream,
) -> Result<(), DataError> {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body)
        .send()
        .await
        .map_err(|e| {
            classify(
                &e,
                format!("cannot put s3://{bucket}/{key}: {}", describe(&e)),
            )
        })?;
    Ok(())
}

async fn put_file(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    path: &Path,
    size: u64,
) -> Result<(), DataError> {
    if size < MULTIPART_THRESHOLD {
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| DataError::Local(format!("cannot read {}: {e}", path.display())))?;
        put_object(client, bucket, key, body).await?;
        return Ok(());
    }
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| {
            let reason = format!(
                "cannot start uploading s3://{bucket}/{key}: {}",
                describe(&e)
            );
            classify(&e, reason)
        })?;
    let upload_id = created
        .upload_id()
        .ok_or_else(|| DataError::Invalid(format!("S3 gave no upload id for s3://{bucket}/{key}")))?
        .to_owned();
    let parts = upload_parts(client, bucket, key, &upload_id, path).await;
    let completed = match parts {
        Ok(parts) => client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                let reason = format!("cannot complete s3://{bucket}/{key}: {}", describe(&e));
                classify(&e, reason)
            }),
        Err(error) => Err(error),
    };
    if completed.is_err() {
        // Parts of an abandoned upload are stored (and billed) until aborted.
        let _ = client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .send()
            .await;
    }
    completed
}

async fn upload_parts(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    path: &Path,
) -> Result<Vec<CompletedPart>, DataError> {
    let io = |e: std::io::Error| DataError::Local(format!("cannot read {}: {e}", path.display()));
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    let mut parts = Vec::new();
    for number in 1.. {
        let mut part = Vec::with_capacity(PART_SIZE);
        while part.len() < PART_SIZE {
            let read = (&mut file)
                .take((PART_SIZE - part.len()) as u64)
                .read_to_end(&mut part)
                .await
                .map_err(io)?;
            if read == 0 {
                break;
            }
        }
        if part.is_empty() {
            break;
        }
        let answer = client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(part))
            .send()
            .await
            .map_err(|e| {
                let reason = format!(
                    "cannot upload part {number} of s3://{bucket}/{key}: {}",
                    describe(&e)
                );
                classify(&e, reason)
            })?;
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(answer.e_tag().map(str::to_owned))
                .build(),
        );
    }
    Ok(parts)
}
