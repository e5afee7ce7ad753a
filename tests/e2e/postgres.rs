//! The PostgreSQL store (`--store postgres://...`) against a real PostgreSQL server the test
//! starts (one per test binary, a database per test): state kept in the database across a
//! `kill -9`, a standby that takes over when the leader dies, fencing by the epoch, a
//! leader that loses its lock connection stepping down, and bad settings refused at start.
//! (`SHOAL_TEST_STORE=postgres` also runs the other end-to-end tests on this store; the
//! test script does so for `jobs`.)

use std::time::Instant;

use shoal_harness::{PostgresServer, Replica};

use crate::common::{TIMEOUT, bin, path, shoal, start_orchestrator_with, state, wait_connected};

async fn server() -> &'static PostgresServer {
    tokio::task::spawn_blocking(PostgresServer::shared)
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// A fresh database named `name` on the shared server (dropped first if a previous run
/// left it).
async fn fresh_database(server: &'static PostgresServer, name: &str) -> String {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        server.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        )?;
        server.database(&name)
    })
    .await
    .expect("join")
    .unwrap_or_else(|e| panic!("{e:#}"))
}

async fn psql(server: &'static PostgresServer, database: &str, sql: &str) -> String {
    let (database, sql) = (database.to_owned(), sql.to_owned());
    tokio::task::spawn_blocking(move || server.psql(&database, &sql))
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Holds back every commit to `database`: a session of the test's own holds the leadership
/// row `FOR UPDATE`, which every write transaction reads `FOR SHARE`.
async fn hold_commits(server: &'static PostgresServer, database: &str) -> shoal_harness::Held {
    let database = database.to_owned();
    tokio::task::spawn_blocking(move || {
        server.hold(&database, "SELECT epoch FROM shoal_leader FOR UPDATE")
    })
    .await
    .expect("join")
    .expect("hold the leadership row")
}

/// Lets the commits [`hold_commits`] held back go through.
async fn release_commits(held: shoal_harness::Held) {
    tokio::task::spawn_blocking(move || held.release())
        .await
        .expect("join")
        .expect("release the row");
}

/// How many sessions of `database` wait on a lock (a held-back commit is one).
async fn lock_waiters(server: &'static PostgresServer, database: &str) -> String {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' \
         AND wait_event_type = 'Lock'"
    );
    psql(server, "postgres", &sql).await.trim().to_owned()
}

/// Runs `shoal-orchestrator` with `args` to its exit (within the timeout); its stderr.
async fn refused_at_start(data: &std::path::Path, args: &[&str]) -> String {
    let output = tokio::time::timeout(
        TIMEOUT,
        tokio::process::Command::new(bin("shoal-orchestrator"))
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(args)
            .output(),
    )
    .await
    .expect("the orchestrator exits instead of hanging")
    .expect("runs");
    assert!(!output.status.success(), "it started: {output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Jobs, their executions and results live in the database: after `kill -9` and a start
/// on the same database, a finished job keeps its result and a queued one stays queued;
/// and the data directory holds no embedded store.
#[tokio::test(flavor = "multi_thread")]
async fn the_state_lives_in_the_database_across_a_kill() {
    let server = server().await;
    let url = fresh_database(server, "kept").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("orchestrator");
    let args = ["--store", url.as_str(), "--lease", "30s"];
    let mut orchestrator = start_orchestrator_with(&data, 0, &args).await;
    let (address, port) = (orchestrator.address.clone(), orchestrator.port);
    let _executor =
        crate::common::start_executor(&address, &dir.path().join("executor"), "pg", &[]);
    wait_connected(&orchestrator, "pg").await;

    let hello = path("examples/hello/hello.wasm");
    let finished = shoal(&address, &["wasm", "run", "--id-only", &hello, "kept"])
        .await
        .success()
        .stdout
        .trim()
        .to_owned();
    crate::common::wait_terminal(&address, &finished).await;
    let queued = shoal(
        &address,
        &["wasm", "run", "--id-only", &hello, "-s", "zone=none"],
    )
    .await
    .success()
    .stdout
    .trim()
    .to_owned();
    let rows = psql(server, "kept", "SELECT count(*) FROM shoal_jobs").await;
    assert_eq!(rows.trim(), "2", "both jobs are rows of the database");

    orchestrator.kill().await.expect("kill -9");
    let _orchestrator = start_orchestrator_with(&data, port, &args).await;
    let job = shoal(
        &address,
        &["job", "describe", &finished, "--output", "json"],
    )
    .await
    .success()
    .json();
    assert_eq!(state(&job), "JOB_STATE_COMPLETED", "{job}");
    let results = dir.path().join("results");
    shoal(
        &address,
        &["job", "get", &finished, &results.to_string_lossy()],
    )
    .await
    .success();
    let stdout = std::fs::read_to_string(results.join("stdout")).expect("stdout");
    assert!(stdout.contains("arg[1]=kept"), "{stdout}");
    let job = shoal(&address, &["job", "describe", &queued, "--output", "json"])
        .await
        .success()
        .json();
    assert_eq!(state(&job), "JOB_STATE_QUEUED", "{job}");
    assert!(
        !data.join("state.redb").exists() && !data.join("state.wal").exists(),
        "no embedded store beside the database"
    );
}

/// A second orchestrator on the same database is a standby while the first leads: its
/// health says the job service is NOT_SERVING and its calls are UNAVAILABLE, naming the
/// leader; a CLI and an executor given both addresses (the standby's first) find the
/// leader. When the leader is killed, the standby takes over (measured) with the leader's
/// jobs, and the executor follows it and runs new work. The epoch went up by one.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_takes_over_when_the_leader_is_killed() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let server = server().await;
    let url = fresh_database(server, "failover").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["--store", url.as_str(), "--lease", "30s"];
    let mut leader = start_orchestrator_with(&dir.path().join("one"), 0, &args).await;

    // The standby: it binds its port, says where, and waits for the lock.
    let standby = Replica::start(&dir.path().join("two"), &args)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let waiting = standby
        .lines
        .wait_for("about waiting", |line| {
            Ok(line
                .contains("waiting to take over")
                .then(|| serde_json::from_str::<serde_json::Value>(line))
                .transpose()?)
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let standby_address = standby.address.clone();
    let leader_named = waiting["leader_address"].as_str().expect("leader address");
    assert!(
        leader.address.ends_with(leader_named),
        "the standby names the leader: {waiting}"
    );

    let mut health = HealthClient::new(
        tonic::transport::Endpoint::from_shared(standby_address.clone())
            .expect("address")
            .connect_lazy(),
    );
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    for service in ["shoal.v1.JobService", "shoal.v1.ExecutorService"] {
        let answer = health.check(check(service)).await.expect("health");
        assert_eq!(
            answer.get_ref().status(),
            ServingStatus::NotServing,
            "{service}"
        );
    }
    // Alive, though: a liveness probe must not restart a standby.
    let answer = health.check(check("")).await.expect("health");
    assert_eq!(answer.get_ref().status(), ServingStatus::Serving);
    let refused = shoal(&standby_address, &["job", "list"]).await;
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused.stderr.contains("this orchestrator is a standby")
            && refused.stderr.contains(&format!("at {leader_named}")),
        "{refused:?}"
    );
    let both = format!("{standby_address},{}", leader.address);
    let listed = shoal(&both, &["job", "list"]).await;
    assert_eq!(listed.code, 0, "the CLI finds the leader: {listed:?}");

    let hello = path("examples/hello/hello.wasm");
    let _executor =
        crate::common::start_executor(&both, &dir.path().join("executor"), "follower", &[]);
    wait_connected(&leader, "follower").await;
    let before = shoal(&both, &["wasm", "run", "--id-only", &hello, "one"])
        .await
        .success()
        .stdout
        .trim()
        .to_owned();
    crate::common::wait_terminal(&leader.address, &before).await;
    // Data larger than one block: its blocks are in the database, not the leader's disk.
    let data: Vec<u8> = (0..1_100_000u32).map(|i| (i % 251) as u8).collect();
    let file = dir.path().join("data.bin");
    std::fs::write(&file, &data).expect("write");
    let cid = shoal(&both, &["data", "put", &file.to_string_lossy()])
        .await
        .success()
        .stdout
        .trim()
        .to_owned();
    let epoch = psql(server, "failover", "SELECT epoch FROM shoal_leader").await;

    let killed = Instant::now();
    leader.kill().await.expect("kill -9 the leader");
    standby.leads().await.expect("the standby takes over");
    let took = killed.elapsed();
    eprintln!("the standby served {took:?} after the leader was killed");
    let later = psql(server, "failover", "SELECT epoch FROM shoal_leader").await;
    assert_eq!(
        later.trim().parse::<i64>().expect("epoch"),
        epoch.trim().parse::<i64>().expect("epoch") + 1,
        "a new term"
    );
    let job = shoal(&both, &["job", "describe", &before, "--output", "json"])
        .await
        .success()
        .json();
    assert_eq!(state(&job), "JOB_STATE_COMPLETED", "{job}");
    let fetched = dir.path().join("fetched.bin");
    shoal(&both, &["data", "get", &cid, &fetched.to_string_lossy()])
        .await
        .success();
    assert!(
        std::fs::read(&fetched).expect("fetched") == data,
        "the new leader serves the data the old one stored"
    );

    // The executor followed the new leader: it runs the next job.
    let after = shoal(&both, &["wasm", "run", &hello, "two"])
        .await
        .success();
    assert!(after.stdout.contains("arg[1]=two"), "{after:?}");
    drop(standby);
}

/// Fencing: once a later term has begun (forced here by raising the epoch, as a new
/// leader does), the old leader's writes are refused (UNAVAILABLE, saying why), nothing of
/// them reaches the database, and it stops serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_from_an_ended_term_is_refused() {
    let server = server().await;
    let url = fresh_database(server, "fenced").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["--store", url.as_str()];
    let orchestrator = start_orchestrator_with(&dir.path().join("data"), 0, &args).await;
    let address = orchestrator.address.clone();
    let hello = path("examples/hello/hello.wasm");
    let job = shoal(&address, &["wasm", "run", "--id-only", &hello])
        .await
        .success()
        .stdout
        .trim()
        .to_owned();
    psql(
        server,
        "fenced",
        "UPDATE shoal_leader SET epoch = epoch + 1",
    )
    .await;

    let refused = shoal(&address, &["job", "stop", &job]).await;
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("no longer leads: a later leadership term"),
        "{refused:?}"
    );
    // It stands by and, the lock being free, leads again in a term of its own, with the
    // job as it was before the refused cancel.
    relead(&orchestrator.lines).await;
    let epoch = psql(server, "fenced", "SELECT epoch FROM shoal_leader").await;
    assert_eq!(epoch.trim(), "3", "terms 1, 2 (forced) and 3");
    let job = shoal(&address, &["job", "describe", &job, "--output", "json"])
        .await
        .success()
        .json();
    assert_eq!(state(&job), "JOB_STATE_QUEUED", "{job}");
}

/// Waits until the orchestrator logging `lines` has stepped down and then served again.
async fn relead(lines: &shoal_harness::Lines) {
    lines
        .wait_until("about serving again after stepping down", |lines| {
            lines
                .iter()
                .skip_while(|line| !line.contains("stepped down; standing by"))
                .any(|line| line.contains("orchestrator listening"))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// A leader whose lock connection is ended (as when the network is cut) stops serving at
/// once, saying why, stands by, and leads again in a new term.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_loses_its_lock_connection_steps_down() {
    let server = server().await;
    let url = fresh_database(server, "stepdown").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let orchestrator =
        start_orchestrator_with(&dir.path().join("data"), 0, &["--store", url.as_str()]).await;
    let ended = psql(
        server,
        "stepdown",
        "SELECT pg_terminate_backend(pid) FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND database = \
         (SELECT oid FROM pg_database WHERE datname = 'stepdown')",
    )
    .await;
    assert_eq!(ended.trim(), "t", "one lock session ended: {ended:?}");
    orchestrator
        .lines
        .wait_for("the reason", |line| {
            Ok(line.contains("lost the leadership").then_some(()))
        })
        .await
        .expect("it logs why");
    relead(&orchestrator.lines).await;
    let epoch = psql(server, "stepdown", "SELECT epoch FROM shoal_leader").await;
    assert_eq!(epoch.trim(), "2", "a second term");
    let listed = shoal(&orchestrator.address, &["job", "list"]).await;
    assert_eq!(listed.code, 0, "it serves: {listed:?}");
}

/// An unreachable database, a wrong password and a schema newer than the orchestrator's
/// stop start-up with an error that says which.
#[tokio::test(flavor = "multi_thread")]
async fn bad_store_settings_are_refused_at_start() {
    let server = server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = closed.local_addr().expect("address").port();
    drop(closed);
    let nowhere = format!("postgres://shoal:x@127.0.0.1:{port}/shoal");
    let stderr = refused_at_start(&data, &["--store", &nowhere]).await;
    assert!(
        stderr.contains(&format!(
            "connecting to postgres://shoal@127.0.0.1:{port}/shoal failed"
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains(":x@"),
        "the password is not shown: {stderr}"
    );

    let url = fresh_database(server, "settings").await;
    let wrong = url.replace(shoal_harness::postgres::PASSWORD, "wrong-password");
    let stderr = refused_at_start(&data, &["--store", &wrong]).await;
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-password"), "{stderr}");

    // A schema from the future (written by a newer release).
    let mut first = start_orchestrator_with(&dir.path().join("first"), 0, &["--store", &url]).await;
    first.terminate().await.expect("stop it");
    psql(
        server,
        "settings",
        "UPDATE shoal_schema SET version = version + 1",
    )
    .await;
    let stderr = refused_at_start(&data, &["--store", &url]).await;
    assert!(
        stderr.contains("newer than this orchestrator's"),
        "{stderr}"
    );

    let stderr = refused_at_start(&data, &["--store", "mysql://somewhere/db"]).await;
    assert!(stderr.contains("postgres://"), "{stderr}");
}

/// Three orchestrators on one database; the leader is killed with SIGKILL twice while five
/// clients submit 500 jobs to all three addresses, and an executor follows the leader.
/// Every acknowledged job is stored once and completes once with its own output; each
/// time, a standby serves within the timeout (the time taken is printed).
#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_lose_two_leaders_and_no_job() {
    let server = server().await;
    let url = fresh_database(server, "replicas").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["--store", url.as_str(), "--lease", "30s"];
    let mut replicas = Vec::new();
    for n in 0..3 {
        let replica = Replica::start(&dir.path().join(format!("replica-{n}")), &args)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        if n == 0 {
            replica.leads().await.expect("the first replica leads");
        }
        replicas.push(replica);
    }
    let all: Vec<&str> = replicas.iter().map(|r| r.address.as_str()).collect();
    let all = all.join(",");
    let _executor = crate::common::start_executor(
        &all,
        &dir.path().join("executor"),
        "follower",
        &["--slots", "8"],
    );

    let load = crate::faults::Load::start(&all, "replicas").await;
    let mut leader = 0;
    for kill_at in [crate::faults::JOBS / 4, crate::faults::JOBS * 2 / 3] {
        load.wait_acked(kill_at).await;
        let killed = Instant::now();
        replicas[leader]
            .child
            .kill()
            .await
            .expect("kill -9 the leader");
        let standbys: Vec<_> = (0..replicas.len())
            .filter(|&n| n != leader && replicas[n].child.id().is_some())
            .collect();
        let waits = standbys.iter().map(|&n| Box::pin(replicas[n].leads()));
        let (led, which, _) = futures::future::select_all(waits).await;
        led.expect("a standby takes over");
        leader = standbys[which];
        eprintln!(
            "replica {leader} served {:?} after the leader was killed",
            killed.elapsed()
        );
    }
    load.check(&replicas[leader].address).await;
}

/// A leader cut off from the database by a network partition (a proxy between them stops
/// forwarding, connections left open) steps down before a standby, which reaches the
/// database directly, begins the next term; so no two leaders accept work. The new leader
/// has the old one's job.
#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_leader_steps_down_before_another_leads() {
    let server = server().await;
    let url = fresh_database(server, "partition").await;
    let proxy = crate::common::Proxy::start(server.port).await;
    let through_proxy = url.replace(&format!(":{}/", server.port), &format!(":{}/", proxy.port));
    let dir = tempfile::tempdir().expect("tempdir");
    let leader = start_orchestrator_with(
        &dir.path().join("one"),
        0,
        &["--store", through_proxy.as_str()],
    )
    .await;
    let standby = Replica::start(&dir.path().join("two"), &["--store", url.as_str()])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let hello = path("examples/hello/hello.wasm");
    let job = shoal(
        &leader.address,
        &["wasm", "run", "--id-only", &hello, "-s", "zone=none"],
    )
    .await
    .success()
    .stdout
    .trim()
    .to_owned();

    proxy.stall();
    let at = |lines: &shoal_harness::Lines, message: &'static str| {
        let lines = lines.clone();
        async move {
            lines
                .wait_for(message, |line| {
                    let line: serde_json::Value = serde_json::from_str(line)?;
                    let found = line["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with(message));
                    Ok(found.then(|| line["timestamp"].as_str().unwrap_or_default().to_owned()))
                })
                .await
                .unwrap_or_else(|e| panic!("{e:#}"))
        }
    };
    let stepped_down = at(&leader.lines, "lost the leadership").await;
    standby.leads().await.expect("the standby takes over");
    let took_over = at(&standby.lines, "leading").await;
    // RFC 3339 UTC timestamps of one clock, in the same format: they sort as text.
    assert!(
        stepped_down < took_over,
        "the old leader stepped down ({stepped_down}) before the new one led ({took_over})"
    );
    let described = shoal(
        &standby.address,
        &["job", "describe", &job, "--output", "json"],
    )
    .await
    .success()
    .json();
    assert_eq!(state(&described), "JOB_STATE_QUEUED", "{described}");
    // The old leader, still cut off, stands by: it answers, but takes no work.
    at(&leader.lines, "stepped down").await;
    let refused = shoal(&leader.address, &["job", "list"]).await;
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("not serving"), "{refused:?}");
}

/// PostgreSQL itself restarted (an immediate stop: a crash) while five clients submit 500
/// jobs: the leader steps down and answers UNAVAILABLE while the database is gone, leads
/// again once it is back, and every acknowledged job is stored once and completes once.
#[tokio::test(flavor = "multi_thread")]
async fn the_database_restarting_mid_load_loses_nothing() {
    // A server of its own: the others' tests must not see it stop.
    let server = tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .expect("join")
        .map(std::sync::Arc::new)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let url = {
        let server = server.clone();
        tokio::task::spawn_blocking(move || server.database("restarted"))
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["--store", url.as_str(), "--lease", "30s"];
    let orchestrator = start_orchestrator_with(&dir.path().join("data"), 0, &args).await;
    let address = orchestrator.address.clone();
    let _executor = crate::common::start_executor(
        &address,
        &dir.path().join("executor"),
        "steady",
        &["--slots", "8"],
    );
    let load = crate::faults::Load::start(&address, "restarted").await;
    load.wait_acked(crate::faults::JOBS / 3).await;

    let stopping = server.clone();
    tokio::task::spawn_blocking(move || stopping.stop(false))
        .await
        .expect("join")
        .expect("stop PostgreSQL");
    orchestrator
        .lines
        .wait_for("about stepping down", |line| {
            Ok(line.contains("stepped down; standing by").then_some(()))
        })
        .await
        .expect("the leader steps down");
    let refused = shoal(&address, &["job", "list"]).await;
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused.stderr.contains("not serving") && refused.stderr.contains("Unavailable"),
        "{refused:?}"
    );

    let starting = server.clone();
    tokio::task::spawn_blocking(move || starting.restart())
        .await
        .expect("join")
        .expect("start PostgreSQL again");
    relead(&orchestrator.lines).await;
    load.check(&address).await;
}

/// TLS to the database: with `?sslmode=require` and `--store-ca-cert`, the orchestrator's
/// sessions are encrypted (as the server's own statistics say) and it serves jobs; without
/// the CA, the server's certificate is refused at start, saying so.
#[tokio::test(flavor = "multi_thread")]
async fn the_database_is_reached_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::security::make_certificates(dir.path());
    let (certificate, key) = (
        dir.path().join("server.pem"),
        dir.path().join("server-key.pem"),
    );
    let server = tokio::task::spawn_blocking(move || PostgresServer::start_tls(&certificate, &key))
        .await
        .expect("join")
        .map(std::sync::Arc::new)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let url = {
        let server = server.clone();
        tokio::task::spawn_blocking(move || server.database("tls"))
            .await
            .expect("join")
            .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let url = format!("{url}?sslmode=require");
    let ca = dir.path().join("ca.pem").to_string_lossy().into_owned();

    let untrusted = refused_at_start(&dir.path().join("untrusted"), &["--store", &url]).await;
    assert!(
        untrusted.contains("invalid peer certificate") && untrusted.contains("127.0.0.1"),
        "{untrusted}"
    );

    let orchestrator = start_orchestrator_with(
        &dir.path().join("data"),
        0,
        &["--store", &url, "--store-ca-cert", &ca],
    )
    .await;
    let hello = path("examples/hello/hello.wasm");
    let job = shoal(
        &orchestrator.address,
        &["wasm", "run", "--id-only", &hello, "-s", "zone=none"],
    )
    .await
    .success()
    .stdout
    .trim()
    .to_owned();
    let encrypted = {
        let server = server.clone();
        tokio::task::spawn_blocking(move || {
            server.psql(
                "tls",
                "SELECT count(*) FILTER (WHERE ssl), count(*) FROM pg_stat_ssl \
                 JOIN pg_stat_activity USING (pid) WHERE application_name = 'shoal-orchestrator'",
            )
        })
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let (tls, all) = encrypted.trim().split_once('|').expect("two counts");
    assert!(
        all != "0" && tls == all,
        "every session encrypted: {encrypted}"
    );
    let described = shoal(
        &orchestrator.address,
        &["job", "describe", &job, "--output", "json"],
    )
    .await
    .success()
    .json();
    assert_eq!(state(&described), "JOB_STATE_QUEUED", "{described}");
}

/// Nothing is acted on before its commit. A session of the test's holds the leadership
/// row `FOR UPDATE`, which every write transaction reads `FOR SHARE`, so every commit waits
/// in the database (seen in `pg_stat_activity`). Meanwhile a running job's new log lines
/// reach no watcher, a submission is not answered, and no executor is sent the new job;
/// once the row is released all of it happens, with no log line lost.
#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_acted_on_before_its_commit() {
    let server = server().await;
    let url = fresh_database(server, "held").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["--store", url.as_str()];
    let orchestrator = start_orchestrator_with(&dir.path().join("data"), 0, &args).await;
    let address = orchestrator.address.clone();
    let (_executor, executor_log) = crate::common::start_executor_logged(
        &address,
        &dir.path().join("executor"),
        "held",
        &["--slots", "2"],
        &[],
    );
    wait_connected(&orchestrator, "held").await;
    let ticker = path("tests/fixtures/ticker.wasm");
    let running = crate::common::submit(&address, &[&ticker, "600"]).await;
    let mut follower = tokio::process::Command::new(bin("shoal"))
        .args(["job", "logs", "-f", &running])
        .env("SHOAL_ORCHESTRATOR", &address)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn follower");
    let followed = shoal_harness::collect(tokio::io::BufReader::new(
        follower.stdout.take().expect("stdout"),
    ));
    let lines = || followed.lock().expect("lines").clone();
    followed
        .wait_until("tick 1 at the follower", |lines| {
            lines.iter().any(|l| l.trim() == "tick 1")
        })
        .await
        .expect("ticks");
    let assigned = |log: &shoal_harness::Lines| {
        log.lock()
            .expect("lines")
            .iter()
            .filter(|l| l.contains("\"execution assigned\""))
            .count()
    };
    assert_eq!(assigned(&executor_log), 1);

    let held = hold_commits(server, "held").await;
    // The program is stored already (the running job's): the CLI goes straight to
    // SubmitJob, with nothing to upload first (an upload would be held too).
    let mut submitting = tokio::process::Command::new(bin("shoal"))
        .args(["wasm", "run", "--id-only", &ticker, "1"])
        .env("SHOAL_ORCHESTRATOR", &address)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn submitter");
    // The situation is reached: a commit waits on the row in the database, and the
    // submission was taken in (listings answer from memory, ahead of the store, so the new
    // job shows there before its commit). The orchestrator must now sit on what they cause.
    let deadline = Instant::now() + TIMEOUT;
    while lock_waiters(server, "held").await == "0" {
        assert!(Instant::now() < deadline, "no commit waited on the row");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    loop {
        let listed = shoal(&address, &["job", "list", "--output", "json"])
            .await
            .success()
            .json();
        if listed.as_array().map(Vec::len) == Some(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the submission never arrived: {listed}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // What was committed before the hold has had time to reach the follower; from here on
    // the guest goes on ticking on the executor, which reports every line at once, and two
    // seconds of lines are held back with their commits.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let seen = lines();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(lines(), seen, "a watcher woke before the commit");
    assert!(
        submitting.try_wait().expect("try_wait").is_none(),
        "a submission was answered before its commit"
    );
    assert_eq!(
        assigned(&executor_log),
        1,
        "an Assign left before its commit"
    );

    release_commits(held).await;
    let submitted = tokio::time::timeout(TIMEOUT, submitting.wait_with_output())
        .await
        .expect("the submission is answered")
        .expect("wait");
    assert!(submitted.status.success(), "{submitted:?}");
    let second = String::from_utf8_lossy(&submitted.stdout).trim().to_owned();
    let job = crate::common::wait_terminal(&address, &second).await;
    assert_eq!(state(&job), "JOB_STATE_COMPLETED", "{job}");
    assert_eq!(assigned(&executor_log), 2);
    let past = seen.len() + 2;
    followed
        .wait_until("the held ticks at the follower", |lines| lines.len() > past)
        .await
        .expect("ticks");
    let after = lines();
    for (i, line) in after.iter().enumerate() {
        assert_eq!(line.trim(), format!("tick {i}"), "{after:?}");
    }
    shoal(&address, &["job", "stop", &running]).await.success();
}

/// A job shows COMPLETED from memory while the commit holding its result (the blocks sent
/// with the completion) still waits in the database. A client that saw it complete and asks
/// for the result is answered once that commit is durable, with the result, never with
/// NOT_FOUND.
#[tokio::test(flavor = "multi_thread")]
async fn a_result_shown_before_its_commit_is_served_once_committed() {
    let server = server().await;
    let url = fresh_database(server, "shown").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["--store", url.as_str()];
    let orchestrator = start_orchestrator_with(&dir.path().join("data"), 0, &args).await;
    let address = orchestrator.address.clone();
    let _executor =
        crate::common::start_executor(&address, &dir.path().join("executor"), "shown", &[]);
    wait_connected(&orchestrator, "shown").await;
    let ticker = path("tests/fixtures/ticker.wasm");
    let id = crate::common::submit(&address, &[&ticker, "2"]).await;
    let _follower = crate::common::follow_until(&address, &id, "tick 0").await;
    let held = hold_commits(server, "shown").await;
    // The job ends meanwhile: shown completed (read from memory: no watch wakes before the
    // commit, so this asks), its commit waiting on the row.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let job = shoal(&address, &["job", "describe", &id, "--output", "json"])
            .await
            .success()
            .json();
        if state(&job) == "JOB_STATE_COMPLETED" {
            break;
        }
        assert!(Instant::now() < deadline, "never shown completed: {job}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_ne!(
        lock_waiters(server, "shown").await,
        "0",
        "the completion's commit is not waiting"
    );
    let results = dir.path().join("results");
    let mut getting = tokio::process::Command::new(bin("shoal"))
        .args(["job", "get", &id, &results.to_string_lossy()])
        .env("SHOAL_ORCHESTRATOR", &address)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn job get");
    // Asked while the result is not yet durable, it waits rather than failing.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    if let Some(status) = getting.try_wait().expect("try_wait") {
        let output = getting.wait_with_output().await.expect("output");
        panic!("job get ended before the commit: {status}: {output:?}");
    }
    release_commits(held).await;
    let got = tokio::time::timeout(TIMEOUT, getting.wait_with_output())
        .await
        .expect("job get ends")
        .expect("wait");
    assert!(got.status.success(), "{got:?}");
    assert_eq!(
        std::fs::read_to_string(results.join("stdout")).expect("stdout"),
        "tick 0\ntick 1\n"
    );
}
