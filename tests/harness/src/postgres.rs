//! A PostgreSQL server of the test's own (Debian's `postgresql` binaries; no system
//! service): `initdb` into a temporary directory, then `postgres` on a free loopback port,
//! run as the `postgres` user (the server refuses to run as root), with password
//! authentication over TCP. A database per test ([`PostgresServer::database`]).
//!
//! The server runs under a small shell guard that stops it (fast shutdown) once the
//! process that started it has exited, so a shared server never outlives its test binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// The user and password of every test server.
pub const USER: &str = "shoal";
pub const PASSWORD: &str = "shoal-test-password";

/// A running server; stopped (fast shutdown) when dropped.
#[derive(Debug)]
pub struct PostgresServer {
    pub port: u16,
    /// The data directory's parent (also the socket directory).
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `-c NAME=VALUE` settings it runs with.
    settings: Vec<String>,
}

impl PostgresServer {
    /// Initialises a cluster and starts it; returns once it accepts connections.
    pub fn start() -> anyhow::Result<PostgresServer> {
        Self::start_with(None)
    }

    /// [`start`](Self::start), also taking TLS connections with `certificate` and `key`
    /// (PEM files; plain connections still work).
    pub fn start_tls(certificate: &Path, key: &Path) -> anyhow::Result<PostgresServer> {
        Self::start_with(Some((certificate, key)))
    }

    fn start_with(tls: Option<(&Path, &Path)>) -> anyhow::Result<PostgresServer> {
        let bin = binaries()?;
        // Reachable by the postgres user: a directory of its own under /tmp.
        let dir = tempfile::Builder::new()
            .prefix("shoal-pg.")
            .tempdir_in("/tmp")
            .context("a directory for PostgreSQL")?;
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, PASSWORD).context("writing the password file")?;
        let mut settings = Vec::new();
        if let Some((certificate, key)) = tls {
            // The server reads them as its own user, and refuses a key others can read.
            let (crt, pem) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::copy(certificate, &crt).context("copying the certificate")?;
            std::fs::copy(key, &pem).context("copying the key")?;
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o600))?;
            settings.extend([
                "ssl=on".to_owned(),
                format!("ssl_cert_file={}", crt.display()),
                format!("ssl_key_file={}", pem.display()),
            ]);
        }
        run(Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir.path()))?;
        run(as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.path().join("db"))
            .args([
                "-U",
                USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", password_file.display()))
            .args(["--no-sync", "-E", "UTF8", "--locale=C"]))
        .context("initdb")?;
        // A port that is free now may be taken before the server binds it: try a few.
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            match launch(&bin, dir.path(), port, &settings) {
                Ok(()) => {
                    return Ok(PostgresServer {
                        port,
                        dir,
                        bin,
                        settings,
                    });
                }
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("PostgreSQL did not start")))
    }

    /// The server this test process shares among its tests, started on first use (call
    /// it from a blocking context: `tokio::task::spawn_blocking`).
    pub fn shared() -> anyhow::Result<&'static PostgresServer> {
        static SHARED: OnceLock<Result<PostgresServer, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| PostgresServer::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// A URL for database `name`, created empty if it does not exist.
    pub fn database(&self, name: &str) -> anyhow::Result<String> {
        let exists = self.psql(
            "postgres",
            &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
        )?;
        if exists.trim().is_empty() {
            self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        }
        Ok(self.url(name))
    }

    /// The URL of database `name` with the test user's password.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{name}",
            self.port
        )
    }

    /// Runs `sql` in database `name` through the Unix socket; returns its unaligned output.
    pub fn psql(&self, name: &str, sql: &str) -> anyhow::Result<String> {
        let output = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                name,
                "-c",
                sql,
            ])
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !output.status.success() {
            bail!(
                "psql {sql:?} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Opens a session on database `name`, begins a transaction and runs `sql` in it (a
    /// `... FOR UPDATE` that holds rows locked, say); returns once `sql` has run, holding the
    /// transaction open until [`Held::release`] or drop.
    pub fn hold(&self, name: &str, sql: &str) -> anyhow::Result<Held> {
        use std::io::{BufRead as _, Write as _};
        let mut session = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("running psql")?;
        let mut input = session.stdin.take().context("psql's stdin")?;
        writeln!(input, "BEGIN;\n{sql};\n\\echo held-by-the-test")?;
        input.flush()?;
        let mut output = std::io::BufReader::new(session.stdout.take().context("psql's stdout")?);
        let mut line = String::new();
        loop {
            line.clear();
            if output.read_line(&mut line)? == 0 {
                bail!("psql ended before {sql:?} ran: {:?}", session.wait());
            }
            if line.trim() == "held-by-the-test" {
                break;
            }
        }
        Ok(Held { session, input })
    }

    /// Stops the server: `fast` ends sessions cleanly, otherwise `immediate` (as a crash).
    pub fn stop(&self, fast: bool) -> anyhow::Result<()> {
        let mode = if fast { "fast" } else { "immediate" };
        run(as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("db"))
            .args(["-m", mode, "-w", "stop"]))
    }

    /// Starts it again on the same port (after [`stop`](Self::stop)).
    pub fn restart(&self) -> anyhow::Result<()> {
        launch(&self.bin, self.dir.path(), self.port, &self.settings)
    }
}

/// A transaction a test holds open in a session of its own ([`PostgresServer::hold`]).
#[derive(Debug)]
pub struct Held {
    session: std::process::Child,
    input: std::process::ChildStdin,
}

impl Held {
    /// Commits the transaction and ends the session.
    pub fn release(mut self) -> anyhow::Result<()> {
        use std::io::Write as _;
        writeln!(self.input, "COMMIT;\n\\q")?;
        self.input.flush()?;
        let status = self.session.wait()?;
        if !status.success() {
            bail!("psql ended with {status}");
        }
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.session.kill();
        let _ = self.session.wait();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = self.stop(true);
    }
}

/// Starts the server of `dir/db` on `port` under the guard; returns once it accepts
/// connections.
fn launch(bin: &Path, dir: &Path, port: u16, settings: &[String]) -> anyhow::Result<()> {
    let db = dir.join("db");
    let log = dir.join("log");
    // The guard: start the server, stop it once the starting process is gone. It runs as
    // the postgres user, which may not signal (so not `kill -0`) a root process: /proc tells.
    let script = format!(
        "{postgres} -D {db} -p {port} -k {socket} -c listen_addresses=127.0.0.1 \
         -c max_connections=200 {settings} >>{log} 2>&1 & server=$!; \
         while [ -d /proc/{parent} ] && kill -0 $server 2>/dev/null; do sleep 1; done; \
         kill -INT $server 2>/dev/null",
        postgres = bin.join("postgres").display(),
        db = db.display(),
        socket = dir.display(),
        log = log.display(),
        parent = std::process::id(),
        settings = settings
            .iter()
            .map(|setting| format!("-c {setting}"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    let before = std::fs::read_to_string(&log).unwrap_or_default().len();
    let mut guard = Command::new("runuser")
        .args(["-u", "postgres", "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting postgres")?;
    let deadline = std::time::Instant::now() + crate::TIMEOUT;
    // No event says it accepts connections: ask pg_isready until it does.
    loop {
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
            .status()
            .context("running pg_isready")?;
        if ready.success() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let text = text.get(before..).unwrap_or_default();
        // The guard ends with the server (which exits on any start-up error): no use
        // waiting for it then. (A FATAL line may only be a client refused during
        // recovery.)
        let ended = guard.try_wait().ok().flatten().is_some();
        if ended || text.contains("could not bind") {
            bail!("postgres did not start on port {port}: {text}");
        }
        if std::time::Instant::now() > deadline {
            bail!("postgres never accepted connections on port {port}: {text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where Debian keeps the server's binaries (`apt-get install postgresql`).
fn binaries() -> anyhow::Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("{} is missing: apt-get install postgresql", root.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .with_context(|| format!("no PostgreSQL server under {}", root.display()))
}

fn as_postgres(program: &Path) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(program);
    command
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}
