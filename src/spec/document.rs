//! The job spec as people write it, in YAML or JSON (`shoal job run spec.yaml`), and its
//! conversions to and from the protobuf [`JobSpec`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{parse_duration, parse_size};
use crate::Error;
use crate::proto::{
    FailureKind, InputSpec, JobSpec, OutputSpec, Resources, RetryPolicy, S3Options,
};

/// A job spec as users write it in YAML or JSON (`shoal job run spec.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpecDocument {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// A local path (uploaded by the CLI), or a CID.
    pub program: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub entrypoint: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputDocument>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputDocument>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesDocument>,
    /// Run timeout, e.g. `10m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Queue timeout, e.g. `1h`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryDocument>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub publisher: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub program_name: String,
    /// How to reach S3 for an `s3://` publisher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher_s3: Option<S3Document>,
    /// Fan-out: how many partitions to run (0 or absent: one plain execution).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub partitions: u32,
    /// Most partitions running at once.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_parallel: u32,
    /// `allow`: a partition failing for good lets the others run to their end; `fail` (the
    /// default) cancels them.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub partial: String,
    /// With a sharded input: entries per partition (absent: 1).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shard_size: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One input of a [`SpecDocument`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputDocument {
    /// A local path (uploaded by the CLI), a CID, an HTTP(S) URL or an s3:// source.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    pub target: String,
    /// How to reach S3 for an s3:// source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Document>,
    /// Fan-out over this input's entries: one partition per `shard_size` of them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shard: bool,
    /// Instead of `source`, for a sharded input: one entry per source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
}

impl From<&S3Document> for S3Options {
    fn from(s3: &S3Document) -> Self {
        S3Options {
            endpoint: s3.endpoint.clone(),
            region: s3.region.clone(),
            force_path_style: s3.force_path_style,
            version_id: s3.version_id.clone(),
        }
    }
}

impl From<&S3Options> for S3Document {
    fn from(s3: &S3Options) -> Self {
        S3Document {
            endpoint: s3.endpoint.clone(),
            region: s3.region.clone(),
            force_path_style: s3.force_path_style,
            version_id: s3.version_id.clone(),
        }
    }
}

/// S3 settings of an input or of the publisher.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Document {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub region: String,
    #[serde(skip_serializing_if = "std::ops::Not::not", alias = "path_style")]
    pub force_path_style: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version_id: String,
}

/// One output of a [`SpecDocument`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputDocument {
    pub name: String,
    pub path: String,
}

/// Resources of a [`SpecDocument`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesDocument {
    /// Memory limit, e.g. `512MiB`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// Retry policy of a [`SpecDocument`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryDocument {
    pub max_attempts: u32,
    /// Failure kinds to retry, e.g. `[executor_lost, trap]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retry_on: Vec<String>,
}

impl SpecDocument {
    /// Parses YAML (a superset of JSON).
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        serde_yaml_ng::from_str(text).map_err(|e| Error::SpecSyntax(e.to_string()))
    }

    /// Converts to the protobuf spec. Sizes, durations and failure kinds are parsed here;
    /// everything else is checked when the orchestrator accepts the spec
    /// ([`ValidSpec::accept`](crate::spec::ValidSpec::accept)).
    pub fn to_proto(&self) -> Result<JobSpec, Error> {
        let duration = |field: &str, text: &Option<String>| -> Result<_, Error> {
            text.as_deref()
                .map(|t| {
                    let d = parse_duration(t).map_err(|m| Error::invalid_spec(field, m))?;
                    prost_types::Duration::try_from(d)
                        .map_err(|e| Error::invalid_spec(field, e.to_string()))
                })
                .transpose()
        };
        let memory_bytes = match self.resources.as_ref().and_then(|r| r.memory.as_deref()) {
            Some(text) => {
                parse_size(text).map_err(|m| Error::invalid_spec("resources.memory", m))?
            }
            None => 0,
        };
        let retry = match &self.retry {
            Some(retry) => Some(RetryPolicy {
                max_attempts: retry.max_attempts,
                retry_on: retry
                    .retry_on
                    .iter()
                    .enumerate()
                    .map(|(i, kind)| {
                        parse_failure_kind(kind).map(|k| k as i32).ok_or_else(|| {
                            Error::invalid_spec(
                                format!("retry.retry_on[{i}]"),
                                format!("unknown failure kind {kind:?}"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            }),
            None => None,
        };
        Ok(JobSpec {
            name: self.name.clone(),
            program: self.program.clone(),
            entrypoint: self.entrypoint.clone(),
            args: self.args.clone(),
            env: self.env.clone().into_iter().collect(),
            inputs: self
                .inputs
                .iter()
                .map(|i| InputSpec {
                    source: i.source.clone(),
                    target: i.target.clone(),
                    s3: i.s3.as_ref().map(S3Options::from),
                    shard: i.shard,
                    sources: i.sources.clone(),
                })
                .collect(),
            outputs: self
                .outputs
                .iter()
                .map(|o| OutputSpec {
                    name: o.name.clone(),
                    path: o.path.clone(),
                })
                .collect(),
            resources: (memory_bytes != 0).then_some(Resources { memory_bytes }),
            timeout: duration("timeout", &self.timeout)?,
            queue_timeout: duration("queue_timeout", &self.queue_timeout)?,
            constraints: self.constraints.clone(),
            labels: self.labels.clone().into_iter().collect(),
            retry,
            publisher: self.publisher.clone(),
            program_name: self.program_name.clone(),
            publisher_s3: self.publisher_s3.as_ref().map(S3Options::from),
            partitions: self.partitions,
            max_parallel: self.max_parallel,
            allow_partial: match self.partial.as_str() {
                "" | "fail" => false,
                "allow" => true,
                other => {
                    return Err(Error::invalid_spec(
                        "partial",
                        format!("{other:?} is neither \"allow\" nor \"fail\""),
                    ));
                }
            },
            shard_size: self.shard_size,
        })
    }

    /// The document form of a protobuf spec (for `--dry-run` and `describe`).
    pub fn from_proto(spec: &JobSpec) -> Self {
        let duration = |d: &Option<prost_types::Duration>| {
            d.and_then(|d| Duration::try_from(d).ok())
                .map(crate::spec::units::format_duration)
        };
        SpecDocument {
            name: spec.name.clone(),
            program: spec.program.clone(),
            entrypoint: spec.entrypoint.clone(),
            args: spec.args.clone(),
            env: spec.env.clone().into_iter().collect(),
            inputs: spec
                .inputs
                .iter()
                .map(|i| InputDocument {
                    source: i.source.clone(),
                    target: i.target.clone(),
                    s3: i.s3.as_ref().map(S3Document::from),
                    shard: i.shard,
                    sources: i.sources.clone(),
                })
                .collect(),
            outputs: spec
                .outputs
                .iter()
                .map(|o| OutputDocument {
                    name: o.name.clone(),
                    path: o.path.clone(),
                })
                .collect(),
            resources: spec.resources.map(|r| ResourcesDocument {
                memory: Some(crate::spec::units::format_size(r.memory_bytes)),
            }),
            timeout: duration(&spec.timeout),
            queue_timeout: duration(&spec.queue_timeout),
            constraints: spec.constraints.clone(),
            labels: spec.labels.clone().into_iter().collect(),
            retry: spec.retry.as_ref().map(|r| RetryDocument {
                max_attempts: r.max_attempts,
                retry_on: r
                    .retry_on()
                    .map(|k| k.short_name().to_ascii_lowercase())
                    .collect(),
            }),
            publisher: spec.publisher.clone(),
            program_name: spec.program_name.clone(),
            publisher_s3: spec.publisher_s3.as_ref().map(S3Document::from),
            partitions: spec.partitions,
            max_parallel: spec.max_parallel,
            partial: if spec.allow_partial {
                "allow".into()
            } else {
                String::new()
            },
            shard_size: spec.shard_size,
        }
    }
}

/// Parses a failure kind written as `executor_lost`, `EXECUTOR_LOST` or
/// `FAILURE_KIND_EXECUTOR_LOST`.
pub fn parse_failure_kind(text: &str) -> Option<FailureKind> {
    let upper = text.trim().to_ascii_uppercase().replace('-', "_");
    let name = if upper.starts_with("FAILURE_KIND_") {
        upper
    } else {
        format!("FAILURE_KIND_{upper}")
    };
    FailureKind::from_str_name(&name).filter(|k| *k != FailureKind::Unspecified)
}
