//! Where a job's program and inputs come from, as the CLI sees them: a local file is
//! hashed and named by its CID (uploaded only if the submission says the store lacks it), a
//! local directory is uploaded and replaced by its CID; a CID, URL or S3 source is passed on.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use shoal::proto::JobSpec;
use shoal::spec::SpecDocument;

use crate::client::Clients;

/// A spec ready to submit, and the local files it names by the CID computed here without
/// having sent them (the store very likely holds them: the same program, run again).
#[derive(Debug)]
pub struct Resolved {
    pub spec: JobSpec,
    pub unsent: Vec<Unsent>,
}

/// A local file the spec names by its CID, not yet uploaded.
#[derive(Debug, Clone)]
pub struct Unsent {
    pub path: PathBuf,
    pub cid: String,
}

/// Turns a spec document into a submittable spec: local program and input paths (relative
/// to `base`) are replaced by their CIDs. A file is hashed here and sent only if the
/// submission says the store lacks it ([`Resolved::upload_unsent`]); a directory is
/// uploaded at once.
pub async fn resolve_document(
    clients: &mut Clients,
    document: SpecDocument,
    base: &Path,
) -> anyhow::Result<Resolved> {
    let mut spec = document.to_proto()?;
    let mut unsent = Vec::new();
    let (program, name) =
        resolve_source(clients, &spec.program, base, "program", &mut unsent).await?;
    if spec.program_name.is_empty() {
        spec.program_name = name;
    }
    spec.program = program;
    for (i, input) in spec.inputs.iter_mut().enumerate() {
        if !input.sources.is_empty() {
            continue; // a list of URLs, CIDs or S3 objects: sent as it is
        }
        let field = format!("inputs[{i}].source");
        input.source = resolve_source(clients, &input.source, base, &field, &mut unsent)
            .await?
            .0;
    }
    Ok(Resolved { spec, unsent })
}

impl Resolved {
    /// Uploads the files the orchestrator said its store lacks (`missing`: indices into
    /// `unsent`, as the submission listed them). A file that changed since it was hashed
    /// gets its new CID in the spec.
    pub async fn upload_unsent(
        &mut self,
        clients: &mut Clients,
        missing: &[usize],
    ) -> anyhow::Result<()> {
        let files: Vec<Unsent> = missing
            .iter()
            .filter_map(|&i| self.unsent.get(i).cloned())
            .collect();
        for file in files {
            let cid = super::data::upload(clients, &file.path, true).await?;
            if cid != file.cid {
                let spec = &mut self.spec;
                for source in std::iter::once(&mut spec.program)
                    .chain(spec.inputs.iter_mut().map(|input| &mut input.source))
                {
                    if *source == file.cid {
                        source.clone_from(&cid);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Files at least this big are hashed on the blocking pool; smaller ones (most programs)
/// in place, in microseconds.
const HASH_IN_PLACE: u64 = 1 << 20;

/// The CID the store gives the file at `path` when it is uploaded (the same UnixFS DAG).
async fn file_cid(path: &Path, size: u64) -> anyhow::Result<String> {
    fn hash(path: &Path) -> std::io::Result<String> {
        use std::io::Read as _;
        let mut file = std::fs::File::open(path)?;
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
    }
    let hashed = if size < HASH_IN_PLACE {
        hash(path)
    } else {
        let owned = path.to_owned();
        tokio::task::spawn_blocking(move || hash(&owned)).await?
    };
    hashed.with_context(|| format!("cannot read {}", path.display()))
}

/// A local file is hashed (and listed in `unsent`), a local directory uploaded; a CID is
/// kept. Returns the CID and a display name.
pub async fn resolve_source(
    clients: &mut Clients,
    source: &str,
    base: &Path,
    field: &str,
    unsent: &mut Vec<Unsent>,
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
        // A file is named by its CID, computed here: the submission says whether the store
        // lacks it, so a program run again costs no upload and no lookup.
        let cid = if let Some(known) = unsent.iter().find(|file| file.path == path) {
            // The same file twice (the program as an input too): hashed once.
            known.cid.clone()
        } else if meta.is_file() {
            let cid = file_cid(&path, meta.len()).await?;
            unsent.push(Unsent {
                path: path.clone(),
                cid: cid.clone(),
            });
            cid
        } else {
            super::data::upload(clients, &path, true).await?
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
