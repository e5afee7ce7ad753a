//! Helpers for the state machine's tests: a cluster with short timings, executors that
//! connect, and the messages the cluster sends them.

pub use std::time::{Duration, Instant, SystemTime};

pub use shoal::proto::{
    Capacity, ExecutionFinished, ExecutionState, FailureKind, Feature, JobSpec, Register,
    orchestrator_message,
};

pub use super::*;

pub const CID: &str = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4";

pub fn cluster() -> Cluster {
    Cluster::restore(
        Snapshot::default(),
        ClusterConfig {
            heartbeat_interval: Duration::from_secs(1),
            lease: Duration::from_secs(10),
            max_queued: 100,
            ..Default::default()
        },
        Instant::now(),
    )
}

/// `spec` checked and completed, as the service does it before a submission.
pub fn accept(spec: JobSpec) -> shoal::spec::ValidSpec {
    let defaults = shoal::spec::SpecDefaults {
        timeout: Duration::from_secs(60),
        queue_timeout: Duration::from_secs(3600),
    };
    shoal::spec::ValidSpec::accept(spec, defaults).expect("a valid spec")
}

pub fn spec() -> JobSpec {
    JobSpec {
        program: CID.into(),
        ..Default::default()
    }
}

/// Everything the current executor can do.
pub const FEATURES: &[Feature] = &[Feature::Partitions, Feature::AssignBatch];

/// Registers an executor of the current version; returns the generation of its
/// registration.
pub fn connect(c: &mut Cluster, id: &str, slots: u32, labels: &[(&str, &str)]) -> u64 {
    connect_with(c, id, slots, labels, FEATURES)
}

/// Registers an executor that names `features`.
pub fn connect_with(
    c: &mut Cluster,
    id: &str,
    slots: u32,
    labels: &[(&str, &str)],
    features: &[Feature],
) -> u64 {
    let register = Register {
        executor_id: id.into(),
        protocol_version: 1,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        capacity: Some(Capacity {
            slots,
            memory_bytes: 4 << 30,
        }),
        features: features.iter().map(|f| *f as i32).collect(),
        ..Default::default()
    };
    c.register(register, SystemTime::now(), Instant::now())
        .expect("register")
}

/// Job and execution ids of the assignments in the effects, in order.
pub fn assignments(c: &mut Cluster) -> Vec<(String, String)> {
    let effects = c.take_effects();
    assigned(&effects)
        .into_iter()
        .map(|(_, a)| (a.job_id, a.execution_id))
        .collect()
}

/// The assignments among `effects`' messages, in order, with their executor; a batch
/// counts as the assignments it stands for.
pub fn assigned(effects: &Effects) -> Vec<(String, shoal::proto::Assign)> {
    let mut assigned = Vec::new();
    for (recipient, message) in &effects.messages {
        let to = recipient.executor_id.clone();
        match &message.message {
            Some(orchestrator_message::Message::Assign(a)) => assigned.push((to, a.clone())),
            Some(orchestrator_message::Message::AssignBatch(batch)) => assigned.extend(
                batch
                    .clone()
                    .into_assignments()
                    .into_iter()
                    .map(|a| (to.clone(), a)),
            ),
            _ => {}
        }
    }
    assigned
}

pub fn executor_of(c: &Cluster, execution_id: &str) -> String {
    c.execution(execution_id)
        .expect("execution")
        .executor_id
        .clone()
}

pub fn finish(c: &mut Cluster, executor: &str, execution_id: &str, failure: Option<FailureKind>) {
    let finished = match failure {
        None => ExecutionFinished {
            execution_id: execution_id.into(),
            state: ExecutionState::Completed as i32,
            result: Some(ExecutionResult::default()),
            failure: None,
            result_blocks: Vec::new(),
        },
        Some(kind) => ExecutionFinished {
            execution_id: execution_id.into(),
            state: kind.execution_state() as i32,
            result: None,
            failure: Some(Failure::new(kind, "boom")),
            result_blocks: Vec::new(),
        },
    };
    c.execution_finished(executor, finished, SystemTime::now());
}

/// Messages of a kind among the effects, for one executor's stream.
pub fn cancels(c: &mut Cluster) -> Vec<String> {
    c.take_effects()
        .messages
        .iter()
        .filter_map(|(_, m)| match &m.message {
            Some(orchestrator_message::Message::Cancel(cancel)) => {
                Some(cancel.execution_id.clone())
            }
            _ => None,
        })
        .collect()
}

/// A Register for executor `twin` from the process `instance`, with one slot.
pub fn twin(c: &mut Cluster, instance: &str, running: &[String]) -> Result<u64> {
    let register = Register {
        executor_id: "twin".into(),
        protocol_version: 1,
        instance_id: instance.into(),
        capacity: Some(Capacity {
            slots: 1,
            memory_bytes: 4 << 30,
        }),
        running_execution_ids: running.to_vec(),
        ..Default::default()
    };
    c.register(register, SystemTime::now(), Instant::now())
}
