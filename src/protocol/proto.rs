//! Generated protobuf and gRPC code for the `shoal.v1` API (see `proto/shoal/v1/`), plus
//! small conveniences on the generated types.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("shoal.v1");

    /// Encoded file descriptor set of the API, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("shoal_descriptor");
}

pub use v1::*;

impl JobState {
    /// Whether no further transition can happen.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled | JobState::TimedOut
        )
    }

    /// The state's name without the enum prefix, e.g. `RUNNING`.
    pub fn short_name(self) -> &'static str {
        self.as_str_name().trim_start_matches("JOB_STATE_")
    }
}

impl ExecutionState {
    /// Whether no further transition can happen.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ExecutionState::Completed
                | ExecutionState::Failed
                | ExecutionState::Cancelled
                | ExecutionState::TimedOut
        )
    }

    /// The job state that mirrors this execution state.
    pub fn job_state(self) -> JobState {
        match self {
            ExecutionState::Unspecified => JobState::Unspecified,
            ExecutionState::Scheduled => JobState::Scheduled,
            ExecutionState::Staging => JobState::Staging,
            ExecutionState::Running => JobState::Running,
            ExecutionState::Publishing => JobState::Publishing,
            ExecutionState::Completed => JobState::Completed,
            ExecutionState::Failed => JobState::Failed,
            ExecutionState::Cancelled => JobState::Cancelled,
            ExecutionState::TimedOut => JobState::TimedOut,
        }
    }

    /// The state's name without the enum prefix, e.g. `RUNNING`.
    pub fn short_name(self) -> &'static str {
        self.as_str_name().trim_start_matches("EXECUTION_STATE_")
    }
}

impl FailureKind {
    /// The kind's name without the enum prefix, e.g. `LINK_ERROR`.
    pub fn short_name(self) -> &'static str {
        self.as_str_name().trim_start_matches("FAILURE_KIND_")
    }

    /// The terminal execution state a failure of this kind leads to.
    pub fn execution_state(self) -> ExecutionState {
        match self {
            FailureKind::Timeout | FailureKind::QueueTimeout => ExecutionState::TimedOut,
            FailureKind::Cancelled => ExecutionState::Cancelled,
            _ => ExecutionState::Failed,
        }
    }
}

impl NodeState {
    /// The state's name without the enum prefix, e.g. `CONNECTED`.
    pub fn short_name(self) -> &'static str {
        self.as_str_name().trim_start_matches("NODE_STATE_")
    }
}

impl Failure {
    /// A failure of `kind` with a message; `retryable` is decided later by the retry policy.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind: kind as i32,
            message: message.into(),
            retryable: false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind().short_name(), self.message)
    }
}

impl AssignBatch {
    /// Most executions one batch carries: with a sharded input each carries its entries,
    /// and the message must stay well under the 16 MiB both sides take.
    pub const MAX_EXECUTIONS: usize = 512;

    /// The assignments this batch stands for, in order: each is the `Assign` that would
    /// have been sent alone, with the spec shared and the execution's own inputs put into
    /// the spec's at `inputs_at`.
    pub fn into_assignments(self) -> Vec<Assign> {
        let AssignBatch {
            job_id,
            spec,
            partition_count,
            inputs_at,
            executions,
        } = self;
        executions
            .into_iter()
            .map(|execution| {
                let spec = spec.clone().map(|mut spec| {
                    if !execution.inputs.is_empty() {
                        let at = (inputs_at as usize).min(spec.inputs.len());
                        spec.inputs.splice(at..at, execution.inputs);
                    }
                    spec
                });
                Assign {
                    execution_id: execution.execution_id,
                    job_id: job_id.clone(),
                    spec,
                    attempt: execution.attempt,
                    trace_context: execution.trace_context,
                    partition: execution.partition,
                    partition_count,
                }
            })
            .collect()
    }
}

/// What a peer named in its handshake (`Register.features`, `Registered.features`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    pub partitions: bool,
    pub assign_batch: bool,
    pub report_batch: bool,
}

impl Features {
    /// The features among the handshake's values; values this build does not know are
    /// ignored (a newer peer's).
    pub fn from_values(values: &[i32]) -> Self {
        let mut features = Features::default();
        for value in values {
            match Feature::try_from(*value) {
                Ok(Feature::Partitions) => features.partitions = true,
                Ok(Feature::AssignBatch) => features.assign_batch = true,
                Ok(Feature::ReportBatch) => features.report_batch = true,
                Ok(Feature::Unspecified) | Err(_) => {}
            }
        }
        features
    }
}

/// Converts a `SystemTime` into a protobuf timestamp.
pub fn timestamp(time: std::time::SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

/// The current time as a protobuf timestamp.
pub fn now() -> prost_types::Timestamp {
    timestamp(std::time::SystemTime::now())
}

impl ExecutorMessage {
    /// The message's type, e.g. `heartbeat` (for logs and metrics).
    pub fn type_name(&self) -> &'static str {
        use executor_message::Message;
        match &self.message {
            Some(Message::Register(_)) => "register",
            Some(Message::Heartbeat(_)) => "heartbeat",
            Some(Message::Update(_)) => "update",
            Some(Message::Log(_)) => "log",
            Some(Message::Finished(_)) => "finished",
            Some(Message::Draining(_)) => "draining",
            Some(Message::Reports(_)) => "reports",
            None => "empty",
        }
    }
}

impl OrchestratorMessage {
    /// The message's type, e.g. `assign` (for logs and metrics).
    pub fn type_name(&self) -> &'static str {
        use orchestrator_message::Message;
        match &self.message {
            Some(Message::Registered(_)) => "registered",
            Some(Message::Assign(_)) => "assign",
            Some(Message::Cancel(_)) => "cancel",
            Some(Message::Acknowledged(_)) => "acknowledged",
            Some(Message::AssignBatch(_)) => "assign_batch",
            None => "empty",
        }
    }
}
