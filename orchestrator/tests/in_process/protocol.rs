//! The executor protocol spoken by hand-driven executors, as a lying or broken one would:
//! a result tree sent with a completion (`ExecutionFinished.result_blocks`) is stored and
//! served when it is sound, and fails the job with the reason when it is not, never leaving
//! a result that points at blocks the store lacks; an executor that heartbeats but never
//! acts loses its assignments; hostile registrations are refused; batched assignments and
//! reports go to and come from the executors that name them.

use std::time::Duration;

use bytes::Bytes;
use shoal::proto::{
    ContentBlock, DownloadRequest, ExecutionFinished, ExecutionResult, ExecutionState,
    ExecutorMessage, FailureKind, JobState, ListNodesRequest, executor_message,
    orchestrator_message,
};
use tokio_stream::StreamExt as _;

use crate::harness::{
    InProcess, TIMEOUT, in_memory_executor, in_memory_registered, message, network_executor,
    register_with,
};

/// The blocks of a result tree with `stdout`, an empty `stderr` and `exitCode` 0.
fn result_tree(stdout: &str) -> Vec<ContentBlock> {
    let file = |name: &str, data: &str| (name.to_owned(), Some(Bytes::from(data.to_owned())));
    let (blocks, _) = shoal::content::unixfs::directory_tree(vec![
        file("exitCode", "0"),
        file("stderr", ""),
        file("stdout", stdout),
    ]);
    blocks.into_iter().map(ContentBlock::from).collect()
}

/// The root of a tree from [`result_tree`]: its last block.
fn root_of(blocks: &[ContentBlock]) -> String {
    blocks.last().map(|b| b.cid.clone()).unwrap_or_default()
}

/// A completion claiming `root` as the result, with `blocks` sent along.
fn completed(execution_id: String, (root, blocks): (String, Vec<ContentBlock>)) -> ExecutorMessage {
    message(executor_message::Message::Finished(ExecutionFinished {
        execution_id,
        state: ExecutionState::Completed as i32,
        result: Some(ExecutionResult {
            result_cid: root,
            ..Default::default()
        }),
        failure: None,
        result_blocks: blocks,
    }))
}

#[tokio::test(flavor = "multi_thread")]
async fn result_trees_sent_with_completions_are_checked_and_stored() {
    let mut orchestrator = InProcess::start(|_| {}).await;
    let program = orchestrator.program().await;
    // A hand-driven executor with one slot, over the network as a real one.
    let executor = network_executor(&orchestrator.address, "by-hand", 1)
        .await
        .expect("registered");
    // Answers each assignment with the next (root, blocks) queued; ends with the stream.
    let (answers, mut answer_rx) = tokio::sync::mpsc::channel::<(String, Vec<ContentBlock>)>(4);
    let (uplink, mut inbound) = (executor.uplink, executor.inbound);
    let responder = tokio::spawn(async move {
        while let Ok(Some(message)) = inbound.message().await {
            if let Some(orchestrator_message::Message::Assign(assign)) = message.message {
                let Some(answer) = answer_rx.recv().await else {
                    return;
                };
                let _ = uplink.send(completed(assign.execution_id, answer)).await;
            }
        }
    });

    // A sound tree: the job completes and its stdout is served from the stored blocks.
    let sound = result_tree("sent inline\n");
    let sound_root = root_of(&sound);
    answers
        .send((sound_root.clone(), sound))
        .await
        .expect("answer");
    let job = orchestrator.submit(&program).await;
    let done = orchestrator.wait_terminal(&job).await;
    assert_eq!(done.state(), JobState::Completed, "{done:?}");
    let result = done.result.expect("a result");
    assert_eq!(result.result_cid, sound_root);
    let download = DownloadRequest {
        cid: result.result_cid,
        path: "stdout".into(),
        offset: 0,
    };
    let stream = orchestrator
        .storage
        .download(download)
        .await
        .expect("download")
        .into_inner();
    let stdout = shoal::content::transfer::download_bytes(stream, 1 << 20)
        .await
        .expect("stdout");
    assert_eq!(stdout, b"sent inline\n");

    // Bad trees, each on its own job (failures of kind PUBLISH are not retried by default).
    let mut tampered = result_tree("honest\n");
    let leaf = tampered
        .iter_mut()
        .find(|b| b.data == "honest\n")
        .expect("leaf");
    leaf.data = Bytes::from_static(b"forged\n");
    let tampered = (root_of(&tampered), tampered);
    let mut missing_child = result_tree("lost\n");
    missing_child.retain(|b| b.data != "lost\n");
    let missing_child = (root_of(&missing_child), missing_child);
    let mut root_first = result_tree("order\n");
    let root = root_of(&root_first);
    root_first.rotate_right(1);
    let root_first = (root, root_first);
    let oversized = result_tree(&"x".repeat(shoal::content::transfer::MAX_INLINE_RESULT_BYTES + 1));
    let oversized = (root_of(&oversized), oversized);
    // A completion naming a result that was never uploaded, or no CID at all.
    let unstored = (root_of(&result_tree("never uploaded\n")), Vec::new());
    let not_a_cid = ("bafy\0not-a-cid".to_owned(), Vec::new());
    // A result is a directory: neither a file the store holds (the program) nor a lone
    // file sent along will do.
    let stored_file = (program.clone(), Vec::new());
    let lone = ContentBlock {
        cid: shoal::content::cid::ContentId::of_block(shoal::content::cid::RAW, b"0").to_string(),
        data: Bytes::from_static(b"0"),
    };
    let lone_file = (lone.cid.clone(), vec![lone]);
    for (answer, reason) in [
        (unstored, "is not in the store"),
        (not_a_cid, "is not a CID"),
        (stored_file, "is not a directory"),
        (lone_file, "is a file, not a directory"),
        (tampered, "does not match its bytes"),
        (missing_child, "neither sent nor stored"),
        (root_first, "the last block is not the root"),
        (oversized, "may come with a completion"),
    ] {
        answers.send(answer).await.expect("answer");
        let job = orchestrator.submit(&program).await;
        let done = orchestrator.wait_terminal(&job).await;
        assert_eq!(done.state(), JobState::Failed, "{reason}: {done:?}");
        let failure = done.failure.expect("a failure");
        assert_eq!(failure.kind(), FailureKind::Publish, "{failure:?}");
        assert!(
            failure.message.contains(reason),
            "{reason:?} not in {:?}",
            failure.message
        );
        // Nothing points at blocks the store lacks: a failed job has no result CID.
        assert!(
            done.result.as_ref().is_none_or(|r| r.result_cid.is_empty()),
            "{:?}",
            done.result
        );
    }
    responder.abort();
}

/// An executor that heartbeats but never acts on its assignments: each assignment is taken
/// back after the acknowledgement timeout — cancelled on the executor, failed EXECUTOR_LOST
/// and retried — until the retry budget is spent and the job fails EXECUTORS_LOST, saying
/// so. Driven through the executor API's inner function, with no network.
#[tokio::test(flavor = "multi_thread")]
async fn an_executor_that_never_acts_loses_its_assignments() {
    let mut orchestrator = InProcess::start(|config| {
        config.assign_ack_timeout = Duration::from_secs(1);
        config.heartbeat_interval = Duration::from_millis(500);
    })
    .await;
    let program = orchestrator.program().await;
    let executor = in_memory_executor(&orchestrator.executor_api(), "silent", 4)
        .await
        .expect("registered");
    let (uplink, mut inbound) = (executor.uplink, executor.inbound);
    let heartbeats = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        loop {
            tick.tick().await;
            let beat = message(executor_message::Message::Heartbeat(Default::default()));
            if uplink.send(beat).await.is_err() {
                return;
            }
        }
    });
    let job = orchestrator.submit(&program).await;
    let done = orchestrator.wait_terminal(&job).await;
    assert_eq!(done.state(), JobState::Failed, "{done:?}");
    let failure = done.failure.clone().expect("a failure");
    assert_eq!(failure.kind(), FailureKind::ExecutorsLost, "{failure:?}");
    assert_eq!(done.executor_losses, 3, "{done:?}");
    assert_eq!(orchestrator.executions(&job).await.len(), 3);
    // The executor was told to drop each assignment it sat on.
    let (mut assigned, mut cancelled) = (0, 0);
    while cancelled < 3 {
        let next = tokio::time::timeout(TIMEOUT, inbound.next())
            .await
            .expect("a message")
            .expect("the stream is open")
            .expect("a message, not a status");
        match next.message {
            Some(orchestrator_message::Message::Assign(_)) => assigned += 1,
            Some(orchestrator_message::Message::Cancel(_)) => cancelled += 1,
            _ => {}
        }
    }
    assert_eq!(assigned, 3);
    heartbeats.abort();
}

/// Registrations a lying executor might send are refused with INVALID_ARGUMENT and a short
/// message, over the network and through the inner function alike: a capacity past the
/// orchestrator's bound, ids that would forge listings. None of them is listed.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_registrations_are_refused() {
    let mut orchestrator = InProcess::start(|_| {}).await;
    let greedy = network_executor(&orchestrator.address, "greedy", 1_000_000)
        .await
        .err()
        .expect("a million slots is refused");
    assert_eq!(greedy.code(), tonic::Code::InvalidArgument, "{greedy:?}");
    assert!(greedy.message().contains("at most 256 slots"), "{greedy:?}");
    let api = orchestrator.executor_api();
    let long = "x".repeat(100_000);
    for id in ["a\nEXECUTOR CONNECTED", "a\0b", "../etc", long.as_str()] {
        let over_network = network_executor(&orchestrator.address, id, 1).await.err();
        let in_memory = in_memory_executor(&api, id, 1).await.err();
        for refused in [over_network, in_memory] {
            let refused = refused.unwrap_or_else(|| panic!("{id:?} is refused"));
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
            assert!(refused.message().len() < 400, "{}", refused.message().len());
        }
    }
    let nodes = orchestrator
        .nodes
        .list_nodes(ListNodesRequest {})
        .await
        .expect("list")
        .into_inner()
        .nodes;
    assert!(nodes.is_empty(), "{nodes:?}");
}

/// An executor that names FEATURE_ASSIGN_BATCH gets a partitioned job's partitions as one
/// `AssignBatch`, and reports them all in one `ReportBatch` (the orchestrator names
/// FEATURE_REPORT_BATCH): the reports are applied as if sent one by one, acknowledged through
/// the last, and the job completes. A `ReportBatch` holding anything but reports ends the
/// stream.
#[tokio::test(flavor = "multi_thread")]
async fn partitions_go_in_batches_and_come_back_in_one() {
    use shoal::proto::{Feature, JobSpec, ReportBatch, SubmitJobRequest};
    let mut orchestrator = InProcess::start(|_| {}).await;
    let program = orchestrator.program().await;
    let api = orchestrator.executor_api();
    let features = [Feature::Partitions, Feature::AssignBatch];
    let (executor, registered) = in_memory_registered(&api, register_with("batcher", 4, &features))
        .await
        .expect("registered");
    assert!(
        shoal::proto::Features::from_values(&registered.features).report_batch,
        "{registered:?}"
    );
    let (uplink, mut inbound) = (executor.uplink, executor.inbound);
    let spec = JobSpec {
        program: program.clone(),
        partitions: 4,
        // Four of them in the executor's 1 GiB.
        resources: Some(shoal::proto::Resources {
            memory_bytes: 64 << 20,
        }),
        ..Default::default()
    };
    let request = SubmitJobRequest {
        spec: Some(spec),
        ..Default::default()
    };
    let submitted = orchestrator.jobs.submit_job(request).await.expect("submit");
    let job = submitted.into_inner().job.expect("a job").id;
    let next = async |inbound: &mut shoal_orchestrator::service::executors::ConnectStream| {
        tokio::time::timeout(TIMEOUT, inbound.next())
            .await
            .expect("a message in time")
            .expect("the stream is open")
            .expect("a message")
    };
    let batch = loop {
        match next(&mut inbound).await.message {
            Some(orchestrator_message::Message::AssignBatch(batch)) => break batch,
            Some(orchestrator_message::Message::Assign(a)) => panic!("sent alone: {a:?}"),
            _ => continue,
        }
    };
    assert_eq!(
        (batch.job_id.as_str(), batch.partition_count),
        (job.as_str(), 4)
    );
    assert_eq!(
        batch.spec.as_ref().map(|s| s.program.as_str()),
        Some(program.as_str())
    );
    let assignments = batch.into_assignments();
    let mut partitions: Vec<u32> = assignments.iter().map(|a| a.partition).collect();
    partitions.sort();
    assert_eq!(partitions, [0, 1, 2, 3]);
    let tree = result_tree("part\n");
    let root = root_of(&tree);
    let mut reports = Vec::new();
    for assign in &assignments {
        let state = executor_message::Message::Update(shoal::proto::ExecutionUpdate {
            execution_id: assign.execution_id.clone(),
            state: ExecutionState::Running as i32,
        });
        reports.push(message(state));
        reports.push(completed(
            assign.execution_id.clone(),
            (root.clone(), tree.clone()),
        ));
    }
    for (sequence, report) in reports.iter_mut().enumerate() {
        report.sequence = sequence as u64 + 1;
    }
    let last = reports.len() as u64;
    uplink
        .send(message(executor_message::Message::Reports(ReportBatch {
            reports,
        })))
        .await
        .expect("send");
    loop {
        if let Some(orchestrator_message::Message::Acknowledged(ack)) =
            next(&mut inbound).await.message
            && ack.sequence == last
        {
            break;
        }
    }
    let done = orchestrator.wait_terminal(&job).await;
    assert_eq!(done.state(), JobState::Completed, "{done:?}");
    assert_eq!(done.partitions.expect("counts").completed, 4);

    let heartbeat = message(executor_message::Message::Heartbeat(Default::default()));
    uplink
        .send(message(executor_message::Message::Reports(ReportBatch {
            reports: vec![heartbeat],
        })))
        .await
        .expect("send");
    let ended = tokio::time::timeout(TIMEOUT, async {
        while let Some(Ok(_)) = inbound.next().await {}
    });
    ended.await.expect("the stream ends");
}
