//! Thousands of generated hostile executor messages and client requests against the real
//! orchestrator binary leave it healthy: no panic, precise statuses, acknowledged jobs
//! intact, and a real executor still runs a job afterwards. (The hand-driven protocol
//! tests, result trees sent with completions, an executor that never acts and hostile
//! registrations, are in-process: `orchestrator/tests/in_process/protocol.rs`.)

use std::time::Duration;

use crate::common::submit;
use bytes::Bytes;
use shoal::proto::executor_service_client::ExecutorServiceClient;
use shoal::proto::{
    Capacity, ContentBlock, ExecutionFinished, ExecutionResult, ExecutorMessage,
    OrchestratorMessage, Register, executor_message, orchestrator_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A hand-driven executor: registers `id` with `slots` slots and returns its uplink and the
/// orchestrator's messages after `Registered`, or the status the registration got.
async fn hand_executor(
    address: &str,
    id: &str,
    slots: u32,
) -> Result<
    (
        mpsc::Sender<ExecutorMessage>,
        tonic::Streaming<OrchestratorMessage>,
    ),
    tonic::Status,
> {
    let channel = crate::common::connect(address).await;
    let (uplink, rx) = mpsc::channel(64);
    uplink
        .send(message(executor_message::Message::Register(Register {
            executor_id: id.into(),
            protocol_version: 1,
            capacity: Some(Capacity {
                slots,
                memory_bytes: 1 << 30,
            }),
            instance_id: id.into(),
            ..Default::default()
        })))
        .await
        .expect("register");
    let mut inbound = ExecutorServiceClient::new(channel)
        .connect(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = inbound.message().await?.expect("an answer");
    assert!(matches!(
        first.message,
        Some(orchestrator_message::Message::Registered(_))
    ));
    Ok((uplink, inbound))
}

fn message(message: executor_message::Message) -> ExecutorMessage {
    ExecutorMessage {
        message: Some(message),
        sequence: 0,
    }
}

/// A small deterministic generator for hostile messages; `results` are the completions
/// it may claim in earnest (a result CID and the blocks sent with it).
struct Chaos {
    state: u64,
    results: Vec<(String, Vec<ContentBlock>)>,
}

impl Chaos {
    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A number from the edges peers lie with: 0, 1, small, huge, MAX and around it.
    fn number(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => u64::MAX - self.below(3),
            2 => u64::MAX / 2 + self.below(1000),
            3 => self.below(1 << 32),
            _ => self.below(100),
        }
    }

    fn text(&mut self, ids: &[String]) -> String {
        match self.below(5) {
            0 | 4 if !ids.is_empty() => ids[self.below(ids.len() as u64) as usize].clone(),
            1 => "\0\n/..\u{202e}".repeat(self.below(50) as usize),
            2 => "x".repeat(self.below(70_000) as usize),
            3 => String::new(),
            _ => format!("bafkrei{}", self.next()),
        }
    }

    fn bytes(&mut self) -> Bytes {
        let len = self.below(3000) as usize;
        Bytes::from(crate::common::pseudo_random(len, self.next()))
    }

    /// One generated message, often about an execution that is really assigned (`ids`).
    fn message(&mut self, ids: &[String]) -> ExecutorMessage {
        use executor_message::Message;
        let execution_id = self.text(ids);
        let state = match self.below(3) {
            0 => self.next() as i32,
            _ => self.below(10) as i32,
        };
        let body = match self.below(8) {
            0 => Some(Message::Heartbeat(shoal::proto::Heartbeat {
                running_execution_ids: (0..self.below(4)).map(|_| self.text(ids)).collect(),
                last_report_sequence: self.number(),
            })),
            1 => Some(Message::Update(shoal::proto::ExecutionUpdate {
                execution_id,
                state,
            })),
            2 | 3 => Some(Message::Log(shoal::proto::ExecutionLog {
                chunk: Some(shoal::proto::LogChunk {
                    execution_id,
                    stream: self.below(4) as i32,
                    offset: self.number(),
                    data: self.bytes(),
                }),
            })),
            4 if !self.results.is_empty() => {
                // A completion that looks right, claiming one of the results on offer.
                let pick = self.below(self.results.len() as u64) as usize;
                let (result_cid, result_blocks) = self.results[pick].clone();
                Some(Message::Finished(ExecutionFinished {
                    execution_id,
                    state: shoal::proto::ExecutionState::Completed as i32,
                    result: Some(ExecutionResult {
                        result_cid,
                        ..Default::default()
                    }),
                    failure: None,
                    result_blocks,
                }))
            }
            4 | 5 => Some(Message::Finished(ExecutionFinished {
                execution_id,
                state,
                result: (self.below(2) == 0).then(|| ExecutionResult {
                    exit_code: self.next() as i32,
                    result_cid: self.text(ids),
                    stdout_bytes: self.number(),
                    published_to: if self.below(4) == 0 {
                        self.text(&[])
                    } else {
                        String::new()
                    },
                    ..Default::default()
                }),
                failure: (self.below(2) == 0).then(|| shoal::proto::Failure {
                    kind: self.next() as i32,
                    message: self.text(&[]),
                    retryable: true,
                }),
                result_blocks: (0..self.below(4))
                    .map(|_| ContentBlock {
                        cid: self.text(&[]),
                        data: self.bytes(),
                    })
                    .collect(),
            })),
            6 => Some(Message::Draining(Default::default())),
            _ => match self.below(2) {
                0 => None,
                _ => Some(Message::Register(Register {
                    executor_id: self.text(&[]),
                    ..Default::default()
                })),
            },
        };
        ExecutorMessage {
            message: body,
            sequence: self.number(),
        }
    }
}

/// Generated hostile executors: 80 streams, each registering and then sending 60 messages
/// built from lies (numbers at u64::MAX, ids with NUL and newline, states and kinds out of
/// range, 70 KB strings, garbage result trees, reports on executions that others run).
/// Afterwards the orchestrator is healthy and panicked nowhere, every acknowledged job is
/// still there, and a real executor runs a new job to completion.
#[tokio::test(flavor = "multi_thread")]
async fn generated_hostile_executors_leave_the_orchestrator_healthy() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let orchestrator = crate::common::start_orchestrator_logged(
        &scratch.path().join("data"),
        0,
        &[
            "--assign-ack-timeout",
            "1s",
            "--lease",
            "1s",
            "--heartbeat-interval",
            "500ms",
        ],
        &[],
    )
    .await;
    let address = orchestrator.address.clone();
    let logs = orchestrator.lines.clone();
    let program = crate::common::wat(scratch.path(), "trap");
    let mut jobs = Vec::new();
    for _ in 0..20 {
        jobs.push(submit(&address, &[&program]).await);
    }
    // The completions the lies may claim: a tree the store holds whole, a file the store
    // holds (the program: a result that is not a directory), a sound tree sent along, and
    // that tree without one of its files (a root pointing at a block nobody has).
    let stored_tree = scratch.path().join("stored-tree");
    std::fs::create_dir_all(&stored_tree).expect("mkdir");
    std::fs::write(stored_tree.join("stdout"), b"stored\n").expect("write");
    let stored_cid = crate::common::shoal(
        &address,
        &["data", "put", "-q", &stored_tree.to_string_lossy()],
    )
    .await
    .success()
    .stdout
    .trim()
    .to_owned();
    let program_cid = crate::common::shoal(&address, &["data", "put", "-q", &program])
        .await
        .success()
        .stdout
        .trim()
        .to_owned();
    let file = |name: &str, data: &str| (name.to_owned(), Some(Bytes::from(data.to_owned())));
    let (sound, _) = shoal::content::unixfs::directory_tree(vec![
        file("exitCode", "0"),
        file("stdout", "sent along\n"),
    ]);
    let sound: Vec<ContentBlock> = sound.into_iter().map(ContentBlock::from).collect();
    let root = |blocks: &[ContentBlock]| blocks.last().map(|b| b.cid.clone()).unwrap_or_default();
    let hollow: Vec<ContentBlock> = sound[1..].to_vec();
    let mut chaos = Chaos {
        state: 0x5eed_cafe_f00d,
        results: vec![
            (stored_cid, Vec::new()),
            (program_cid, Vec::new()),
            (root(&sound), sound.clone()),
            (root(&hollow), hollow),
        ],
    };
    let mut assigned: Vec<String> = jobs.clone();
    for stream in 0..80 {
        let id = format!("hostile-{}", stream % 7);
        let Ok((uplink, mut inbound)) = hand_executor(&address, &id, 2).await else {
            continue; // refused (e.g. the id is still connected): fine
        };
        // Mostly lies about this stream's own assignments, which it may report on: the
        // first (if any job waits) is waited for.
        let mut mine: Vec<String> = Vec::new();
        if let Ok(Ok(Some(first))) =
            tokio::time::timeout(Duration::from_millis(100), inbound.message()).await
            && let Some(orchestrator_message::Message::Assign(assign)) = first.message
        {
            mine.push(assign.execution_id.clone());
            assigned.push(assign.execution_id);
        }
        for _ in 0..60 {
            while let Some(Some(Ok(Some(message)))) =
                futures::FutureExt::now_or_never(inbound.message()).map(Some)
            {
                if let Some(orchestrator_message::Message::Assign(assign)) = message.message {
                    mine.push(assign.execution_id.clone());
                    assigned.push(assign.execution_id);
                }
            }
            let ids = if chaos.below(4) == 0 || mine.is_empty() {
                &assigned
            } else {
                &mine
            };
            let lie = chaos.message(ids);
            if uplink.send(lie).await.is_err() {
                break;
            }
        }
        drop(uplink);
        // The orchestrator may end the stream; either way it answers.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(Some(_)) = inbound.message().await {}
        })
        .await;
    }

    let health = crate::common::shoal(&address, &["node", "list"]).await;
    assert_eq!(health.code, 0, "{health:?}");
    // Every job is still shown, and one the lies completed has a result the store holds
    // whole: nothing points at blocks it lacks.
    let mut completed = 0;
    for job in &jobs {
        let shown = crate::common::shoal(&address, &["job", "describe", job, "--output", "json"])
            .await
            .success()
            .json();
        if crate::common::state(&shown) != "JOB_STATE_COMPLETED" {
            continue;
        }
        completed += 1;
        let cid = shown["result"]["resultCid"].as_str().unwrap_or_default();
        assert!(!cid.is_empty(), "completed without a result: {shown}");
        let results = scratch.path().join("results").join(job);
        crate::common::shoal(&address, &["job", "get", job, &results.to_string_lossy()])
            .await
            .success();
        crate::common::shoal(
            &address,
            &[
                "data",
                "get",
                cid,
                &results.join("by-cid").to_string_lossy(),
            ],
        )
        .await
        .success();
    }
    // The lies include earnest completions: some jobs must have been completed by them,
    // or the check above checked nothing.
    assert!(
        completed > 0,
        "no job was completed by the generated executors"
    );
    let executor = scratch.path().join("executor");
    let _real =
        crate::common::start_executor(&address, &executor, "real", &["--label", "fuzz=real"]);
    let hello = crate::common::path("examples/hello/hello.wasm");
    let out = crate::common::shoal(
        &address,
        &["wasm", "run", "-s", "fuzz=real", &hello, "still"],
    )
    .await
    .success();
    assert!(out.stdout.contains("arg[1]=still"), "{out:?}");
    let panicked: Vec<String> = logs
        .lock()
        .expect("lock")
        .iter()
        .filter(|line| line.contains("panicked"))
        .cloned()
        .collect();
    assert!(panicked.is_empty(), "{panicked:?}");
}

/// Generated hostile client requests: 1,500 calls across the job, storage and node
/// services with lies in every field (durations with 2e9 nanos or i64::MAX seconds, memory
/// at u64::MAX, 70 KB and 1 MB strings, NUL and newline in ids, states out of range, paths
/// climbing out). Every answer is a precise status — never INTERNAL or UNKNOWN, never a
/// message over 1 KiB echoing the input — and afterwards the orchestrator is healthy, a job
/// acknowledged before is intact, and every stored job can still be listed and shown.
#[tokio::test(flavor = "multi_thread")]
async fn generated_hostile_requests_get_precise_answers() {
    use shoal::proto::job_service_client::JobServiceClient;
    use shoal::proto::node_service_client::NodeServiceClient;
    use shoal::proto::storage_service_client::StorageServiceClient;
    use shoal::proto::*;

    let scratch = tempfile::tempdir().expect("tempdir");
    let orchestrator =
        crate::common::start_orchestrator_logged(&scratch.path().join("data"), 0, &[], &[]).await;
    let address = orchestrator.address.clone();
    let logs = orchestrator.lines.clone();
    let program = crate::common::wat(scratch.path(), "trap");
    let before = submit(&address, &[&program]).await;
    let program_cid =
        crate::common::shoal(&address, &["job", "describe", &before, "--output", "json"])
            .await
            .success()
            .json()["spec"]["program"]
            .as_str()
            .expect("program")
            .to_owned();
    let channel = crate::common::connect(&address).await;
    let mut jobs = JobServiceClient::new(channel.clone()).max_decoding_message_size(16 << 20);
    let mut storage = StorageServiceClient::new(channel.clone());
    let mut nodes = NodeServiceClient::new(channel);
    let mut chaos = Chaos {
        state: 0xfee1_dead_beef,
        results: Vec::new(),
    };
    let real = [program_cid.clone(), before.clone()];
    let check = |what: &str, status: Option<tonic::Status>| {
        let Some(status) = status else { return };
        assert!(
            !matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown),
            "{what}: {status:?}"
        );
        assert!(
            status.message().len() <= 1100,
            "{what}: a {}-byte message",
            status.message().len()
        );
    };
    for round in 0..1500u32 {
        let duration = |chaos: &mut Chaos| {
            (chaos.below(3) > 0).then(|| prost_types::Duration {
                seconds: match chaos.below(4) {
                    0 => i64::MAX,
                    1 => -(chaos.below(10) as i64),
                    _ => chaos.below(100_000) as i64,
                },
                nanos: match chaos.below(3) {
                    0 => 2_000_000_000,
                    1 => -5,
                    _ => chaos.below(1_000_000_000) as i32,
                },
            })
        };
        let text = |chaos: &mut Chaos| {
            if chaos.below(20) == 0 {
                "y".repeat(1 << 20)
            } else {
                chaos.text(&real)
            }
        };
        match round % 8 {
            0 | 1 => {
                // A sound spec with one or two fields turned into lies, so that lies in
                // any one field reach the checks behind the others.
                let mut spec = JobSpec {
                    program: program_cid.clone(),
                    ..Default::default()
                };
                for _ in 0..=chaos.below(2) {
                    match chaos.below(12) {
                        0 => spec.name = text(&mut chaos),
                        1 => spec.program = text(&mut chaos),
                        2 => spec.entrypoint = text(&mut chaos),
                        3 => spec.args = (0..chaos.below(4)).map(|_| text(&mut chaos)).collect(),
                        4 => {
                            spec.env = (0..chaos.below(3))
                                .map(|_| (text(&mut chaos), text(&mut chaos)))
                                .collect()
                        }
                        5 => {
                            let targets = ["/inputs/a", "/outputs/x", "/../etc", "rel", "/outputs"];
                            spec.inputs = (0..=chaos.below(2))
                                .map(|_| InputSpec {
                                    source: program_cid.clone(),
                                    target: targets[chaos.below(5) as usize].into(),
                                    ..Default::default()
                                })
                                .collect()
                        }
                        6 => {
                            spec.resources = Some(Resources {
                                memory_bytes: chaos.number(),
                            })
                        }
                        7 => spec.timeout = duration(&mut chaos),
                        8 => spec.queue_timeout = duration(&mut chaos),
                        9 => spec.constraints = vec![text(&mut chaos)],
                        10 => {
                            spec.retry = Some(RetryPolicy {
                                max_attempts: chaos.number() as u32,
                                retry_on: (0..chaos.below(3))
                                    .map(|_| chaos.next() as i32)
                                    .collect(),
                            })
                        }
                        _ => spec.labels = [(text(&mut chaos), text(&mut chaos))].into(),
                    }
                }
                let request = SubmitJobRequest {
                    spec: (chaos.below(10) > 0).then_some(spec),
                    idempotency_key: text(&mut chaos),
                    stored_cids: if chaos.below(4) == 0 {
                        vec![text(&mut chaos)]
                    } else {
                        Vec::new()
                    },
                };
                check("SubmitJob", jobs.submit_job(request).await.err());
            }
            2 => {
                let request = CancelJobRequest {
                    job_id: if chaos.below(2) == 0 {
                        before.clone()
                    } else {
                        text(&mut chaos)
                    },
                    reason: text(&mut chaos),
                };
                check("CancelJob", jobs.cancel_job(request).await.err());
            }
            3 => {
                let request = ListJobsRequest {
                    states: (0..chaos.below(3)).map(|_| chaos.next() as i32).collect(),
                    labels: (0..chaos.below(2))
                        .map(|_| (text(&mut chaos), text(&mut chaos)))
                        .collect(),
                    page_size: chaos.number() as u32,
                    page_token: text(&mut chaos),
                };
                check("ListJobs", jobs.list_jobs(request).await.err());
            }
            4 => {
                let job_id = text(&mut chaos);
                check(
                    "GetJob",
                    jobs.get_job(GetJobRequest {
                        job_id: job_id.clone(),
                    })
                    .await
                    .err(),
                );
                let logs = GetLogsRequest {
                    job_id,
                    execution_id: text(&mut chaos),
                };
                check("GetLogs", jobs.get_logs(logs).await.err());
            }
            5 => {
                let cid = if chaos.below(2) == 0 {
                    program_cid.clone()
                } else {
                    text(&mut chaos)
                };
                let request = DownloadRequest {
                    cid,
                    path: text(&mut chaos),
                    offset: chaos.number(),
                };
                check("Download", storage.download(request).await.err());
                check(
                    "Stat",
                    storage
                        .stat(StatRequest {
                            cid: text(&mut chaos),
                            path: text(&mut chaos),
                        })
                        .await
                        .err(),
                );
            }
            6 => {
                // Only URLs refused before any connection: no traffic leaves the machine.
                let url = [
                    "http://127.0.0.1:1/x",
                    "http://169.254.169.254/",
                    "ftp://x",
                    "http://[::1]:2/",
                ][chaos.below(4) as usize]
                    .to_owned();
                let url = if chaos.below(3) == 0 {
                    text(&mut chaos)
                } else {
                    url
                };
                check(
                    "CopyFromUrl",
                    storage
                        .copy_from_url(CopyFromUrlRequest { url })
                        .await
                        .err(),
                );
            }
            _ => {
                let id = text(&mut chaos);
                check(
                    "GetNode",
                    nodes
                        .get_node(GetNodeRequest {
                            node_id: id.clone(),
                        })
                        .await
                        .err(),
                );
                check(
                    "Cordon",
                    nodes.cordon(CordonRequest { node_id: id }).await.err(),
                );
            }
        }
    }
    let health = crate::common::shoal(&address, &["node", "list"]).await;
    assert_eq!(health.code, 0, "{health:?}");
    let described =
        crate::common::shoal(&address, &["job", "describe", &before, "--output", "json"])
            .await
            .success();
    assert!(described.stdout.contains(&program_cid));
    // Every stored job can still be shown (a stored 2e9-nanos duration could not be).
    let listed = crate::common::shoal(
        &address,
        &["job", "list", "--limit", "1000", "--output", "json"],
    )
    .await
    .success();
    assert!(listed.stdout.contains(&before));
    let panicked: Vec<String> = logs
        .lock()
        .expect("lock")
        .iter()
        .filter(|line| line.contains("panicked"))
        .cloned()
        .collect();
    assert!(panicked.is_empty(), "{panicked:?}");
}
