//! Where a program or an input comes from: a content id in the orchestrator's store, or an
//! HTTP(S) URL the executor fetches (optionally pinned with a `#sha256=<hex>` fragment).

use std::fmt;
use std::str::FromStr;

use crate::Error;
use crate::content::cid::ContentId;

/// A program or input source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Content in the orchestrator's store (or, later, IPFS).
    Cid(ContentId),
    /// A file fetched over HTTP(S).
    Http(HttpSource),
    /// An S3 object, prefix or glob.
    S3(S3Source),
}

/// An `s3://bucket/...` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Source {
    pub bucket: String,
    /// The object key, the prefix (ends with `/`, or empty for the whole bucket), or the
    /// prefix plus a glob pattern for the last path segment.
    pub key: String,
}

/// What an [`S3Source`] selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3Selection<'a> {
    /// One object, mounted as a file.
    Object(&'a str),
    /// Every object below a prefix, mounted as a directory.
    Prefix(&'a str),
    /// The objects directly below `prefix` whose name matches `pattern` (`*`, `?`).
    Glob { prefix: &'a str, pattern: &'a str },
}

impl S3Source {
    /// What this source selects.
    pub fn selection(&self) -> S3Selection<'_> {
        let (prefix, last) = match self.key.rfind('/') {
            Some(i) => (&self.key[..=i], &self.key[i + 1..]),
            None => ("", self.key.as_str()),
        };
        if last.is_empty() {
            S3Selection::Prefix(prefix)
        } else if last.contains(['*', '?']) {
            S3Selection::Glob {
                prefix,
                pattern: last,
            }
        } else {
            S3Selection::Object(&self.key)
        }
    }

    /// A name for the fetched data: the object's or the prefix's last segment.
    pub fn file_name(&self) -> String {
        self.key
            .split('/')
            .rfind(|s| !s.is_empty() && !s.contains(['*', '?']))
            .unwrap_or(&self.bucket)
            .to_owned()
    }
}

/// Whether `name` matches a glob `pattern` of `*` (any run of characters) and `?` (one).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer wildcard matching with backtracking to the last `*`.
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// An HTTP(S) URL, with the sha2-256 its body must have if the user pinned one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSource {
    /// The URL without the `#sha256=` fragment.
    pub url: url::Url,
    pub sha256: Option<[u8; 32]>,
}

impl HttpSource {
    /// The last non-empty path segment, a sensible file name for the fetched body, or
    /// `download` for a URL without one.
    pub fn file_name(&self) -> String {
        self.name().unwrap_or("download").to_owned()
    }

    /// The URL's own file name (its last non-empty path segment), if it has one.
    pub fn name(&self) -> Option<&str> {
        self.url
            .path_segments()
            .and_then(|mut segments| segments.rfind(|s| !s.is_empty()))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Cid(cid) => cid.fmt(f),
            Source::Http(http) => http.url.fmt(f),
            Source::S3(s3) => write!(f, "s3://{}/{}", s3.bucket, s3.key),
        }
    }
}

/// Whether `text` names an HTTP(S) source.
pub fn is_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

impl FromStr for Source {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidCid {
            input: text.to_owned(),
            reason,
        };
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            let valid_bucket = (3..=63).contains(&bucket.len())
                && bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
            if !valid_bucket {
                return Err(invalid(format!(
                    "{bucket:?} is not a valid bucket name (3-63 of a-z, 0-9, '.', '-')"
                )));
            }
            if key.split('/').any(|s| s == "." || s == "..") {
                return Err(invalid(
                    "an S3 key must not contain '.' or '..' segments".into(),
                ));
            }
            return Ok(Source::S3(S3Source {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            }));
        }
        if !is_url(text) {
            return text.parse().map(Source::Cid);
        }
        let mut url =
            url::Url::parse(text).map_err(|e| invalid(format!("not a valid URL: {e}")))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("the URL has no host".into()));
        }
        let sha256 = match url.fragment() {
            None => None,
            Some(fragment) => {
                let hex = fragment.strip_prefix("sha256=").ok_or_else(|| {
                    invalid("the only URL fragment understood is #sha256=<64 hex digits>".into())
                })?;
                Some(parse_sha256(hex).ok_or_else(|| {
                    invalid("#sha256= must be followed by 64 hexadecimal digits".into())
                })?)
            }
        };
        url.set_fragment(None);
        Ok(Source::Http(HttpSource { url, sha256 }))
    }
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Lower-case hex of a digest, for messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An `s3://bucket/prefix` location (of published results, or of the content store): a
/// bucket and a key prefix that is empty or ends in '/'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket[/prefix]`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let source = match text.parse::<Source>() {
            Ok(Source::S3(source)) => source,
            Ok(_) => return Err(format!("{text:?} is not an s3://bucket/prefix location")),
            Err(e) if text.starts_with("s3://") => return Err(e.to_string()),
            Err(_) => return Err(format!("{text:?} is not an s3://bucket/prefix location")),
        };
        if source.key.contains(['*', '?']) || source.key.contains("//") {
            return Err(format!(
                "{text:?}: the prefix must be a plain key prefix (no '*', '?' or '//')"
            ));
        }
        let mut prefix = source.key;
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(S3Location {
            bucket: source.bucket,
            prefix,
        })
    }

    /// The key prefix of one execution's results: `prefix/JOB/EXECUTION/`.
    pub fn execution_prefix(&self, job_id: &str, execution_id: &str) -> String {
        format!("{}{job_id}/{execution_id}/", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_locations() {
        let p = S3Location::parse("s3://results-bucket/runs").expect("valid");
        assert_eq!(p.bucket, "results-bucket");
        assert_eq!(p.execution_prefix("j", "e"), "runs/j/e/");
        let p = S3Location::parse("s3://results-bucket").expect("valid");
        assert_eq!(p.execution_prefix("j", "e"), "j/e/");
        for bad in [
            "ftp://x/y",
            "s3://UPPER/x",
            "s3://bucket/a/../b",
            "s3://bucket/*.csv",
            "s3://bucket/a//b",
            "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4",
        ] {
            assert!(S3Location::parse(bad).is_err(), "{bad}");
        }
    }

    /// URLs, pinned URLs and CIDs parse; malformed ones say why.
    #[test]
    fn parses_sources() {
        let cid = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4";
        assert!(matches!(cid.parse::<Source>(), Ok(Source::Cid(_))));
        let Ok(Source::Http(http)) = "https://example.com/a/data.csv".parse::<Source>() else {
            panic!("url");
        };
        assert_eq!(http.file_name(), "data.csv");
        assert_eq!(http.sha256, None);
        let pinned = format!("http://127.0.0.1:8080/x#sha256={}", "ab".repeat(32));
        let Ok(Source::Http(http)) = pinned.parse::<Source>() else {
            panic!("pinned");
        };
        assert_eq!(http.sha256, Some([0xab; 32]));
        assert_eq!(http.url.as_str(), "http://127.0.0.1:8080/x");
        for bad in [
            "https://",
            "http://host/x#md5=00",
            "http://host/x#sha256=zz",
            "ftp://x/y",
            "./local",
        ] {
            assert!(bad.parse::<Source>().is_err(), "{bad}");
        }
    }
}
