//! Who may do what: bearer tokens with client, executor and admin roles, TLS on the gRPC
//! listener, and mutual TLS for executors, with certificates generated here.

use std::path::Path;
use std::process::Stdio;

use crate::common::{Output, bin, path, shoal_with_env, wait_for_line};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::BufReader;
use tokio::process::{Child, Command};

const CLIENT: &str = "client-token-8f2b9c1e";
const EXECUTOR: &str = "executor-token-5a7d3e0f";
const ADMIN: &str = "admin-token-c4e1b6a2";

/// Starts an executor with `args`; returns it and its stderr.
fn start_executor(
    address: &str,
    dir: &Path,
    id: &str,
    args: &[&str],
) -> (Child, BufReader<tokio::process::ChildStderr>) {
    let mut child = Command::new(bin("shoal-executor"))
        .args(["--orchestrator", address, "--executor-id", id, "--work-dir"])
        .arg(dir)
        .args(args)
        .env_remove("SHOAL_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn executor");
    let stderr = BufReader::new(child.stderr.take().expect("stderr"));
    (child, stderr)
}

async fn cli(
    address: &str,
    token: Option<&str>,
    extra_env: &[(&str, &str)],
    args: &[&str],
) -> Output {
    let mut env: Vec<(String, String)> = extra_env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    if let Some(token) = token {
        env.push(("SHOAL_TOKEN".into(), token.into()));
    }
    shoal_with_env(address, args, &env).await
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_have_roles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("# role token\nclient {CLIENT}\nexecutor {EXECUTOR}\nadmin {ADMIN}\n"),
    )
    .expect("write");
    let tokens_flag = tokens.to_string_lossy().into_owned();
    let orchestrator = crate::common::start_orchestrator_with(
        &dir.path().join("o"),
        0,
        &["--tokens-file", &tokens_flag],
    )
    .await;
    let address = orchestrator.address.clone();
    let (_executor, executor_stderr) = start_executor(
        &address,
        &dir.path().join("e"),
        "honest",
        &["--token", EXECUTOR],
    );
    crate::common::drain(executor_stderr);
    crate::common::wait_connected(&orchestrator, "honest").await;

    // No token, or a wrong one: UNAUTHENTICATED.
    let out = cli(&address, None, &[], &["node", "list"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("missing bearer token"),
        "{}",
        out.stderr
    );
    let out = cli(
        &address,
        Some("not-a-real-token-at-all"),
        &[],
        &["node", "list"],
    )
    .await;
    assert!(
        out.stderr.contains("the bearer token is not valid"),
        "{}",
        out.stderr
    );

    // A client runs jobs and lists nodes, but cannot take executors out of service.
    let hello = path("examples/hello/hello.wasm");
    let out = cli(&address, Some(CLIENT), &[], &["wasm", "run", &hello, "x"])
        .await
        .success();
    assert!(out.stdout.contains("arg[1]=x"), "{}", out.stdout);
    cli(&address, Some(CLIENT), &[], &["node", "list"])
        .await
        .success();
    let out = cli(
        &address,
        Some(CLIENT),
        &[],
        &["node", "drain", "honest", "--grace", "0s"],
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("a client token may not call shoal.v1.NodeService/Drain"),
        "{}",
        out.stderr
    );

    // An executor token cannot submit jobs.
    let out = cli(&address, Some(EXECUTOR), &[], &["wasm", "run", &hello]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("a executor token may not call shoal.v1.JobService/SubmitJob"),
        "{}",
        out.stderr
    );

    // A client token cannot register as an executor.
    let (_thief, mut stderr) = start_executor(
        &address,
        &dir.path().join("t"),
        "thief",
        &["--token", CLIENT],
    );
    wait_for_line(
        &mut stderr,
        "a client token may not call shoal.v1.ExecutorService/Connect",
    )
    .await;

    // An admin may cordon, and the executor is then shown cordoned.
    cli(&address, Some(ADMIN), &[], &["node", "cordon", "honest"])
        .await
        .success();
    let listed = cli(&address, Some(CLIENT), &[], &["node", "list"])
        .await
        .success();
    let row = listed
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("honest"))
        .unwrap_or_else(|| panic!("no row for the executor: {}", listed.stdout));
    assert!(row.contains("CORDONED"), "{row}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
pub fn make_certificates(dir: &Path) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    for (name, names) in [
        (
            "server",
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
        ),
        ("client", vec!["executor".to_owned()]),
    ] {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &ca)
            .expect("sign");
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).expect("write");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_and_mutual_tls_for_executors() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_certificates(dir.path());
    let file = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let (cert, key, ca) = (file("server.pem"), file("server-key.pem"), file("ca.pem"));
    let orchestrator = crate::common::start_orchestrator_with(
        &dir.path().join("o"),
        0,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
    )
    .await;
    let address = format!("https://127.0.0.1:{}", orchestrator.port);
    let trust = [("SHOAL_TLS_CA", ca.as_str())];

    // An executor with a client certificate signed by the CA connects and runs a job.
    let (client_cert, client_key) = (file("client.pem"), file("client-key.pem"));
    let (_executor, executor_stderr) = start_executor(
        &address,
        &dir.path().join("e"),
        "mtls",
        &[
            "--tls-ca",
            &ca,
            "--tls-cert",
            &client_cert,
            "--tls-key",
            &client_key,
        ],
    );
    crate::common::drain(executor_stderr);
    crate::common::wait_connected(&orchestrator, "mtls").await;
    let hello = path("examples/hello/hello.wasm");
    let out = cli(&address, None, &trust, &["wasm", "run", &hello, "over-tls"])
        .await
        .success();
    assert!(out.stdout.contains("arg[1]=over-tls"), "{}", out.stdout);

    // Without a client certificate, an executor is refused.
    let (_anonymous, mut stderr) = start_executor(
        &address,
        &dir.path().join("a"),
        "anonymous",
        &["--tls-ca", &ca],
    );
    wait_for_line(&mut stderr, "executors must present a client certificate").await;

    // A client that does not trust the server's CA, or speaks plain HTTP/2, gets nowhere,
    // and is told why.
    let out = cli(&address, None, &[], &["node", "list"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("UnknownIssuer"), "{out:?}");
    let plain = format!("http://127.0.0.1:{}", orchestrator.port);
    let out = cli(&plain, None, &[], &["node", "list"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("if it serves TLS, use an https:// address"),
        "{out:?}"
    );
}

/// The daemons that run guests are position-independent (ELF type ET_DYN with an
/// interpreter: the loader randomises their image); the CLI is a fixed-address executable
/// (ET_EXEC), linked so for start-up time (`cli/build.rs`, on Linux with glibc). All three
/// have full RELRO: a read-only-after-relocation segment and immediate binding.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn daemons_are_position_independent() {
    const ET_EXEC: u16 = 2;
    const ET_DYN: u16 = 3;
    for (name, expected) in [
        ("shoal-executor", ET_DYN),
        ("shoal-orchestrator", ET_DYN),
        ("shoal", ET_EXEC),
    ] {
        let elf = Elf(std::fs::read(bin(name)).expect("read the binary"));
        assert_eq!(&elf.0[..4], b"\x7fELF", "{name} is not ELF");
        assert_eq!(elf.u16(16), expected, "{name}: ELF type");
        let headers = elf.program_headers();
        const PT_DYNAMIC: u32 = 2;
        const PT_GNU_RELRO: u32 = 0x6474_e552;
        assert!(
            headers.iter().any(|h| h.0 == PT_GNU_RELRO),
            "{name}: no RELRO segment"
        );
        let &(_, offset, size) = headers
            .iter()
            .find(|h| h.0 == PT_DYNAMIC)
            .expect("a dynamic section");
        // (tag, value) pairs: DT_FLAGS (30) with DF_BIND_NOW (8), or DT_FLAGS_1 with DF_1_NOW (1).
        let bind_now = (offset..offset + size).step_by(16).any(|at| {
            let (tag, value) = (elf.u64(at as usize), elf.u64(at as usize + 8));
            (tag == 30 && value & 8 != 0) || (tag == 0x6fff_fffb && value & 1 != 0)
        });
        assert!(bind_now, "{name}: symbols are bound lazily");
    }
}

/// A 64-bit little-endian ELF file, read just enough for the checks above.
struct Elf(Vec<u8>);

impl Elf {
    fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.0[at..at + 2].try_into().expect("2 bytes"))
    }
    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.0[at..at + 4].try_into().expect("4 bytes"))
    }
    fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.0[at..at + 8].try_into().expect("8 bytes"))
    }
    /// (type, file offset, file size) of each program header.
    fn program_headers(&self) -> Vec<(u32, u64, u64)> {
        let (start, size, count) = (self.u64(0x20) as usize, self.u16(0x36), self.u16(0x38));
        (0..count as usize)
            .map(|i| start + i * size as usize)
            .map(|at| (self.u32(at), self.u64(at + 8), self.u64(at + 0x20)))
            .collect()
    }
}
