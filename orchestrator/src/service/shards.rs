//! Accepting a sharded job: listing its sharded input's entries once, at submit (a CID
//! directory's entries, an S3 prefix's or glob's top-level objects and sub-prefixes, or the
//! sources it names), so the job's partition count is known and every partition, however
//! often it is retried or the orchestrator restarted, runs over the same entries.

use std::collections::HashSet;

use shoal::content::cid::ContentId;
use shoal::data::DataError;
use shoal::spec::source::{S3Selection, Source};
use shoal::spec::{ShardOrigin, ValidSpec, limits, validate_mount_path};

use crate::Orchestrator;
use crate::error::{Error, Result};
use crate::records::{ShardEntry, ShardListing};

/// The listing of `spec`'s sharded input and the spec with the partition count it makes;
/// None for a job without one. Errors name the input and say what to change.
pub async fn list_shards(
    orchestrator: &Orchestrator,
    spec: ValidSpec,
) -> Result<(ValidSpec, Option<ShardListing>)> {
    let Some(shard) = spec.shard() else {
        return Ok((spec, None));
    };
    let index = shard.index;
    let input = &spec.spec().inputs[index];
    let field = format!("inputs[{index}]");
    let entries = match &shard.origin {
        ShardOrigin::Source(source) => list_source(orchestrator, &field, source, input).await?,
        ShardOrigin::List(sources) => {
            let mut entries = Vec::with_capacity(sources.len());
            for (j, source) in sources.iter().enumerate() {
                let name = entry_name(orchestrator, source).await.ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "{field}.sources[{j}]: {source} has no file name to mount it under"
                    ))
                })?;
                entries.push(ShardEntry {
                    name,
                    source: input.sources[j].clone(),
                });
            }
            let unique: HashSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
            if unique.len() < entries.len()
                && let Some(names) = relative_names(sources)
            {
                for (entry, name) in entries.iter_mut().zip(names) {
                    entry.name = name;
                }
            }
            entries
        }
    };
    if entries.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{field}: {} has no entries to shard",
            describe(input)
        )));
    }
    if entries.len() > limits::MAX_SHARD_ENTRIES {
        return Err(Error::InvalidArgument(format!(
            "{field}: {} entries; a sharded input lists at most {}",
            entries.len(),
            limits::MAX_SHARD_ENTRIES
        )));
    }
    check_names(&field, &input.target, &entries)?;
    let size = spec.spec().shard_size.max(1) as usize;
    let partitions = entries.len().div_ceil(size);
    if partitions > limits::MAX_PARTITIONS as usize {
        return Err(Error::InvalidArgument(format!(
            "{field}: {} entries, {size} per partition, make {partitions} partitions, more \
             than {}; raise shard_size",
            entries.len(),
            limits::MAX_PARTITIONS
        )));
    }
    // A spec read back from a job (`job describe`) holds the count it was given.
    let given = spec.spec().partitions;
    if given != 0 && given as usize != partitions {
        return Err(Error::InvalidArgument(format!(
            "partitions: {given}, but {field} lists {} entries, which make {partitions} \
             partitions of {size}; leave partitions unset",
            entries.len()
        )));
    }
    let spec = spec.with_partitions(partitions as u32)?;
    Ok((spec, Some(ShardListing { entries })))
}

/// The top-level entries of a CID directory or an S3 prefix or glob.
async fn list_source(
    orchestrator: &Orchestrator,
    field: &str,
    source: &Source,
    input: &shoal::proto::InputSpec,
) -> Result<Vec<ShardEntry>> {
    match source {
        Source::Cid(cid) => {
            let entries = orchestrator
                .content()
                .directory_entries(cid)
                .await
                .map_err(|e| match e {
                    Error::InvalidArgument(m) => Error::InvalidArgument(format!(
                        "{field}: {m}; only a directory's entries can be sharded"
                    )),
                    Error::NotFound(m) if m.ends_with("is not in the store") => {
                        Error::NotFound(format!(
                            "{field}: {m}; a sharded CID's directory must be in the store, \
                             where its entries are listed (`shoal data pin {cid}` copies \
                             it from the IPFS gateways)"
                        ))
                    }
                    other => other,
                })?;
            Ok(entries
                .into_iter()
                .map(|(name, cid)| ShardEntry {
                    name,
                    source: cid.to_string(),
                })
                .collect())
        }
        Source::S3(s3) => {
            if let S3Selection::Object(_) = s3.selection() {
                return Err(Error::InvalidArgument(format!(
                    "{field}: {} is one object, a file; shard a prefix (ending in /) or a \
                     glob",
                    input.source
                )));
            }
            let listed = orchestrator
                .s3()
                .list_top_level(s3, input.s3.as_ref(), limits::MAX_SHARD_ENTRIES)
                .await
                .map_err(|error| match error {
                    // Nothing matched, or too much: the user's to change, not the source's.
                    DataError::Refused(m) if m.starts_with("no objects match") => {
                        Error::InvalidArgument(format!("{field}: {m}, nothing to shard"))
                    }
                    DataError::TooLarge(m) => Error::InvalidArgument(format!(
                        "{field}: {m}; a sharded input lists at most {}",
                        limits::MAX_SHARD_ENTRIES
                    )),
                    error => Error::Fetch {
                        action: format!("list {} to shard it", input.source),
                        error,
                    },
                })?;
            listed
                .into_iter()
                .map(|entry| {
                    // The executor reads `*` and `?` in a key's last segment as a glob.
                    if entry.name.contains(['*', '?']) {
                        return Err(Error::InvalidArgument(format!(
                            "{field}: the entry {:?} has a `*` or `?` in its name, which an \
                             s3:// source reads as a glob",
                            entry.name
                        )));
                    }
                    Ok(ShardEntry {
                        source: format!("s3://{}/{}", s3.bucket, entry.key),
                        name: entry.name,
                    })
                })
                .collect()
        }
        Source::Http(_) => Err(Error::InvalidArgument(format!(
            "{field}: a URL is one file; shard a list of URLs instead (`sources`, or `-i \
             @urls.txt:TARGET` with one URL per line)"
        ))),
    }
}

/// The name an entry of a `sources` list is mounted under: a URL's or an S3 source's file
/// name, or the name a CID was stored with (the CID itself without one).
async fn entry_name(orchestrator: &Orchestrator, source: &Source) -> Option<String> {
    match source {
        Source::Http(http) => http.name().map(str::to_owned),
        Source::S3(s3) => Some(s3.file_name()),
        Source::Cid(cid) => Some(stored_name(orchestrator, cid).await),
    }
}

async fn stored_name(orchestrator: &Orchestrator, cid: &ContentId) -> String {
    let text = cid.to_string();
    match orchestrator.store().name(&text).await {
        Ok(Some(name)) => name,
        _ => text,
    }
}

/// Names for URLs whose file names collide (`.../2024/01/part-0.parquet`,
/// `.../2024/02/part-0.parquet`): each URL's path below the directory all of them share,
/// `01/part-0.parquet` and `02/part-0.parquet`. None unless every source is a URL of one
/// origin (scheme, host and port).
fn relative_names(sources: &[Source]) -> Option<Vec<String>> {
    let urls = sources
        .iter()
        .map(|source| match source {
            Source::Http(http) => Some(&http.url),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    let origin = urls.first()?.origin();
    if urls.iter().any(|url| url.origin() != origin) {
        return None;
    }
    let paths: Vec<Vec<&str>> = urls
        .iter()
        .map(|url| {
            url.path_segments()
                .map(|segments| segments.filter(|s| !s.is_empty()).collect())
                .unwrap_or_default()
        })
        .collect();
    // The leading directories every path has, short of each one's own last segment.
    let shortest = paths.iter().map(|p| p.len().saturating_sub(1)).min()?;
    let shared = (0..shortest)
        .find(|&i| paths.iter().any(|p| p[i] != paths[0][i]))
        .unwrap_or(shortest);
    Some(paths.iter().map(|p| p[shared..].join("/")).collect())
}

/// Every entry lands at `target/name`: a valid path, none twice, none inside another.
fn check_names(field: &str, target: &str, entries: &[ShardEntry]) -> Result<()> {
    let mut names = HashSet::with_capacity(entries.len());
    for entry in entries {
        let path = format!("{}/{}", target.trim_end_matches('/'), entry.name);
        validate_mount_path(&path).map_err(|m| {
            Error::InvalidArgument(format!(
                "{field}: the entry {:?} cannot be mounted: {m}",
                entry.name
            ))
        })?;
        if !names.insert(entry.name.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "{field}: two entries are named {:?}; each entry needs a name of its own",
                entry.name
            )));
        }
    }
    for name in &names {
        let mut parent = *name;
        while let Some((up, _)) = parent.rsplit_once('/') {
            if names.contains(up) {
                return Err(Error::InvalidArgument(format!(
                    "{field}: the entry {name:?} lies inside the entry {up:?}"
                )));
            }
            parent = up;
        }
    }
    Ok(())
}

fn describe(input: &shoal::proto::InputSpec) -> String {
    if input.sources.is_empty() {
        input.source.clone()
    } else {
        "the source list".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(texts: &[&str]) -> Vec<Source> {
        texts.iter().map(|t| t.parse().expect("a URL")).collect()
    }

    /// Colliding file names fall back to the paths below the directory the URLs share; a
    /// list across origins, or with a CID, gets no such names.
    #[test]
    fn colliding_url_names_become_paths_below_the_shared_directory() {
        let names = relative_names(&urls(&[
            "https://host/data/2024/01/part-0.parquet",
            "https://host/data/2024/02/part-0.parquet",
            "https://host/data/2024/02/sub/part-0.parquet",
        ]));
        assert_eq!(
            names.expect("names"),
            [
                "01/part-0.parquet",
                "02/part-0.parquet",
                "02/sub/part-0.parquet"
            ]
        );
        let names = relative_names(&urls(&["https://host/a/x.csv", "https://host/x.csv"]));
        assert_eq!(names.expect("names"), ["a/x.csv", "x.csv"]);
        assert_eq!(
            relative_names(&urls(&["https://a/x.csv", "https://b/x.csv"])),
            None
        );
        let mut mixed = urls(&["https://a/x.csv"]);
        mixed.push(
            "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
                .parse()
                .expect("a CID"),
        );
        assert_eq!(relative_names(&mixed), None);
    }

    /// Entry names are checked as mounts: no two alike, none inside another, each a valid
    /// path below the target.
    #[test]
    fn entry_names_are_checked() {
        let entries = |names: &[&str]| -> Vec<ShardEntry> {
            names
                .iter()
                .map(|n| ShardEntry {
                    name: (*n).to_owned(),
                    source: String::new(),
                })
                .collect()
        };
        check_names("inputs[0]", "/in", &entries(&["a", "b/c", "b.txt"])).expect("fine");
        for (names, reason) in [
            (&["a", "a"][..], "two entries"),
            (&["a", "a/b"][..], "lies inside"),
            (&["../x"][..], "cannot be mounted"),
            (&[""][..], "cannot be mounted"),
        ] {
            let error = check_names("inputs[0]", "/in", &entries(names)).expect_err("refused");
            assert!(error.to_string().contains(reason), "{names:?}: {error}");
        }
    }
}
