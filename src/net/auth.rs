//! Who may call what: bearer tokens with roles, checked by the orchestrator on every call,
//! and the client side of it (a token and TLS settings) shared by the CLI and executors.
//!
//! Roles: `client` submits and watches jobs, moves data and lists executors; `executor`
//! holds the `Connect` stream and moves the data its executions need; `admin` may do all
//! of that and take executors out of service (cordon, uncordon, drain). Health checks and
//! server reflection need no token, so probes and `grpcurl list` keep working.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Error;
use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

/// A caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Client,
    Executor,
    Admin,
}

impl Role {
    fn parse(text: &str) -> Option<Role> {
        match text {
            "client" => Some(Role::Client),
            "executor" => Some(Role::Executor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Executor => "executor",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may call `service`/`method` (gRPC names, e.g.
    /// `shoal.v1.NodeService`, `Drain`).
    pub fn may_call(self, service: &str, method: &str) -> bool {
        match (self, service) {
            (_, "grpc.health.v1.Health")
            | (_, "grpc.reflection.v1.ServerReflection")
            | (_, "grpc.reflection.v1alpha.ServerReflection") => true,
            (Role::Admin, _) => true,
            (Role::Client, "shoal.v1.JobService" | "shoal.v1.StorageService") => true,
            (Role::Client, "shoal.v1.NodeService") => matches!(method, "ListNodes" | "GetNode"),
            (Role::Executor, "shoal.v1.ExecutorService") => true,
            // What staging and publishing need; Pin and the copies act for clients.
            (Role::Executor, "shoal.v1.StorageService") => {
                matches!(method, "Upload" | "Download" | "Stat")
            }
            _ => false,
        }
    }
}

/// The tokens the orchestrator accepts, each with its role. Kept as SHA-256 digests, so
/// the lookup does not compare secrets byte by byte.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    roles: HashMap<[u8; 32], Role>,
}

impl Tokens {
    /// Reads a tokens file: one `ROLE TOKEN` per line (roles `client`, `executor`,
    /// `admin`); blank lines and lines starting with `#` are skipped.
    pub fn load(path: &Path) -> Result<Tokens, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Settings(format!("tokens file {}: {e}", path.display())))?;
        Tokens::parse(&text)
            .map_err(|e| Error::Settings(format!("tokens file {}: {e}", path.display())))
    }

    /// Parses the tokens file format.
    pub fn parse(text: &str) -> Result<Tokens, Error> {
        let mut roles = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| Error::Settings(format!("line {}: {why}", number + 1));
            let (role, token) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("expected `ROLE TOKEN`"))?;
            let role = Role::parse(role)
                .ok_or_else(|| bad("the role must be client, executor or admin"))?;
            let token = token.trim();
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad("a token must be 16 or more printable ASCII characters"));
            }
            if roles.insert(digest(token), role).is_some() {
                return Err(bad("this token is listed twice"));
            }
        }
        if roles.is_empty() {
            return Err(Error::Settings("no tokens".into()));
        }
        Ok(Tokens { roles })
    }

    /// The role of a presented token.
    pub fn role(&self, token: &str) -> Option<Role> {
        self.roles.get(&digest(token)).copied()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The orchestrator's check on every call, as a tonic interceptor. With no tokens every
/// call is allowed (a development setup; the orchestrator warns at startup).
#[derive(Debug, Clone)]
pub struct Authorizer {
    tokens: Option<Arc<Tokens>>,
    /// With mutual TLS, executors must also present a client certificate.
    require_executor_certs: bool,
}

impl Authorizer {
    pub fn new(tokens: Option<Tokens>, require_executor_certs: bool) -> Self {
        Authorizer {
            tokens: tokens.map(Arc::new),
            require_executor_certs,
        }
    }
}

impl Interceptor for Authorizer {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        // The server's `CallPath` layer records the request path, `/package.Service/Method`.
        let (service, method) = request
            .extensions()
            .get::<CallPath>()
            .and_then(|p| p.0.strip_prefix('/')?.split_once('/'))
            .map(|(s, m)| (s.to_owned(), m.to_owned()))
            .unwrap_or_default();
        if self.require_executor_certs
            && service == "shoal.v1.ExecutorService"
            && request.peer_certs().is_none_or(|certs| certs.is_empty())
        {
            return Err(Status::unauthenticated(
                "executors must present a client certificate (mutual TLS)",
            ));
        }
        let Some(tokens) = &self.tokens else {
            return Ok(request);
        };
        if service.starts_with("grpc.") {
            return Ok(request); // health checks and reflection
        }
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("missing bearer token (authorization: Bearer TOKEN)")
            })?;
        let role = tokens
            .role(token.trim())
            .ok_or_else(|| Status::unauthenticated("the bearer token is not valid"))?;
        if !role.may_call(&service, &method) {
            return Err(Status::permission_denied(format!(
                "a {} token may not call {service}/{method}",
                role.name()
            )));
        }
        Ok(request)
    }
}

/// The path of a gRPC call, `/package.Service/Method`, put into the request's extensions
/// by a layer in front of the services: interceptors do not see the URI.
#[derive(Debug, Clone)]
pub struct CallPath(pub String);

/// Adds to every call `authorization: Bearer TOKEN`, when there is a token, and the W3C
/// trace context of the span the call is made in, when traces are on (the interceptor runs
/// in the caller's task, so the current span is the caller's).
#[derive(Debug, Clone, Default)]
pub struct CallerMetadata {
    authorization: Option<MetadataValue<Ascii>>,
    deadline: Option<CallDeadline>,
}

/// A deadline for the calls that should answer at once, sent as `grpc-timeout` (which the
/// channel enforces too): a server that accepted the call and never answers then fails it
/// instead of hanging the caller. Streams and long-running calls are left out by
/// `applies_to`, which is given the method name (e.g. `GetJob`).
#[derive(Debug, Clone, Copy)]
pub struct CallDeadline {
    pub timeout: std::time::Duration,
    pub applies_to: fn(&str) -> bool,
}

impl CallerMetadata {
    /// The same metadata, with a deadline on the calls it applies to.
    pub fn with_deadline(mut self, deadline: CallDeadline) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

impl Interceptor for CallerMetadata {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        if let Some(deadline) = self.deadline {
            let method = request.extensions().get::<tonic::GrpcMethod>();
            let applies = method.is_some_and(|m| (deadline.applies_to)(m.method()));
            if applies && !request.metadata().contains_key("grpc-timeout") {
                request.set_timeout(deadline.timeout);
            }
        }
        crate::daemon::telemetry::inject_current(request.metadata_mut());
        Ok(request)
    }
}

/// A channel to the orchestrator (the replica that leads) that carries the caller's token
/// and trace context.
pub type AuthChannel =
    tonic::service::interceptor::InterceptedService<crate::net::leader::Replicas, CallerMetadata>;

/// How a client (the CLI, an executor) proves itself to the orchestrator and checks the
/// orchestrator's certificate.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Connection")]
pub struct ClientSecurity {
    /// Bearer token sent with every call.
    #[arg(long, global = true, env = "SHOAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token (e.g. a mounted Kubernetes Secret).
    #[arg(
        long,
        global = true,
        env = "SHOAL_TOKEN_FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the orchestrator's TLS certificate with; needed for an
    /// https:// address signed by a private CA.
    #[arg(long, global = true, env = "SHOAL_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, global = true, env = "SHOAL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate.
    #[arg(long, global = true, env = "SHOAL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ClientSecurity {
    /// The interceptor that carries the token (and the trace context) on every call.
    pub fn bearer(&self) -> Result<CallerMetadata, Error> {
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => Some(token.trim().to_owned()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| Error::Settings(format!("token file {}: {e}", path.display())))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let value = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| Error::Settings("the token must be printable ASCII".to_owned()))
            })
            .transpose()?;
        Ok(CallerMetadata {
            authorization: value,
            deadline: None,
        })
    }

    /// Lazily connected channels to each orchestrator replica of `list` (comma-separated
    /// addresses, see [`parse_addresses`](crate::net::leader::parse_addresses)), each
    /// endpoint set up by `configure`. A name that resolves to several addresses now (a
    /// headless Service) stands for each of them, its TLS certificate still checked for
    /// the name.
    pub fn replicas(
        &self,
        list: &str,
        configure: impl Fn(Endpoint) -> Endpoint,
    ) -> Result<crate::net::leader::Replicas, Error> {
        let addresses = crate::net::leader::parse_addresses(list);
        if addresses.is_empty() {
            return Err(Error::Settings("no orchestrator address given".to_owned()));
        }
        let mut replicas = Vec::new();
        for address in addresses {
            let expanded = expand(&address);
            if expanded.is_empty() {
                let channel = configure(self.endpoint(&address)?).connect_lazy();
                replicas.push((address, channel));
                continue;
            }
            for (each, name) in expanded {
                let endpoint = self.endpoint_named(&each, Some(&name))?;
                replicas.push((each, configure(endpoint).connect_lazy()));
            }
        }
        Ok(crate::net::leader::Replicas::new(replicas))
    }

    /// An endpoint for `address` (http:// or https://) with these TLS settings.
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, Error> {
        self.endpoint_named(address, None)
    }

    /// [`endpoint`](Self::endpoint), checking the server's certificate for `name` rather
    /// than the address's host (an address a name resolved to).
    fn endpoint_named(&self, address: &str, name: Option<&str>) -> Result<Endpoint, Error> {
        let mut endpoint = Endpoint::from_shared(address.to_owned())
            .map_err(|e| Error::Settings(format!("orchestrator address {address:?}: {e}")))?
            .initial_stream_window_size(crate::net::HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(crate::net::HTTP2_CONNECTION_WINDOW);
        if address.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_webpki_roots();
            if let Some(name) = name {
                tls = tls.domain_name(name);
            }
            if let Some(ca) = &self.tls_ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Error::Settings(format!("TLS settings: {e}")))?;
        } else if self.tls_ca.is_some() || self.tls_cert.is_some() {
            return Err(Error::Settings(format!(
                "TLS files were given but the orchestrator address {address:?} is not https://"
            )));
        }
        Ok(endpoint)
    }
}

/// The addresses `address`'s host name resolves to now, as URLs of the same scheme and
/// port with the name beside each, if there are several; otherwise none (an IP address,
/// a name with one address, or one that does not resolve yet: connected to as given).
fn expand(address: &str) -> Vec<(String, String)> {
    use std::net::ToSocketAddrs as _;
    let Ok(url) = url::Url::parse(address) else {
        return Vec::new();
    };
    let (Some(url::Host::Domain(name)), Some(port)) = (url.host(), url.port_or_known_default())
    else {
        return Vec::new();
    };
    let Ok(resolved) = (name, port).to_socket_addrs() else {
        return Vec::new();
    };
    let mut found: Vec<std::net::SocketAddr> = resolved.collect();
    // A dual-stack name lists each host twice: one family (IPv4 if there is any).
    if found.iter().any(std::net::SocketAddr::is_ipv4) {
        found.retain(std::net::SocketAddr::is_ipv4);
    }
    found.sort();
    found.dedup();
    if found.len() < 2 {
        return Vec::new();
    }
    found
        .into_iter()
        .map(|at| (format!("{}://{at}", url.scheme()), name.to_owned()))
        .collect()
}

/// Reads a PEM file, saying which one failed.
pub fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Settings(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_name_of_several_addresses_is_expanded() {
        // An address, and a name of one IPv4 address (localhost's ::1 is the other
        // family), are connected to as given.
        assert!(expand("http://127.0.0.1:7070").is_empty());
        assert!(expand("http://localhost:7070").is_empty());
        assert!(expand("http://[::1]:7070").is_empty());
        assert!(expand("not a url").is_empty());
    }

    #[test]
    fn tokens_files_parse_and_roles_are_enforced() {
        let tokens = Tokens::parse(
            "# comment\nclient  client-token-0123456789\nexecutor executor-token-0123456789\nadmin admin-token-0123456789\n",
        )
        .expect("valid");
        assert_eq!(tokens.role("client-token-0123456789"), Some(Role::Client));
        assert_eq!(tokens.role("nope"), None);
        for bad in [
            "",
            "root x-0123456789abcdef",
            "client short",
            "client",
            "client dup-0123456789abcdef\nadmin dup-0123456789abcdef",
        ] {
            assert!(Tokens::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Role::Client.may_call("shoal.v1.JobService", "SubmitJob"));
        assert!(Role::Client.may_call("shoal.v1.NodeService", "ListNodes"));
        assert!(!Role::Client.may_call("shoal.v1.NodeService", "Drain"));
        assert!(!Role::Client.may_call("shoal.v1.ExecutorService", "Connect"));
        assert!(!Role::Executor.may_call("shoal.v1.JobService", "SubmitJob"));
        assert!(!Role::Executor.may_call("shoal.v1.StorageService", "Pin"));
        assert!(Role::Executor.may_call("shoal.v1.StorageService", "Upload"));
        assert!(Role::Admin.may_call("shoal.v1.NodeService", "Drain"));
        assert!(Role::Executor.may_call("grpc.health.v1.Health", "Check"));
    }
}
