//! Where a program or an input comes from: a content id in the orchestrator's store, or an
//! HTTP(S) URL the executor fetches (optionally pinned with a `#sha256=<hex>` fragment).

use std::fmt;
use std::str::FromStr;

use crate::Error;
use crate::cid::ContentId;

/// A program or input source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Content in the orchestrator's store (or, later, IPFS).
    Cid(ContentId),
    /// A file fetched over HTTP(S).
    Http(HttpSource),
}

/// An HTTP(S) URL, with the sha2-256 its body must have if the user pinned one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSource {
    /// The URL without the `#sha256=` fragment.
    pub url: url::Url,
    pub sha256: Option<[u8; 32]>,
}

impl HttpSource {
    /// The last non-empty path segment, a sensible file name for the fetched body.
    pub fn file_name(&self) -> String {
        self.url
            .path_segments()
            .and_then(|mut segments| segments.rfind(|s| !s.is_empty()))
            .map(str::to_owned)
            .unwrap_or_else(|| "download".to_owned())
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Cid(cid) => cid.fmt(f),
            Source::Http(http) => http.url.fmt(f),
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
        if !is_url(text) {
            return text.parse().map(Source::Cid);
        }
        let invalid = |reason: String| Error::InvalidCid {
            input: text.to_owned(),
            reason,
        };
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

#[cfg(test)]
mod tests {
    use super::*;

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
