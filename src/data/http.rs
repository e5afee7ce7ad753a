//! Fetching HTTP(S) inputs and programs: streamed to disk, bounded redirects, retries with
//! capped exponential backoff on 5xx/429 and connection failures (never on other 4xx), a
//! size cap, and the optional `#sha256=` pin checked before the file is used.
//!
//! Where a URL may lead is policed ([`UrlPolicy`]): cloud metadata addresses are refused
//! unless allowed; loopback addresses (this machine: the daemon's own ports, its sidecars)
//! are refused unless an `--allow-url` entry names them; the orchestrator also refuses its
//! own listeners; and an allowlist of hosts and networks can fence fetches in. The check
//! runs on the URL, on every redirect, and on the addresses a host name resolves to, so
//! neither a redirect nor a DNS answer can smuggle a fetch past it.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::data::DataError;
use crate::net::retry::Retry;
use crate::spec::source::{HttpSource, hex};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// How URL fetches behave.
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    client: reqwest::Client,
    retries: u32,
    first_backoff: Duration,
    policy: Arc<UrlPolicy>,
}

/// What a fetch produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The server confirmed the cached copy (`304 Not Modified`); nothing was written.
    NotModified,
    /// The body was written: its size, and its strong ETag if the server gave one.
    Body { bytes: u64, etag: Option<String> },
}

/// Where URL fetches may go; the flags of both daemons.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct UrlPolicyArgs {
    /// Only fetch URLs on these hosts: a host name, `*.example.com`, or a network such as
    /// 10.0.0.0/8 or 2001:db8::/32 (repeatable, or comma-separated). Default: any host
    /// except cloud metadata and loopback addresses. Loopback (127.0.0.0/8, ::1,
    /// `localhost`) is fetched from only when an entry names it, e.g. `127.0.0.1`.
    #[arg(long = "allow-url", env = "SHOAL_ALLOW_URLS", value_delimiter = ',')]
    pub allow_url: Vec<String>,
    /// Allow fetching from cloud metadata addresses (169.254.0.0/16, fe80::/10,
    /// fd00:ec2::254, 100.100.100.200, metadata.google.internal), refused by default.
    #[arg(long, env = "SHOAL_ALLOW_METADATA_URLS")]
    pub allow_metadata_urls: bool,
}

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Network(IpAddr, u8),
    Host(String),
    /// `*.example.com`: any name ending in `.example.com`.
    Suffix(String),
}

/// The checked form of [`UrlPolicyArgs`].
#[derive(Debug, Clone, Default)]
pub struct UrlPolicy {
    allow: Vec<Rule>,
    allow_metadata: bool,
    /// The process's own listeners (the orchestrator's gRPC, metrics and gateway ports),
    /// never fetched from, whatever the allowlist says.
    own: Vec<SocketAddr>,
}

impl UrlPolicy {
    /// Parses the allowlist; the error names the bad entry.
    pub fn new(args: &UrlPolicyArgs) -> Result<Self, String> {
        let allow = args
            .allow_url
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|entry| parse_rule(entry.trim()))
            .collect::<Result<_, _>>()?;
        Ok(UrlPolicy {
            allow,
            allow_metadata: args.allow_metadata_urls,
            own: Vec::new(),
        })
    }

    /// Also refuses these listeners of this process: a URL to one of them would have the
    /// daemon fetch its own answers (its metrics page, say) into the store.
    pub fn refusing_own(mut self, listeners: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.own.extend(listeners);
        self
    }

    /// Whether `ip:port` may be one of this process's own listeners: the same address, or
    /// any loopback or private address for a listener bound to all interfaces (those are
    /// where its own interfaces live; a public address of the host is not caught).
    fn is_own(&self, ip: IpAddr, port: u16) -> bool {
        let ip = canonical(ip);
        self.own.iter().any(|own| {
            own.port() == port
                && (ip == canonical(own.ip())
                    || is_loopback(ip)
                    || (own.ip().is_unspecified() && is_private(ip)))
        })
    }

    /// Whether an allowlist entry names loopback itself, as loopback needs: a network
    /// holding `ip`, or the host `localhost`. A rule for other names does not count (a
    /// DNS answer for `x.example.com` pointing at 127.0.0.1 must not open loopback).
    fn explicitly_allowed(&self, ip: IpAddr, host: Option<&str>) -> bool {
        let localhost =
            host.is_some_and(|h| h.trim_end_matches('.').eq_ignore_ascii_case("localhost"));
        self.ip_allowed(ip) || (localhost && self.allow.contains(&Rule::Host("localhost".into())))
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allow.iter().any(|rule| match rule {
            Rule::Host(name) => *name == host,
            Rule::Suffix(suffix) => host.ends_with(suffix.as_str()),
            Rule::Network(..) => false,
        })
    }

    fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|rule| match rule {
            Rule::Network(net, bits) => in_network(ip, *net, *bits),
            _ => false,
        })
    }

    /// Checks one address a fetch would connect to; `host` is the name it came from, if any.
    fn check_ip(&self, ip: IpAddr, host: Option<&str>) -> Result<(), String> {
        if !self.allow_metadata && is_metadata(ip) {
            return Err(format!(
                "{ip} is a cloud metadata address; fetching from it is refused (--allow-metadata-urls permits it)"
            ));
        }
        if is_loopback(ip) && !self.explicitly_allowed(ip, host) {
            return Err(format!(
                "{ip} is a loopback address (this machine); fetching from it is refused unless \
                 --allow-url names it"
            ));
        }
        if self.allow.is_empty()
            || host.is_some_and(|h| self.host_allowed(h))
            || self.ip_allowed(ip)
        {
            return Ok(());
        }
        Err(format!(
            "{} is not among the allowed hosts (--allow-url)",
            host.map_or_else(|| ip.to_string(), |h| format!("{h} ({ip})"))
        ))
    }

    /// Checks a URL before it is requested (or followed as a redirect). Host names are
    /// checked again, address by address, when they resolve.
    pub fn check_url(&self, url: &url::Url) -> Result<(), String> {
        let port = url.port_or_known_default().unwrap_or(0);
        let own = |ip: IpAddr| {
            if self.is_own(ip, port) {
                Err(format!(
                    "{ip}:{port} is one of this daemon's own listeners; fetching from it is refused"
                ))
            } else {
                Ok(())
            }
        };
        match url.host() {
            Some(url::Host::Ipv4(ip)) => own(IpAddr::V4(ip))?,
            Some(url::Host::Ipv6(ip)) => own(IpAddr::V6(ip))?,
            Some(url::Host::Domain(name)) if self.own.iter().any(|o| o.port() == port) => {
                // Where a name on one of our ports leads is only known once it resolves,
                // and the resolver does not see ports: refused outright.
                return Err(format!(
                    "{name}:{port} may be one of this daemon's own listeners; fetching from a \
                     host name on that port is refused"
                ));
            }
            _ => {}
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip), None),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip), None),
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if !self.allow_metadata && METADATA_HOSTS.contains(&name.as_str()) {
                    return Err(format!(
                        "{name} is a cloud metadata host; fetching from it is refused (--allow-metadata-urls permits it)"
                    ));
                }
                Ok(())
            }
            None => Err("the URL has no host".into()),
        }
    }
}

const METADATA_HOSTS: &[&str] = &["metadata.google.internal", "metadata", "instance-data"];

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// This machine: 127.0.0.0/8, ::1, and the unspecified address (which connects here).
fn is_loopback(ip: IpAddr) -> bool {
    let ip = canonical(ip);
    ip.is_loopback() || ip.is_unspecified()
}

/// RFC 1918 networks, and IPv6 unique local addresses (fc00::/7).
fn is_private(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Link-local addresses (AWS, GCP and Azure metadata live at 169.254.169.254), AWS's IPv6
/// metadata address, and Alibaba Cloud's.
fn is_metadata(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.octets() == [100, 100, 100, 200],
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_metadata(IpAddr::V4(v4));
            }
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

fn parse_rule(entry: &str) -> Result<Rule, String> {
    let bad = |why: &str| format!("--allow-url {entry:?}: {why}");
    if let Some((net, bits)) = entry.split_once('/') {
        let net: IpAddr = net.parse().map_err(|_| bad("not an IP network"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits: u8 = bits
            .parse()
            .ok()
            .filter(|b| *b <= max)
            .ok_or_else(|| bad("the prefix length is out of range"))?;
        return Ok(Rule::Network(net, bits));
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok(Rule::Network(ip, if ip.is_ipv4() { 32 } else { 128 }));
    }
    let name = entry.to_ascii_lowercase();
    if let Some(suffix) = name.strip_prefix("*.") {
        return Ok(Rule::Suffix(format!(".{suffix}")));
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(bad(
            "expected a host name, *.domain, an IP address or a network",
        ));
    }
    Ok(Rule::Host(name))
}

/// A fetch the policy refused while resolving: never retried.
#[derive(Debug, PartialEq, Eq)]
struct PolicyRefusal(String);

impl std::fmt::Display for PolicyRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PolicyRefusal {}

/// Whether `error` or one of its sources is a [`PolicyRefusal`].
fn is_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<PolicyRefusal>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Resolves host names with the system resolver, keeping only addresses the policy allows.
struct PolicedResolver(Arc<UrlPolicy>);

impl reqwest::dns::Resolve for PolicedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed = policy.resolved(&host, resolved)?;
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

impl UrlPolicy {
    /// The addresses `host` resolved to that a fetch may connect to; if none may, the
    /// refusal says why (a name pointing at a metadata or loopback address is refused like
    /// the address itself).
    fn resolved(
        &self,
        host: &str,
        resolved: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, PolicyRefusal> {
        let mut refusal = None;
        let allowed: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|a| match self.check_ip(a.ip(), Some(host)) {
                Ok(()) => true,
                Err(reason) => {
                    refusal = Some(reason);
                    false
                }
            })
            .collect();
        if allowed.is_empty() {
            let reason = refusal.unwrap_or_else(|| format!("{host} has no addresses"));
            return Err(PolicyRefusal(reason));
        }
        Ok(allowed)
    }
}

impl HttpFetcher {
    /// A fetcher following at most `max_redirects` redirects, retrying transient failures
    /// `retries` times, and going only where `policy` allows.
    pub fn new(
        max_redirects: usize,
        retries: u32,
        policy: UrlPolicy,
    ) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(policy);
        let redirects = policy.clone();
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                let error = format!("too many redirects (more than {max_redirects})");
                return attempt.error(error);
            }
            match redirects.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(reason) => {
                    let error = format!("redirect to {} refused: {reason}", attempt.url());
                    attempt.error(error)
                }
            }
        });
        let client = reqwest::Client::builder()
            .redirect(redirect)
            .dns_resolver(Arc::new(PolicedResolver(policy.clone())))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpFetcher {
            client,
            retries,
            first_backoff: Duration::from_millis(100),
            policy,
        })
    }

    /// Downloads `source` to the file `dest`, refusing more than `max_bytes`. With
    /// `if_none_match` (the ETag of a cached copy) the server may answer that the copy is
    /// current instead. The error says what went wrong, for a STAGING failure.
    pub async fn fetch(
        &self,
        source: &HttpSource,
        dest: &Path,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched, DataError> {
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let retry = Retry::attempts(self.retries.saturating_add(1))
            .delays(self.first_backoff, Duration::from_secs(10));
        let fetched = retry
            .run("fetching a URL", || {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.attempt(source, dest, max_bytes, if_none_match)
            })
            .await;
        fetched.map_err(|error| {
            if error.is_transient() {
                let attempts = attempts.load(std::sync::atomic::Ordering::Relaxed);
                error.map(|reason| format!("{reason} (gave up after {attempts} attempts)"))
            } else {
                error
            }
        })
    }

    async fn attempt(
        &self,
        source: &HttpSource,
        dest: &Path,
        max_bytes: u64,
        if_none_match: Option<&str>,
    ) -> Result<Fetched, DataError> {
        self.policy
            .check_url(&source.url)
            .map_err(DataError::Refused)?;
        let mut request = self.client.get(source.url.clone());
        if let Some(etag) = if_none_match {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_redirect() || is_refusal(&e) {
                DataError::Refused(error_chain(&e))
            } else {
                DataError::Unavailable(format!("request failed: {}", error_chain(&e)))
            }
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_MODIFIED && if_none_match.is_some() {
            return Ok(Fetched::NotModified);
        }
        if !status.is_success() {
            let reason = format!("HTTP {status}");
            return Err(DataError::from_http_status(status.as_u16(), reason));
        }
        if let Some(length) = response.content_length()
            && length > max_bytes
        {
            return Err(DataError::TooLarge(format!(
                "the body is {length} bytes, more than the input limit of {max_bytes} bytes"
            )));
        }
        // Only a strong validator identifies the bytes; a weak one (W/"...") may not.
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.starts_with('"'))
            .map(str::to_owned);
        let io =
            |e: std::io::Error| DataError::Local(format!("cannot write {}: {e}", dest.display()));
        let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                DataError::Unavailable(format!(
                    "the body broke off after {written} bytes: {}",
                    error_chain(&e)
                ))
            })?;
            written += chunk.len() as u64;
            if written > max_bytes {
                return Err(DataError::TooLarge(format!(
                    "the body is more than the input limit of {max_bytes} bytes"
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        if let Some(expected) = source.sha256 {
            let actual: [u8; 32] = hasher.finalize().into();
            if actual != expected {
                return Err(DataError::Invalid(format!(
                    "sha256 mismatch: expected {}, got {}",
                    hex(&expected),
                    hex(&actual)
                )));
            }
        }
        Ok(Fetched::Body {
            bytes: written,
            etag,
        })
    }
}

/// An error with its sources, on one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each way a real server can fail a fetch comes back as the case it is: a 503 is
    /// transient (after every retry), a 404 or a URL outside the policy a refusal, a body
    /// that misses its pin invalid, one past the limit too large.
    #[tokio::test]
    async fn fetch_failures_say_whether_they_are_transient() {
        use axum::http::StatusCode;
        let app = axum::Router::new()
            .route(
                "/busy",
                axum::routing::get(|| async { StatusCode::SERVICE_UNAVAILABLE }),
            )
            .route(
                "/gone",
                axum::routing::get(|| async { StatusCode::NOT_FOUND }),
            )
            .route("/data", axum::routing::get(|| async { "twelve bytes" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut fetcher = HttpFetcher::new(2, 2, policy(&["127.0.0.1"])).expect("fetcher");
        fetcher.first_backoff = Duration::from_millis(1);
        let dir = tempfile::tempdir().expect("tempdir");
        let source = |path: &str| match format!("http://{address}{path}").parse() {
            Ok(crate::spec::source::Source::Http(source)) => source,
            other => panic!("not an http source: {other:?}"),
        };
        let fetch = |path: &str, max: u64| {
            let source = source(path);
            let dest = dir.path().join(path.replace(['/', '#', '='], "_"));
            let fetcher = &fetcher;
            async move { fetcher.fetch(&source, &dest, max, None).await }
        };

        let busy = fetch("/busy", 100).await.expect_err("a 503");
        assert!(busy.is_transient(), "{busy:?}");
        assert!(
            busy.to_string().contains("gave up after 3 attempts"),
            "{busy}"
        );
        let gone = fetch("/gone", 100).await.expect_err("a 404");
        assert!(matches!(gone, DataError::Refused(_)), "{gone:?}");
        let wrong_pin = format!("/data#sha256={}", "0".repeat(64));
        let pinned = fetch(&wrong_pin, 100).await.expect_err("a wrong pin");
        assert!(matches!(pinned, DataError::Invalid(_)), "{pinned:?}");
        let large = fetch("/data", 5).await.expect_err("past the limit");
        assert!(matches!(large, DataError::TooLarge(_)), "{large:?}");
        assert!(fetch("/data", 100).await.is_ok());

        let outside = HttpFetcher::new(2, 2, policy(&[])).expect("fetcher");
        let refused = outside
            .fetch(&source("/data"), &dir.path().join("x"), 100, None)
            .await
            .expect_err("loopback is not allowed by default");
        assert!(matches!(refused, DataError::Refused(_)), "{refused:?}");
    }

    fn policy(allow: &[&str]) -> UrlPolicy {
        UrlPolicy::new(&UrlPolicyArgs {
            allow_url: allow.iter().map(|s| (*s).to_owned()).collect(),
            allow_metadata_urls: false,
        })
        .expect("valid")
    }

    /// A name is judged by what it resolves to: a harmless-looking name whose answer is a
    /// metadata or loopback address is refused with the reason, an answer mixing them keeps
    /// only the allowed addresses, and `--allow-metadata-urls` keeps the metadata address.
    #[test]
    fn names_resolving_to_forbidden_addresses_are_refused() {
        let at = |ips: &[&str]| -> Vec<SocketAddr> {
            ips.iter()
                .map(|ip| SocketAddr::new(ip.parse().expect("ip"), 443))
                .collect()
        };
        let open = policy(&[]);
        let refusal = open
            .resolved("innocent.example.com", at(&["169.254.169.254"]))
            .expect_err("a metadata answer");
        assert!(
            refusal.0.contains("cloud metadata address"),
            "{}",
            refusal.0
        );
        let refusal = open
            .resolved("innocent.example.com", at(&["127.0.0.1", "::1"]))
            .expect_err("a loopback answer");
        assert!(refusal.0.contains("loopback"), "{}", refusal.0);
        assert_eq!(
            open.resolved(
                "mixed.example.com",
                at(&["169.254.169.254", "93.184.216.34"])
            ),
            Ok(at(&["93.184.216.34"]))
        );
        let refusal = open
            .resolved("empty.example.com", Vec::new())
            .expect_err("no answer");
        assert!(refusal.0.contains("no addresses"), "{}", refusal.0);
        // An allowlist naming the host does not open metadata or loopback behind it.
        let fenced = policy(&["innocent.example.com"]);
        assert!(
            fenced
                .resolved("innocent.example.com", at(&["169.254.169.254"]))
                .is_err()
        );
        assert!(
            fenced
                .resolved("innocent.example.com", at(&["127.0.0.1"]))
                .is_err()
        );
        let permissive = UrlPolicy::new(&UrlPolicyArgs {
            allow_url: Vec::new(),
            allow_metadata_urls: true,
        })
        .expect("valid");
        assert_eq!(
            permissive.resolved("innocent.example.com", at(&["169.254.169.254"])),
            Ok(at(&["169.254.169.254"]))
        );
    }

    /// Loopback is refused unless an entry names it; a daemon's own listeners are refused
    /// whatever the allowlist says, on their address, on loopback and (when bound to all
    /// interfaces) on private addresses; other ports are not.
    #[test]
    fn loopback_and_own_listeners_are_refused() {
        let url = |u: &str| url::Url::parse(u).expect("url");
        let open = policy(&[]);
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "0.0.0.0",
            "::ffff:127.0.0.1",
        ] {
            let refused = open.check_ip(ip.parse().expect("ip"), Some("localhost"));
            assert!(refused.is_err_and(|e| e.contains("loopback")), "{ip}");
        }
        let local = policy(&["127.0.0.1"]);
        assert!(
            local
                .check_ip("127.0.0.1".parse().expect("ip"), None)
                .is_ok()
        );
        assert!(
            local
                .check_ip("127.0.0.2".parse().expect("ip"), None)
                .is_err()
        );
        let named = policy(&["localhost"]);
        assert!(
            named
                .check_ip("::1".parse().expect("ip"), Some("localhost"))
                .is_ok()
        );
        // A rule for another name does not open loopback, whatever that name resolves to.
        let suffix = policy(&["*.example.com", "rebind.example.org"]);
        for host in ["x.example.com", "rebind.example.org"] {
            let refused = suffix.check_ip("127.0.0.1".parse().expect("ip"), Some(host));
            assert!(refused.is_err(), "{host}");
        }

        let own = policy(&["127.0.0.1", "10.0.0.0/8"]).refusing_own([
            "0.0.0.0:7000".parse().expect("addr"),
            "127.0.0.1:9090".parse().expect("addr"),
        ]);
        for refused in [
            "http://127.0.0.1:9090/metrics",
            "http://127.0.0.1:7000/",
            "http://10.1.2.3:7000/",
            "http://[::1]:7000/",
            "http://orchestrator.internal:7000/",
        ] {
            assert!(own.check_url(&url(refused)).is_err(), "{refused}");
        }
        assert!(own.check_url(&url("http://127.0.0.1:8080/data")).is_ok());
        assert!(own.check_url(&url("http://10.1.2.3:9090/data")).is_ok());
    }

    #[test]
    fn metadata_addresses_are_refused_and_allowlists_fence_fetches() {
        let open = policy(&[]);
        for ip in [
            "169.254.169.254",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "::ffff:169.254.169.254",
        ] {
            assert!(
                open.check_ip(ip.parse().expect("ip"), None).is_err(),
                "{ip}"
            );
        }
        assert!(open.check_ip("10.0.0.1".parse().expect("ip"), None).is_ok());
        let url = |u: &str| url::Url::parse(u).expect("url");
        assert!(
            open.check_url(&url("http://metadata.google.internal/x"))
                .is_err()
        );
        assert!(open.check_url(&url("http://example.com/x")).is_ok());

        let fenced = policy(&["10.0.0.0/8", "data.example.com", "*.corp.example"]);
        assert!(
            fenced
                .check_ip("10.9.8.7".parse().expect("ip"), None)
                .is_ok()
        );
        assert!(
            fenced
                .check_ip("11.0.0.1".parse().expect("ip"), None)
                .is_err()
        );
        assert!(
            fenced
                .check_ip("11.0.0.1".parse().expect("ip"), Some("data.example.com"))
                .is_ok()
        );
        assert!(
            fenced
                .check_ip("11.0.0.1".parse().expect("ip"), Some("a.corp.example"))
                .is_ok()
        );
        assert!(
            fenced
                .check_ip("11.0.0.1".parse().expect("ip"), Some("corp.example.evil"))
                .is_err()
        );
        // Metadata stays refused even for an allowed name.
        assert!(
            fenced
                .check_ip(
                    "169.254.169.254".parse().expect("ip"),
                    Some("data.example.com")
                )
                .is_err()
        );
        // `--allow-metadata-urls` lets metadata addresses and names through, and only them:
        // loopback stays refused.
        let permissive = UrlPolicy::new(&UrlPolicyArgs {
            allow_url: Vec::new(),
            allow_metadata_urls: true,
        })
        .expect("valid");
        for ip in ["169.254.169.254", "fd00:ec2::254", "100.100.100.200"] {
            assert_eq!(
                permissive.check_ip(ip.parse().expect("ip"), None),
                Ok(()),
                "{ip}"
            );
        }
        assert_eq!(
            permissive.check_url(&url("http://metadata.google.internal/x")),
            Ok(())
        );
        assert!(
            permissive
                .check_ip("127.0.0.1".parse().expect("ip"), None)
                .is_err()
        );
        for bad in ["10.0.0.0/33", "not a host", "1.2.3.4/x"] {
            let args = UrlPolicyArgs {
                allow_url: vec![bad.into()],
                allow_metadata_urls: false,
            };
            assert!(UrlPolicy::new(&args).is_err(), "{bad}");
        }
    }
}
