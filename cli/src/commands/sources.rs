//! Where a job's program and inputs come from, as the CLI sees them: a local file or
//! directory is uploaded (or, when large and already stored, found by its CID) and replaced
//! by its CID; a CID, URL or S3 source is passed on.

use std::path::Path;

use anyhow::bail;
use shoal::proto::{JobSpec, StatRequest};
use shoal::spec::SpecDocument;

use crate::client::Clients;

/// Turns a spec document into a submittable spec: local program and input paths (relative
/// to `base`) are uploaded and replaced by their CIDs.
pub async fn resolve_document(
    clients: &mut Clients,
    document: SpecDocument,
    base: &Path,
) -> anyhow::Result<JobSpec> {
    let mut spec = document.to_proto()?;
    let (program, name) = resolve_source(clients, &spec.program, base, "program").await?;
    if spec.program_name.is_empty() {
        spec.program_name = name;
    }
    spec.program = program;
    for (i, input) in spec.inputs.iter_mut().enumerate() {
        input.source = resolve_source(clients, &input.source, base, &format!("inputs[{i}].source"))
            .await?
            .0;
    }
    Ok(spec)
}

/// Files at least this big are hashed and looked up before they are uploaded: below it,
/// sending the file is one round trip just as the lookup is.
const HASH_BEFORE_UPLOAD: u64 = 1 << 20;

/// The CID the store gives the file at `path` (the same UnixFS DAG its upload builds), if
/// the store already holds it; None if it does not, or the lookup failed (then it is
/// uploaded as usual).
async fn already_stored(clients: &mut Clients, path: &Path) -> Option<String> {
    let owned = path.to_owned();
    let cid = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        use std::io::Read as _;
        let mut file = std::fs::File::open(&owned)?;
        let mut builder = shoal::content::unixfs::FileBuilder::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            builder.write(&buffer[..n]);
        }
        Ok(builder.finish().1.cid.to_string())
    })
    .await
    .ok()?
    .ok()?;
    let stat = clients
        .storage
        .stat(StatRequest {
            cid: cid.clone(),
            path: String::new(),
        })
        .await;
    stat.ok().map(|_| cid)
}

/// A local path is uploaded; a CID is kept. Returns the CID and a display name.
pub async fn resolve_source(
    clients: &mut Clients,
    source: &str,
    base: &Path,
    field: &str,
) -> anyhow::Result<(String, String)> {
    if source.is_empty() {
        bail!("{field} is required");
    }
    let path = base.join(source);
    if field == "program" && path.is_dir() {
        crate::usage!(
            "the program must be a file: {} is a directory",
            path.display()
        );
    }
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        // A large file the store already holds (the same program, run again) is found by
        // its CID, computed here, instead of being sent again.
        let known = if meta.is_file() && meta.len() >= HASH_BEFORE_UPLOAD {
            already_stored(clients, &path).await
        } else {
            None
        };
        let cid = match known {
            Some(cid) => cid,
            None => super::data::upload(clients, &path, true).await?,
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| cid.clone());
        return Ok((cid, name));
    }
    match source.parse::<shoal::spec::source::Source>() {
        Ok(shoal::spec::source::Source::Http(http)) => {
            return Ok((source.to_owned(), http.file_name()));
        }
        Ok(shoal::spec::source::Source::S3(s3)) => return Ok((source.to_owned(), s3.file_name())),
        _ => {}
    }
    if shoal::content::cid::looks_like_cid(source) {
        return Ok((
            source.to_owned(),
            source.trim_start_matches("ipfs://").to_owned(),
        ));
    }
    let error = std::fs::symlink_metadata(&path)
        .err()
        .unwrap_or_else(|| std::io::ErrorKind::NotFound.into());
    crate::usage!("{field}: {}", super::wasm::not_found(source, &error))
}
