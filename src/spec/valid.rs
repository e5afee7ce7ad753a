//! A job spec checked once, where it enters a process, and completed with the defaults:
//! [`ValidSpec`] carries the effective protobuf spec (stored, sent to executors, shown to
//! clients) together with its typed values — parsed sources, the selector, durations,
//! sizes, the publisher, the retry policy — so nothing downstream parses a field again or
//! invents a fallback for one.
//!
//! The orchestrator makes one from each submission ([`ValidSpec::accept`]) and from each
//! stored job it restores; the executor makes one from each assignment
//! ([`ValidSpec::effective`]), as what arrives over a network is checked where it lands.

use std::time::Duration;

use crate::Error;
use crate::proto::{FailureKind, InputSpec, JobSpec};
use crate::spec::selector::Selector;
use crate::spec::source::{S3Location, Source};
use crate::spec::{SpecDefaults, apply_defaults, validate};

/// Where an execution's results go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publisher {
    /// The orchestrator's content store (a result CID).
    Store,
    /// An S3 prefix (`s3://bucket/prefix`); each execution gets its own key prefix below it.
    S3(S3Location),
}

/// The input a job fans out over: listed at submit, then split across partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInput {
    /// Its index in the spec's inputs.
    pub index: usize,
    pub origin: ShardOrigin,
}

/// What a sharded input's entries are listed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardOrigin {
    /// The entries of a CID directory, or the objects of an S3 prefix or glob.
    Source(Source),
    /// One entry per source (`sources`).
    List(Vec<Source>),
}

/// What the scheduler and the retry rule need of a job, typed: small enough to keep for
/// every job in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobRules {
    /// The executors' labels must satisfy this.
    pub constraints: Selector,
    /// Guest memory the job needs, in bytes.
    pub memory_bytes: u64,
    /// How long the job may wait for an executor.
    pub queue_timeout: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The failure kinds that are retried.
    pub retry_on: Vec<FailureKind>,
    /// Partitions the job fans out to (0: one plain execution).
    pub partitions: u32,
    /// Most partitions running at once (0: no cap of the job's own).
    pub max_parallel: u32,
    /// A partition failing for good lets the others run to their end.
    pub allow_partial: bool,
}

impl JobRules {
    /// Whether a failure of `kind` on attempt `attempts` gets another attempt.
    pub fn retries(&self, kind: FailureKind, attempts: u32) -> bool {
        self.retry_on.contains(&kind) && attempts < self.max_attempts
    }
}

/// A checked, completed job spec and its typed values.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSpec {
    spec: JobSpec,
    program: Source,
    /// The inputs that are not sharded, by index in `spec.inputs`.
    inputs: Vec<(usize, Source)>,
    shard: Option<ShardInput>,
    timeout: Duration,
    publisher: Publisher,
    rules: JobRules,
}

impl ValidSpec {
    /// A submitted spec: checked field by field (the error names the field), then completed
    /// with `defaults` and the built-in ones.
    pub fn accept(mut spec: JobSpec, defaults: SpecDefaults) -> Result<Self, Error> {
        validate(&spec)?;
        apply_defaults(&mut spec, defaults);
        Self::typed(spec)
    }

    /// A spec that was completed already (an assignment, a stored job): checked again where
    /// it arrives, and refused if a defaulted field is missing.
    pub fn effective(spec: JobSpec) -> Result<Self, Error> {
        validate(&spec)?;
        Self::typed(spec)
    }

    /// The typed values of a completed spec that passed [`validate`].
    fn typed(spec: JobSpec) -> Result<Self, Error> {
        let missing = |field: &str| Error::invalid_spec(field, "is missing from a completed spec");
        let program = spec.program.parse::<Source>().map_err(|e| {
            Error::invalid_spec("program", format!("must be a content id or a URL: {e}"))
        })?;
        let parse = |field: String, text: &str| {
            text.parse::<Source>()
                .map_err(|e| Error::invalid_spec(field, e.to_string()))
        };
        let mut inputs = Vec::with_capacity(spec.inputs.len());
        let mut shard = None;
        for (i, input) in spec.inputs.iter().enumerate() {
            if !input.shard {
                inputs.push((i, parse(format!("inputs[{i}].source"), &input.source)?));
                continue;
            }
            let origin = if input.sources.is_empty() {
                ShardOrigin::Source(parse(format!("inputs[{i}].source"), &input.source)?)
            } else {
                ShardOrigin::List(
                    input
                        .sources
                        .iter()
                        .enumerate()
                        .map(|(j, text)| parse(format!("inputs[{i}].sources[{j}]"), text))
                        .collect::<Result<_, _>>()?,
                )
            };
            shard = Some(ShardInput { index: i, origin });
        }
        let duration = |field: &str, d: Option<prost_types::Duration>| {
            let d = d.ok_or_else(|| missing(field))?;
            Duration::try_from(d).map_err(|_| Error::invalid_spec(field, "must not be negative"))
        };
        let timeout = duration("timeout", spec.timeout)?;
        let queue_timeout = duration("queue_timeout", spec.queue_timeout)?;
        let memory_bytes = spec
            .resources
            .map(|r| r.memory_bytes)
            .filter(|m| *m > 0)
            .ok_or_else(|| missing("resources.memory_bytes"))?;
        let retry = spec.retry.clone().ok_or_else(|| missing("retry"))?;
        if retry.max_attempts == 0 {
            return Err(missing("retry.max_attempts"));
        }
        let retry_on = retry.retry_on().collect();
        let publisher = match spec.publisher.as_str() {
            "default" => Publisher::Store,
            "" => return Err(missing("publisher")),
            other => Publisher::S3(
                S3Location::parse(other).map_err(|m| Error::invalid_spec("publisher", m))?,
            ),
        };
        if spec.entrypoint.is_empty() {
            return Err(missing("entrypoint"));
        }
        let constraints = Selector::parse(&spec.constraints, "constraints")?;
        Ok(ValidSpec {
            rules: JobRules {
                constraints,
                memory_bytes,
                queue_timeout,
                max_attempts: retry.max_attempts,
                retry_on,
                partitions: spec.partitions,
                max_parallel: spec.max_parallel,
                allow_partial: spec.allow_partial,
            },
            program,
            inputs,
            shard,
            timeout,
            publisher,
            spec,
        })
    }

    /// The effective spec, as stored and sent.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// The effective spec, as stored and sent.
    pub fn into_spec(self) -> JobSpec {
        self.spec
    }

    /// Where the program comes from.
    pub fn program(&self) -> &Source {
        &self.program
    }

    /// Every input that is not sharded, with its index in the spec, and where it comes
    /// from.
    pub fn inputs(&self) -> impl Iterator<Item = (usize, &InputSpec, &Source)> {
        self.inputs
            .iter()
            .map(|(i, source)| (*i, &self.spec.inputs[*i], source))
    }

    /// The sharded input, if the job fans out over one.
    pub fn shard(&self) -> Option<&ShardInput> {
        self.shard.as_ref()
    }

    /// The spec with the partition count derived from a sharded input's listing (which the
    /// client left at 0).
    pub fn with_partitions(mut self, partitions: u32) -> Result<Self, Error> {
        self.spec.partitions = partitions;
        validate(&self.spec)?;
        self.rules.partitions = partitions;
        Ok(self)
    }

    /// The run timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Guest memory the program may use, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.rules.memory_bytes
    }

    /// Where the results go.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// What the scheduler and the retry rule need.
    pub fn rules(&self) -> &JobRules {
        &self.rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4";

    fn defaults() -> SpecDefaults {
        SpecDefaults {
            timeout: Duration::from_secs(60),
            queue_timeout: Duration::from_secs(600),
        }
    }

    /// A submission is completed with the defaults and typed; the completed spec is accepted
    /// as it is where it arrives next, and gives the same values.
    #[test]
    fn an_accepted_spec_is_typed_and_round_trips() {
        let spec = JobSpec {
            program: CID.into(),
            constraints: vec!["zone=a".into()],
            publisher: "s3://bucket/results/".into(),
            ..Default::default()
        };
        let valid = ValidSpec::accept(spec, defaults()).expect("valid");
        assert_eq!(valid.timeout(), Duration::from_secs(60));
        assert_eq!(valid.rules().queue_timeout, Duration::from_secs(600));
        assert_eq!(valid.memory_bytes(), crate::spec::DEFAULT_MEMORY_BYTES);
        assert!(matches!(valid.program(), Source::Cid(_)));
        assert!(matches!(valid.publisher(), Publisher::S3(l) if l.bucket == "bucket"));
        assert!(valid.rules().retries(FailureKind::ExecutorLost, 1));
        assert!(!valid.rules().retries(FailureKind::Trap, 1));
        let again = ValidSpec::effective(valid.spec().clone()).expect("completed spec");
        assert_eq!(again, valid);
    }

    /// A spec that skipped the defaults is refused where a completed one is expected, with
    /// the field named, instead of being run with a fallback made up on the spot.
    #[test]
    fn an_incomplete_spec_is_refused_with_the_field() {
        let spec = JobSpec {
            program: CID.into(),
            ..Default::default()
        };
        let error = ValidSpec::effective(spec.clone()).expect_err("not completed");
        assert!(error.to_string().contains("timeout"), "{error}");
        let mut completed = ValidSpec::accept(spec, defaults())
            .expect("valid")
            .into_spec();
        completed.publisher.clear();
        let error = ValidSpec::effective(completed).expect_err("no publisher");
        assert!(error.to_string().contains("publisher"), "{error}");
    }
}
