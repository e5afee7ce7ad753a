//! The executor protocol spoken by a hand-driven executor: a result tree sent with a
//! completion (`ExecutionFinished.result_blocks`) is stored and served when it is sound, and
//! fails the job with the reason when it is not, never leaving a result that points at
//! blocks the store lacks.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{free_port, start_orchestrator, submit, wait_terminal};
use shoal::proto::executor_service_client::ExecutorServiceClient;
use shoal::proto::{
    Capacity, ContentBlock, ExecutionFinished, ExecutionResult, ExecutionState, ExecutorMessage,
    Register, executor_message, orchestrator_message,
};
use tokio_stream::wrappers::ReceiverStream;

/// The blocks of a result tree with `stdout`, an empty `stderr` and `exitCode` 0.
fn result_tree(stdout: &str) -> Vec<ContentBlock> {
    let file = |name: &str, data: &str| (name.to_owned(), Some(Bytes::from(data.to_owned())));
    let (blocks, _) = shoal::unixfs::directory_tree(vec![
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
    ExecutorMessage {
        message: Some(executor_message::Message::Finished(ExecutionFinished {
            execution_id,
            state: ExecutionState::Completed as i32,
            result: Some(ExecutionResult {
                result_cid: root,
                ..Default::default()
            }),
            failure: None,
            result_blocks: blocks,
        })),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn result_trees_sent_with_completions_are_checked_and_stored() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let address = format!("http://127.0.0.1:{port}");
    let _orchestrator = start_orchestrator(&scratch.path().join("data"), port).await;

    // A hand-driven executor with one slot.
    let channel = tonic::transport::Endpoint::from_shared(address.clone())
        .expect("address")
        .connect()
        .await
        .expect("connect");
    let (uplink, rx) = tokio::sync::mpsc::channel(16);
    uplink
        .send(ExecutorMessage {
            message: Some(executor_message::Message::Register(Register {
                executor_id: "by-hand".into(),
                protocol_version: 1,
                capacity: Some(Capacity {
                    slots: 1,
                    memory_bytes: 1 << 30,
                }),
                ..Default::default()
            })),
        })
        .await
        .expect("register");
    let mut inbound = ExecutorServiceClient::new(channel)
        .connect(ReceiverStream::new(rx))
        .await
        .expect("connect stream")
        .into_inner();
    let first = inbound.message().await.expect("handshake").expect("answer");
    assert!(matches!(
        first.message,
        Some(orchestrator_message::Message::Registered(_))
    ));
    // Answers each assignment with the next (root, blocks) queued; ends with the stream.
    let (answers, mut answer_rx) = tokio::sync::mpsc::channel::<(String, Vec<ContentBlock>)>(4);
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

    let program = common::wat(scratch.path(), "trap");

    // A sound tree: the job completes and its stdout is served from the stored blocks.
    let sound = result_tree("sent inline\n");
    answers
        .send((root_of(&sound), sound))
        .await
        .expect("answer");
    let job = submit(&address, &[&program]).await;
    let done = wait_terminal(&address, &job).await;
    assert_eq!(common::state(&done), "JOB_STATE_COMPLETED", "{done}");
    let results = scratch.path().join("results");
    common::shoal(&address, &["job", "get", &job, &results.to_string_lossy()])
        .await
        .success();
    assert_eq!(
        std::fs::read_to_string(results.join("stdout")).expect("stdout"),
        "sent inline\n"
    );

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
    let oversized = result_tree(&"x".repeat(shoal::transfer::MAX_INLINE_RESULT_BYTES + 1));
    let oversized = (root_of(&oversized), oversized);
    for (answer, reason) in [
        (tampered, "does not match its bytes"),
        (missing_child, "neither sent nor stored"),
        (root_first, "the last block is not the root"),
        (oversized, "may come with a completion"),
    ] {
        answers.send(answer).await.expect("answer");
        let job = submit(&address, &[&program]).await;
        let done = tokio::time::timeout(Duration::from_secs(60), wait_terminal(&address, &job))
            .await
            .expect("the job ends");
        assert_eq!(common::state(&done), "JOB_STATE_FAILED", "{reason}: {done}");
        assert_eq!(
            common::failure_kind(&done),
            "FAILURE_KIND_PUBLISH",
            "{done}"
        );
        let message = done["failure"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(reason), "{reason:?} not in {message:?}");
    }
    responder.abort();
}
