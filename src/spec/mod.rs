//! Job specs: the YAML/JSON document users write, its conversion to the protobuf
//! [`JobSpec`], the defaults, and the validation every entry point applies.
//!
//! Validation errors name the field path (`inputs[1].target`) so a client can point at the
//! exact problem; the orchestrator turns them into INVALID_ARGUMENT.
//!
//! [`ValidSpec`] ([`valid`]) is what the rest of the system works with: a spec checked once
//! where it arrives, completed with the defaults, with its typed values. Beside it: label
//! selectors ([`selector`]), program and input sources ([`source`]), and sizes and
//! durations as people write them ([`units`]).

mod document;
pub mod selector;
pub mod source;
pub mod units;
pub mod valid;

pub use document::{
    InputDocument, OutputDocument, ResourcesDocument, RetryDocument, S3Document, SpecDocument,
    parse_failure_kind,
};
pub use valid::{JobRules, Publisher, ShardInput, ShardOrigin, ValidSpec};

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use self::selector::Selector;
use self::source::{S3Location, Source};
use crate::Error;
use crate::proto::{FailureKind, InputSpec, JobSpec, OutputSpec, Resources, RetryPolicy};

/// Entry point called when a spec names none.
pub const DEFAULT_ENTRYPOINT: &str = "_start";
/// Guest memory limit when a spec names none.
pub const DEFAULT_MEMORY_BYTES: u64 = 512 * 1024 * 1024;
/// Attempts a job gets when its spec names no retry policy.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The output a spec gets when it names none.
pub const DEFAULT_OUTPUT_NAME: &str = "outputs";
/// Where the default output is mounted.
pub const DEFAULT_OUTPUT_PATH: &str = "/outputs";
/// Environment variables Shoal sets itself; specs may not set them.
pub const RESERVED_ENV_PREFIX: &str = "SHOAL_";

/// Upper bounds that keep one spec from exhausting a daemon.
pub mod limits {
    /// Most arguments a spec may pass.
    pub const MAX_ARGS: usize = 4096;
    /// Most bytes of arguments plus environment.
    pub const MAX_ARGS_ENV_BYTES: usize = 1024 * 1024;
    /// Most environment variables.
    pub const MAX_ENV: usize = 1024;
    /// Most inputs or outputs.
    pub const MAX_MOUNTS: usize = 256;
    /// Most constraints or labels.
    pub const MAX_SELECTORS: usize = 64;
    /// Longest mount path.
    pub const MAX_PATH_BYTES: usize = 1024;
    /// Most attempts a retry policy may ask for.
    pub const MAX_ATTEMPTS: u32 = 10;
    /// Smallest memory limit: one wasm page.
    pub const MIN_MEMORY_BYTES: u64 = 64 * 1024;
    /// Largest memory limit: a 32-bit WebAssembly memory cannot grow past 4 GiB.
    pub const MAX_MEMORY_BYTES: u64 = 4 << 30;
    /// Longest run or queue timeout: a year.
    pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);
    /// Longest free text a client sets (a cancellation reason).
    pub const MAX_REASON_BYTES: usize = 1024;
    /// Most partitions one job fans out to: its result tree's `partitions/` directory then
    /// stays one block under 1 MiB (about 50 bytes a link), the most IPFS peers exchange.
    pub const MAX_PARTITIONS: u32 = 10_000;
    /// Most entries a sharded input may list (a partition takes `shard_size` of them).
    pub const MAX_SHARD_ENTRIES: usize = 100_000;
    /// Most `sources` a sharded input names in the spec itself (the spec is stored with the
    /// job and sent back with it: a longer list belongs in a directory or an S3 prefix).
    pub const MAX_SHARD_SOURCES: usize = 10_000;
}

/// Orchestrator-wide defaults applied to specs that leave a field unset.
#[derive(Debug, Clone, Copy)]
pub struct SpecDefaults {
    pub timeout: Duration,
    pub queue_timeout: Duration,
}

/// Fills in every defaulted field, so executors and clients see the effective spec.
pub(crate) fn apply_defaults(spec: &mut JobSpec, defaults: SpecDefaults) {
    if spec.entrypoint.is_empty() {
        spec.entrypoint = DEFAULT_ENTRYPOINT.to_owned();
    }
    if spec.outputs.is_empty() {
        spec.outputs.push(OutputSpec {
            name: DEFAULT_OUTPUT_NAME.to_owned(),
            path: DEFAULT_OUTPUT_PATH.to_owned(),
        });
    }
    let resources = spec.resources.get_or_insert_with(Resources::default);
    if resources.memory_bytes == 0 {
        resources.memory_bytes = DEFAULT_MEMORY_BYTES;
    }
    let to_proto = |d: Duration| prost_types::Duration::try_from(d).unwrap_or_default();
    spec.timeout
        .get_or_insert_with(|| to_proto(defaults.timeout));
    spec.queue_timeout
        .get_or_insert_with(|| to_proto(defaults.queue_timeout));
    let retry = spec.retry.get_or_insert_with(RetryPolicy::default);
    if retry.max_attempts == 0 {
        retry.max_attempts = DEFAULT_MAX_ATTEMPTS;
    }
    if retry.retry_on.is_empty() {
        retry.retry_on.push(FailureKind::ExecutorLost as i32);
    }
    if spec.publisher.is_empty() {
        spec.publisher = "default".to_owned();
    }
    if spec.program_name.is_empty() {
        spec.program_name = match spec.program.parse::<Source>() {
            Ok(Source::Http(http)) => http.file_name(),
            _ => spec.program.trim_start_matches("ipfs://").to_owned(),
        };
    }
}

/// Checks a spec as it arrives at the orchestrator: every field, with its path in the error.
/// Program and input sources must be CIDs here (the CLI uploads local files first).
pub(crate) fn validate(spec: &JobSpec) -> Result<(), Error> {
    if spec.program.is_empty() {
        return Err(Error::invalid_spec("program", "is required"));
    }
    spec.program.parse::<Source>().map_err(|e| {
        Error::invalid_spec(
            "program",
            format!("must be a content id or an HTTP(S) URL: {e}"),
        )
    })?;
    if spec.name.len() > 256 {
        return Err(Error::invalid_spec("name", "must be at most 256 bytes"));
    }
    if spec.program_name.len() > 256 || spec.program_name.contains('\0') {
        return Err(Error::invalid_spec(
            "program_name",
            "must be at most 256 bytes, without NUL",
        ));
    }
    if !spec.entrypoint.is_empty()
        && (spec.entrypoint.len() > 256 || spec.entrypoint.chars().any(char::is_control))
    {
        return Err(Error::invalid_spec(
            "entrypoint",
            "must be an export name of at most 256 printable characters",
        ));
    }
    validate_args_env(spec)?;

    if spec.inputs.len() > limits::MAX_MOUNTS {
        return Err(Error::invalid_spec(
            "inputs",
            format!("at most {} inputs", limits::MAX_MOUNTS),
        ));
    }
    if spec.outputs.len() > limits::MAX_MOUNTS {
        return Err(Error::invalid_spec(
            "outputs",
            format!("at most {} outputs", limits::MAX_MOUNTS),
        ));
    }
    // Every mount, as (field path, guest path), for the overlap check.
    let mut mounts: Vec<(String, String)> = Vec::new();
    if spec.outputs.is_empty() {
        // The default output is mounted too: an input must not land on or under it.
        mounts.push((
            "outputs (the default /outputs)".into(),
            DEFAULT_OUTPUT_PATH.into(),
        ));
    }
    let mut sharded = None;
    for (i, input) in spec.inputs.iter().enumerate() {
        validate_input_source(i, input)?;
        if input.shard {
            if let Some(first) = sharded {
                return Err(Error::invalid_spec(
                    format!("inputs[{i}].shard"),
                    format!("only one input of a job can be sharded, and inputs[{first}] is"),
                ));
            }
            sharded = Some(i);
        }
        if let Some(s3) = &input.s3 {
            if !s3.endpoint.is_empty() && url::Url::parse(&s3.endpoint).is_err() {
                return Err(Error::invalid_spec(
                    format!("inputs[{i}].s3.endpoint"),
                    format!("{:?} is not a URL", s3.endpoint),
                ));
            }
            if input.shard && !s3.version_id.is_empty() {
                return Err(Error::invalid_spec(
                    format!("inputs[{i}].s3.version_id"),
                    "a version names one object; a sharded input is many",
                ));
            }
            let s3_source = input.source.starts_with("s3://")
                || input.sources.iter().any(|s| s.starts_with("s3://"));
            if !s3_source {
                return Err(Error::invalid_spec(
                    format!("inputs[{i}].s3"),
                    "S3 settings only apply to s3:// sources",
                ));
            }
        }
        let field = format!("inputs[{i}].target");
        validate_mount_path(&input.target).map_err(|m| Error::invalid_spec(field.clone(), m))?;
        mounts.push((field, input.target.clone()));
    }
    let mut output_names = HashSet::new();
    for (i, output) in spec.outputs.iter().enumerate() {
        let name_field = format!("outputs[{i}].name");
        validate_output_name(&output.name)
            .map_err(|m| Error::invalid_spec(name_field.clone(), m))?;
        if !output_names.insert(output.name.as_str()) {
            return Err(Error::invalid_spec(
                name_field,
                format!("duplicate output name {:?}", output.name),
            ));
        }
        let field = format!("outputs[{i}].path");
        validate_mount_path(&output.path).map_err(|m| Error::invalid_spec(field.clone(), m))?;
        mounts.push((field, output.path.clone()));
    }
    check_overlaps(&mounts)?;

    if let Some(resources) = &spec.resources
        && resources.memory_bytes != 0
        && !(limits::MIN_MEMORY_BYTES..=limits::MAX_MEMORY_BYTES).contains(&resources.memory_bytes)
    {
        return Err(Error::invalid_spec(
            "resources.memory_bytes",
            "must be from 64 KiB (one WebAssembly page) to 4 GiB (the most a 32-bit \
             WebAssembly memory holds)",
        ));
    }
    for (field, duration) in [
        ("timeout", &spec.timeout),
        ("queue_timeout", &spec.queue_timeout),
    ] {
        if let Some(d) = duration {
            check_duration(field, d)?;
        }
    }
    if spec.constraints.len() > limits::MAX_SELECTORS {
        return Err(Error::invalid_spec(
            "constraints",
            format!("at most {}", limits::MAX_SELECTORS),
        ));
    }
    Selector::parse(&spec.constraints, "constraints")?;
    if spec.labels.len() > limits::MAX_SELECTORS {
        return Err(Error::invalid_spec(
            "labels",
            format!("at most {}", limits::MAX_SELECTORS),
        ));
    }
    for (key, value) in &spec.labels {
        let field = format!("labels[{key}]");
        selector::label_key(key).map_err(|m| Error::invalid_spec(field.clone(), m))?;
        selector::label_value(value).map_err(|m| Error::invalid_spec(field, m))?;
    }
    if let Some(retry) = &spec.retry {
        if retry.max_attempts > limits::MAX_ATTEMPTS {
            return Err(Error::invalid_spec(
                "retry.max_attempts",
                format!("must be at most {}", limits::MAX_ATTEMPTS),
            ));
        }
        for (i, kind) in retry.retry_on.iter().enumerate() {
            match FailureKind::try_from(*kind) {
                Ok(FailureKind::Unspecified) | Err(_) => {
                    return Err(Error::invalid_spec(
                        format!("retry.retry_on[{i}]"),
                        "unknown failure kind",
                    ));
                }
                Ok(_) => {}
            }
        }
    }
    if spec.partitions > limits::MAX_PARTITIONS {
        return Err(Error::invalid_spec(
            "partitions",
            format!("must be at most {}", limits::MAX_PARTITIONS),
        ));
    }
    validate_shards(spec, sharded)?;
    let partitioned = spec.partitions > 0 || sharded.is_some();
    if !partitioned && (spec.max_parallel != 0 || spec.allow_partial) {
        let field = if spec.max_parallel != 0 {
            "max_parallel"
        } else {
            "allow_partial"
        };
        return Err(Error::invalid_spec(
            field,
            "applies only to a job with partitions",
        ));
    }
    // A sharded job's count comes from its listing, which the client cannot know exactly.
    if sharded.is_none() && spec.max_parallel > spec.partitions {
        return Err(Error::invalid_spec(
            "max_parallel",
            format!("must be at most partitions ({})", spec.partitions),
        ));
    }
    if partitioned && !(spec.publisher.is_empty() || spec.publisher == "default") {
        // A partitioned job's results are one tree in the store, built from every partition's.
        return Err(Error::invalid_spec(
            "publisher",
            "a job with partitions publishes to the orchestrator's store (\"default\")",
        ));
    }
    if !(spec.publisher.is_empty() || spec.publisher == "default") {
        S3Location::parse(&spec.publisher).map_err(|message| {
            Error::invalid_spec(
                "publisher",
                format!(
                    "{message}; use \"default\" (the orchestrator's store) or s3://bucket/prefix"
                ),
            )
        })?;
    }
    Ok(())
}

/// An input's `source`, or for a sharded input its `sources` instead.
fn validate_input_source(i: usize, input: &InputSpec) -> Result<(), Error> {
    let parse = |field: String, text: &str| {
        text.parse::<Source>().map(drop).map_err(|e| {
            Error::invalid_spec(
                field,
                format!("must be a content id, an HTTP(S) URL or an s3:// source: {e}"),
            )
        })
    };
    if input.sources.is_empty() {
        return parse(format!("inputs[{i}].source"), &input.source);
    }
    if !input.shard {
        return Err(Error::invalid_spec(
            format!("inputs[{i}].sources"),
            "only a sharded input (shard: true) takes a list; give each source an input of its own",
        ));
    }
    if !input.source.is_empty() {
        return Err(Error::invalid_spec(
            format!("inputs[{i}].source"),
            "must be empty when `sources` lists the entries",
        ));
    }
    if input.sources.len() > limits::MAX_SHARD_SOURCES {
        return Err(Error::invalid_spec(
            format!("inputs[{i}].sources"),
            format!(
                "{} entries; at most {} (put more in a directory or an S3 prefix and shard that)",
                input.sources.len(),
                limits::MAX_SHARD_SOURCES
            ),
        ));
    }
    for (j, source) in input.sources.iter().enumerate() {
        parse(format!("inputs[{i}].sources[{j}]"), source)?;
    }
    Ok(())
}

/// `shard_size` needs a sharded input, and a partition's mounts (its entries, the other
/// inputs, the outputs) must stay within the mount limit.
fn validate_shards(spec: &JobSpec, sharded: Option<usize>) -> Result<(), Error> {
    let Some(_) = sharded else {
        if spec.shard_size != 0 {
            return Err(Error::invalid_spec(
                "shard_size",
                "applies only to a job with a sharded input",
            ));
        }
        return Ok(());
    };
    let others = spec.inputs.len() - 1 + spec.outputs.len().max(1);
    let room = limits::MAX_MOUNTS.saturating_sub(others);
    if spec.shard_size as usize > room {
        return Err(Error::invalid_spec(
            "shard_size",
            format!(
                "must be at most {room}: a partition mounts each of its entries, and a job has at most {} mounts",
                limits::MAX_MOUNTS
            ),
        ));
    }
    Ok(())
}

fn validate_args_env(spec: &JobSpec) -> Result<(), Error> {
    if spec.args.len() > limits::MAX_ARGS {
        return Err(Error::invalid_spec(
            "args",
            format!("at most {} arguments", limits::MAX_ARGS),
        ));
    }
    if spec.env.len() > limits::MAX_ENV {
        return Err(Error::invalid_spec(
            "env",
            format!("at most {} variables", limits::MAX_ENV),
        ));
    }
    let mut total = 0usize;
    for (i, arg) in spec.args.iter().enumerate() {
        // WASI passes arguments as C strings: an interior NUL would silently cut them.
        if arg.contains('\0') {
            return Err(Error::invalid_spec(
                format!("args[{i}]"),
                "must not contain a NUL byte",
            ));
        }
        total += arg.len() + 1;
    }
    let env: HashMap<_, _> = spec.env.iter().collect();
    for (name, value) in env {
        let field = format!("env[{name}]");
        let bad_char = |c: char| c == '=' || c.is_control() || c.is_whitespace();
        if name.is_empty() || name.len() > 256 || name.chars().any(bad_char) {
            return Err(Error::invalid_spec(
                field,
                "a variable name must be 1-256 bytes without '=', whitespace or control characters",
            ));
        }
        if name.starts_with(RESERVED_ENV_PREFIX) {
            return Err(Error::invalid_spec(
                field,
                "names starting with SHOAL_ are set by Shoal itself",
            ));
        }
        if value.contains('\0') {
            return Err(Error::invalid_spec(
                field,
                "a value must not contain a NUL byte",
            ));
        }
        total += name.len() + value.len() + 2;
    }
    if total > limits::MAX_ARGS_ENV_BYTES {
        return Err(Error::invalid_spec(
            "args",
            format!(
                "arguments and environment take {total} bytes; at most {} are allowed",
                limits::MAX_ARGS_ENV_BYTES
            ),
        ));
    }
    Ok(())
}

/// A guest mount path must be absolute and normal: no `.`, `..`, empty segments or trailing
/// slash, not `/` itself, printable, and of bounded length.
pub fn validate_mount_path(path: &str) -> Result<(), String> {
    if path.len() > limits::MAX_PATH_BYTES {
        return Err(format!("must be at most {} bytes", limits::MAX_PATH_BYTES));
    }
    if !path.starts_with('/') {
        return Err(format!("{path:?} must be an absolute path"));
    }
    if path == "/" {
        return Err("cannot mount over the guest's root directory".into());
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Err(format!(
            "{path:?} contains a control character or backslash"
        ));
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err(format!("{path:?} has an empty segment or trailing slash")),
            "." | ".." => return Err(format!("{path:?} must not contain '.' or '..'")),
            _ => {}
        }
    }
    Ok(())
}

fn validate_output_name(name: &str) -> Result<(), String> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 128 || !name.chars().all(valid_char) || name.starts_with('.')
    {
        return Err(format!(
            "{name:?} must be 1-128 letters, digits, '.', '_' or '-', not starting with '.'"
        ));
    }
    if matches!(name, "stdout" | "stderr" | "exitCode") {
        return Err(format!(
            "{name:?} is reserved for the program's own results"
        ));
    }
    Ok(())
}

/// No two mounts may be the same path or nest inside one another: the guest would see only
/// one of them, and which one depends on the runtime.
/// A duration as a client sent it: normalised (nanos below a second, never negative),
/// positive, and at most [`limits::MAX_TIMEOUT`]. Checked on the raw fields, since a
/// stored `{seconds: 1, nanos: 2e9}` could not be shown back as a duration.
fn check_duration(field: &str, d: &prost_types::Duration) -> Result<(), Error> {
    let normal = d.seconds >= 0 && (0..1_000_000_000).contains(&d.nanos);
    let positive = d.seconds > 0 || d.nanos > 0;
    let bounded = d.seconds < limits::MAX_TIMEOUT.as_secs() as i64;
    if normal && positive && bounded {
        return Ok(());
    }
    Err(Error::invalid_spec(
        field,
        format!(
            "must be a positive duration of at most {} (seconds and nanos normalised, nanos \
             below 1e9)",
            crate::spec::units::format_duration(limits::MAX_TIMEOUT)
        ),
    ))
}

fn check_overlaps(mounts: &[(String, String)]) -> Result<(), Error> {
    for (i, (field_a, a)) in mounts.iter().enumerate() {
        for (field_b, b) in &mounts[i + 1..] {
            let nested = |outer: &str, inner: &str| {
                inner.len() > outer.len()
                    && inner.starts_with(outer)
                    && inner.as_bytes()[outer.len()] == b'/'
            };
            if a == b {
                return Err(Error::invalid_spec(
                    field_b.clone(),
                    format!("{b:?} is already mounted by {field_a}"),
                ));
            }
            if nested(a, b) || nested(b, a) {
                return Err(Error::invalid_spec(
                    field_b.clone(),
                    format!("{b:?} overlaps {a:?} of {field_a}"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4";

    fn valid_spec() -> JobSpec {
        let mut doc = SpecDocument::from_yaml(&format!(
            r#"
name: wordcount
program: {CID}
args: [/inputs/data.csv, --top, "10"]
env: {{HELLO: world}}
inputs:
  - source: ipfs://{CID}
    target: /inputs/data.csv
outputs:
  - {{name: outputs, path: /outputs}}
resources: {{memory: 256MiB}}
timeout: 10m
queue_timeout: 1h
constraints: ["region=eu", "arch!=arm64"]
labels: {{team: genomics}}
retry: {{max_attempts: 2, retry_on: [executor_lost, trap]}}
"#
        ))
        .expect("parses");
        doc.publisher = "default".into();
        doc.to_proto().expect("converts")
    }

    /// A full spec document in YAML parses into the protobuf spec with units converted.
    #[test]
    fn yaml_document_converts() {
        let spec = valid_spec();
        validate(&spec).expect("valid");
        assert_eq!(spec.resources.expect("resources").memory_bytes, 256 << 20);
        assert_eq!(spec.timeout.expect("timeout").seconds, 600);
        assert_eq!(
            spec.retry.expect("retry").retry_on,
            vec![FailureKind::ExecutorLost as i32, FailureKind::Trap as i32]
        );
        assert_eq!(spec.env.get("HELLO").map(String::as_str), Some("world"));
    }

    /// Unknown keys in a spec document are an error, not silently ignored.
    #[test]
    fn unknown_yaml_keys_are_rejected() {
        let err = SpecDocument::from_yaml("program: x\ntimout: 1s\n").expect_err("typo");
        assert!(err.to_string().contains("timout"), "{err}");
        let err = SpecDocument::from_yaml("program: x\ntimeout: soon\n")
            .expect("parses")
            .to_proto()
            .expect_err("bad duration");
        assert!(err.to_string().contains("timeout"), "{err}");
    }

    /// Each malformed field is rejected with its own field path.
    #[test]
    fn invalid_fields_name_their_path() {
        type Mutation = Box<dyn Fn(&mut JobSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("program", Box::new(|s| s.program = String::new())),
            ("program", Box::new(|s| s.program = "./main.wasm".into())),
            (
                "inputs[0].source",
                Box::new(|s| s.inputs[0].source = "nope".into()),
            ),
            (
                "inputs[0].target",
                Box::new(|s| s.inputs[0].target = "relative/path".into()),
            ),
            (
                "inputs[0].target",
                Box::new(|s| s.inputs[0].target = "/inputs/../etc".into()),
            ),
            (
                "inputs[0].target",
                Box::new(|s| s.inputs[0].target = "/".into()),
            ),
            (
                "inputs[0].target",
                Box::new(|s| s.inputs[0].target = "/a//b".into()),
            ),
            (
                "outputs[0].path",
                Box::new(|s| s.outputs[0].path = "/inputs/data.csv".into()),
            ),
            (
                "outputs[0].path",
                Box::new(|s| s.outputs[0].path = "/inputs/data.csv/x".into()),
            ),
            (
                "outputs[0].name",
                Box::new(|s| s.outputs[0].name = "stdout".into()),
            ),
            (
                "outputs[0].name",
                Box::new(|s| s.outputs[0].name = "../x".into()),
            ),
            (
                "env[SHOAL_JOB_ID]",
                Box::new(|s| {
                    s.env.insert("SHOAL_JOB_ID".into(), "x".into());
                }),
            ),
            (
                "env[A=B]",
                Box::new(|s| {
                    s.env.insert("A=B".into(), "x".into());
                }),
            ),
            (
                "env[A B]",
                Box::new(|s| {
                    s.env.insert("A B".into(), "x".into());
                }),
            ),
            ("args[1]", Box::new(|s| s.args[1] = "a\0b".into())),
            ("args", Box::new(|s| s.args = vec!["x".repeat(1000); 2000])),
            (
                "resources.memory_bytes",
                Box::new(|s| s.resources = Some(Resources { memory_bytes: 10 })),
            ),
            (
                "resources.memory_bytes",
                Box::new(|s| {
                    s.resources = Some(Resources {
                        memory_bytes: (4 << 30) + 1,
                    })
                }),
            ),
            (
                "timeout",
                Box::new(|s| s.timeout = Some(prost_types::Duration::default())),
            ),
            (
                "timeout",
                Box::new(|s| {
                    s.timeout = Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 1_000_000_000,
                    })
                }),
            ),
            (
                "queue_timeout",
                Box::new(|s| {
                    s.queue_timeout = Some(prost_types::Duration {
                        seconds: i64::MAX,
                        nanos: 0,
                    })
                }),
            ),
            (
                "queue_timeout",
                Box::new(|s| {
                    s.queue_timeout = Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 500,
                    })
                }),
            ),
            (
                "inputs[0].target",
                Box::new(|s| {
                    s.outputs.clear();
                    s.inputs[0].target = "/outputs/data".into();
                }),
            ),
            (
                "constraints[0]",
                Box::new(|s| s.constraints[0] = "region in eu".into()),
            ),
            (
                "labels[bad key]",
                Box::new(|s| {
                    s.labels.insert("bad key".into(), "x".into());
                }),
            ),
            (
                "retry.max_attempts",
                Box::new(|s| s.retry.as_mut().expect("retry").max_attempts = 1000),
            ),
            ("publisher", Box::new(|s| s.publisher = "ftp://x".into())),
            ("partitions", Box::new(|s| s.partitions = 10_001)),
            ("max_parallel", Box::new(|s| s.max_parallel = 2)),
            ("allow_partial", Box::new(|s| s.allow_partial = true)),
            (
                "max_parallel",
                Box::new(|s| {
                    s.partitions = 3;
                    s.max_parallel = 4;
                }),
            ),
            (
                "publisher",
                Box::new(|s| {
                    s.partitions = 3;
                    s.publisher = "s3://bucket/prefix".into();
                }),
            ),
            ("shard_size", Box::new(|s| s.shard_size = 2)),
            (
                "inputs[0].sources",
                Box::new(|s| s.inputs[0].sources = vec![CID.into()]),
            ),
            (
                "inputs[0].source",
                Box::new(|s| {
                    s.inputs[0].shard = true;
                    s.inputs[0].sources = vec![CID.into()];
                }),
            ),
            (
                "inputs[0].sources[1]",
                Box::new(|s| {
                    s.inputs[0].shard = true;
                    s.inputs[0].source.clear();
                    s.inputs[0].sources = vec![CID.into(), "ftp://x/y".into()];
                }),
            ),
            (
                "inputs[1].shard",
                Box::new(|s| {
                    s.inputs[0].shard = true;
                    s.inputs.push(InputSpec {
                        source: CID.into(),
                        target: "/other".into(),
                        shard: true,
                        ..Default::default()
                    });
                }),
            ),
            (
                "shard_size",
                Box::new(|s| {
                    s.inputs[0].shard = true;
                    s.shard_size = limits::MAX_MOUNTS as u32;
                }),
            ),
            (
                "publisher",
                Box::new(|s| {
                    s.inputs[0].shard = true;
                    s.publisher = "s3://bucket/prefix".into();
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut spec = valid_spec();
            mutate(&mut spec);
            match validate(&spec) {
                Err(Error::InvalidSpec { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: expected InvalidSpec, got {other:?}"),
            }
        }
    }

    /// A sharded input takes a source or a list of sources, `shard_size` up to what the
    /// mount limit leaves, and `max_parallel` before the partition count is known.
    #[test]
    fn sharded_inputs_are_accepted() {
        let mut spec = valid_spec();
        spec.inputs[0].shard = true;
        spec.shard_size = 10;
        spec.max_parallel = 4;
        validate(&spec).expect("a sharded CID");
        spec.inputs[0].source.clear();
        spec.inputs[0].sources = vec![CID.into(), "https://host/a.csv".into()];
        validate(&spec).expect("a sharded list");
        let valid = crate::spec::ValidSpec::accept(
            spec,
            SpecDefaults {
                timeout: Duration::from_secs(1),
                queue_timeout: Duration::from_secs(1),
            },
        )
        .expect("accepted");
        let shard = valid.shard().expect("the sharded input");
        assert_eq!(shard.index, 0);
        assert!(matches!(&shard.origin, crate::spec::ShardOrigin::List(l) if l.len() == 2));
        assert_eq!(valid.inputs().count(), valid.spec().inputs.len() - 1);
        let derived = valid.with_partitions(2).expect("two partitions");
        assert_eq!(derived.rules().partitions, 2);
    }

    /// Two outputs may not share a path, and duplicate output names are caught.
    #[test]
    fn duplicate_mounts_are_rejected() {
        let mut spec = valid_spec();
        spec.outputs.push(OutputSpec {
            name: "second".into(),
            path: "/outputs".into(),
        });
        let err = validate(&spec).expect_err("duplicate path");
        assert!(err.to_string().contains("already mounted"), "{err}");
        let mut spec = valid_spec();
        spec.outputs.push(OutputSpec {
            name: "outputs".into(),
            path: "/other".into(),
        });
        let err = validate(&spec).expect_err("duplicate name");
        assert!(err.to_string().contains("duplicate output name"), "{err}");
    }

    /// Defaults fill every unset field, and the result still validates.
    #[test]
    fn defaults_are_complete() {
        let mut spec = JobSpec {
            program: format!("ipfs://{CID}"),
            ..Default::default()
        };
        apply_defaults(
            &mut spec,
            SpecDefaults {
                timeout: Duration::from_secs(60),
                queue_timeout: Duration::from_secs(3600),
            },
        );
        validate(&spec).expect("valid");
        assert_eq!(spec.entrypoint, "_start");
        assert_eq!(spec.outputs[0].path, "/outputs");
        assert_eq!(spec.program_name, CID);
        assert_eq!(
            spec.resources.expect("resources").memory_bytes,
            DEFAULT_MEMORY_BYTES
        );
        assert_eq!(spec.retry.expect("retry").max_attempts, 3);
    }

    /// Failure kinds are accepted in the spellings users write.
    #[test]
    fn failure_kinds_parse() {
        assert_eq!(
            parse_failure_kind("executor_lost"),
            Some(FailureKind::ExecutorLost)
        );
        assert_eq!(parse_failure_kind("TRAP"), Some(FailureKind::Trap));
        assert_eq!(
            parse_failure_kind("link-error"),
            Some(FailureKind::LinkError)
        );
        assert_eq!(parse_failure_kind("unspecified"), None);
        assert_eq!(parse_failure_kind("bogus"), None);
    }

    /// A tiny deterministic generator, so the property tests below need no extra crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
        /// Strings that stress validation: empty, huge, NUL, '..', '/', '=', unicode.
        fn text(&mut self) -> String {
            const PIECES: &[&str] = &[
                "",
                "/",
                "..",
                ".",
                "a",
                "=",
                "\0",
                "\u{7f}",
                " ",
                "é",
                "日本",
                "SHOAL_",
                "x/y",
                "/inputs",
                "/outputs",
                "s3://b/k",
                "http://h/x",
                "bafk",
                "*",
                "in (a,b)",
                "!k",
                "5s",
                "-1",
                "512MiB",
                "k=v",
                "\n",
            ];
            let mut out = String::new();
            for _ in 0..self.below(6) {
                out.push_str(PIECES[self.below(PIECES.len() as u64) as usize]);
            }
            if self.below(50) == 0 {
                out.push_str(&"z".repeat(self.below(5000) as usize));
            }
            out
        }
    }

    impl Rng {
        /// One of `plausible`, or now and then (half the time while `wild`) stressing text:
        /// so many generated specs are valid, and the others fail somewhere deep rather than
        /// all at the first field.
        fn pick(&mut self, wild: bool, plausible: &[&str]) -> String {
            if self.below(if wild { 2 } else { 40 }) != 0 {
                plausible[self.below(plausible.len() as u64) as usize].to_owned()
            } else {
                self.text()
            }
        }
        /// A duration, from the edges while `wild`: zero, negative, nanos out of range, past
        /// a year, huge.
        fn duration(&mut self, wild: bool) -> prost_types::Duration {
            let edge = if wild { self.below(6) } else { 5 };
            let (seconds, nanos) = match edge {
                0 => (0, 0),
                1 => (-(self.below(100) as i64), 0),
                2 => (self.below(100) as i64, 2_000_000_000),
                3 => (i64::MAX - self.below(3) as i64, 0),
                4 => (400 * 24 * 3600, 0),
                _ => (
                    self.below(3600) as i64 + 1,
                    self.below(1_000_000_000) as i32,
                ),
            };
            prost_types::Duration { seconds, nanos }
        }
    }

    /// Validation never panics on generated specs touching every field (retry policies,
    /// timeouts, labels, fan-out, sharding included), what it accepts is within the bounds
    /// it promises, and it stays valid once defaults are applied (so executors never see a
    /// spec the orchestrator would refuse). At least a fifth of the specs must be valid, or
    /// the generator would only test the first check.
    #[test]
    fn validation_never_panics_and_accepts_consistently() {
        const SPECS: usize = 20_000;
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut accepted = 0;
        let mut accepted_with = [0usize; 4]; // retry, timeout, labels, partitions
        for _ in 0..SPECS {
            // A quarter of the specs are wild; the rest mostly plausible.
            let wild = rng.below(4) == 0;
            let mut spec = JobSpec {
                program: rng.pick(
                    wild,
                    &[
                        CID,
                        "ipfs://bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4",
                        "https://example.com/main.wasm",
                        "s3://bucket/main.wasm",
                    ],
                ),
                entrypoint: if rng.below(2) == 0 {
                    rng.pick(wild, &["_start", "main"])
                } else {
                    String::new()
                },
                name: if rng.below(3) == 0 {
                    rng.text()
                } else {
                    String::new()
                },
                ..Default::default()
            };
            for _ in 0..rng.below(4) {
                let arg = rng.pick(wild, &["input.csv", "--top", "10", ""]);
                spec.args.push(arg);
            }
            for _ in 0..rng.below(4) {
                let key = rng.pick(wild, &["A", "HELLO", "B_1", "MODE"]);
                let value = rng.pick(wild, &["world", "", "a=b"]);
                spec.env.insert(key, value);
            }
            for i in 0..rng.below(3) {
                let target = format!("/inputs/{i}");
                spec.inputs.push(InputSpec {
                    source: rng.pick(wild, &[CID, "https://example.com/x.csv", "s3://b/prefix/"]),
                    target: if rng.below(2) == 0 {
                        target
                    } else {
                        rng.text()
                    },
                    s3: None,
                    shard: rng.below(6) == 0,
                    sources: if rng.below(6) == 0 {
                        (0..rng.below(3))
                            .map(|_| rng.pick(wild, &["https://h/a", "https://h/b"]))
                            .collect()
                    } else {
                        Vec::new()
                    },
                });
            }
            for _ in 0..rng.below(2) {
                spec.outputs.push(OutputSpec {
                    name: rng.pick(wild, &["outputs", "extra"]),
                    path: rng.pick(wild, &["/outputs", "/extra"]),
                });
            }
            for _ in 0..rng.below(3) {
                spec.constraints
                    .push(rng.pick(wild, &["region=eu", "arch!=arm64", "gpu", "zone in (a,b)"]));
            }
            for _ in 0..rng.below(3) {
                let key = rng.pick(wild, &["team", "tier", "app.kubernetes.io/name"]);
                spec.labels.insert(key, rng.pick(wild, &["a", "gold", ""]));
            }
            if rng.below(4) == 0 {
                spec.publisher = rng.pick(wild, &["default", "s3://bucket/prefix"]);
            }
            if rng.below(3) == 0 {
                spec.resources = Some(Resources {
                    memory_bytes: match rng.below(if wild { 3 } else { 30 }) {
                        0 => rng.next() >> rng.below(64),
                        _ => (1 + rng.below(64)) << 20,
                    },
                });
            }
            if rng.below(3) == 0 {
                spec.timeout = Some(rng.duration(wild));
            }
            if rng.below(3) == 0 {
                spec.queue_timeout = Some(rng.duration(wild));
            }
            if rng.below(3) == 0 {
                spec.retry = Some(RetryPolicy {
                    max_attempts: match rng.below(if wild { 3 } else { 30 }) {
                        0 => rng.next() as u32,
                        _ => rng.below(12) as u32,
                    },
                    retry_on: (0..rng.below(3))
                        .map(|_| match rng.below(if wild { 3 } else { 30 }) {
                            0 => rng.next() as i32,
                            _ => rng.below(16) as i32,
                        })
                        .collect(),
                });
            }
            if rng.below(4) == 0 {
                spec.partitions = match rng.below(if wild { 3 } else { 30 }) {
                    0 => rng.next() as u32,
                    _ => rng.below(20) as u32,
                };
                spec.max_parallel = rng.below(5) as u32;
                spec.shard_size = rng.below(4) as u32;
                spec.allow_partial = rng.below(2) == 0;
            }
            if validate(&spec).is_err() {
                continue;
            }
            accepted += 1;
            for (i, set) in [
                spec.retry.is_some(),
                spec.timeout.is_some() || spec.queue_timeout.is_some(),
                !spec.labels.is_empty(),
                spec.partitions > 0,
            ]
            .into_iter()
            .enumerate()
            {
                accepted_with[i] += usize::from(set);
            }
            // What was accepted keeps the promised bounds.
            for timeout in [&spec.timeout, &spec.queue_timeout].into_iter().flatten() {
                let timeout = Duration::try_from(*timeout).expect("a non-negative duration");
                assert!(timeout <= limits::MAX_TIMEOUT, "{spec:?}");
            }
            if let Some(memory) = spec.resources.as_ref().map(|r| r.memory_bytes) {
                assert!(
                    memory == 0
                        || (limits::MIN_MEMORY_BYTES..=limits::MAX_MEMORY_BYTES).contains(&memory),
                    "{spec:?}"
                );
            }
            if let Some(retry) = &spec.retry {
                assert!(retry.max_attempts <= limits::MAX_ATTEMPTS, "{spec:?}");
                for kind in &retry.retry_on {
                    let kind = FailureKind::try_from(*kind).expect("a known kind");
                    assert_ne!(kind, FailureKind::Unspecified, "{spec:?}");
                }
            }
            assert!(spec.partitions <= limits::MAX_PARTITIONS, "{spec:?}");
            apply_defaults(
                &mut spec,
                SpecDefaults {
                    timeout: Duration::from_secs(60),
                    queue_timeout: Duration::from_secs(60),
                },
            );
            validate(&spec).unwrap_or_else(|e| panic!("defaults broke {spec:?}: {e}"));
        }
        assert!(
            accepted >= SPECS / 5,
            "the generator must also produce valid specs ({accepted} of {SPECS})"
        );
        for (i, count) in accepted_with.iter().enumerate() {
            assert!(
                *count >= 100,
                "field group {i}: only {count} valid specs set it"
            );
        }
    }

    /// Arbitrary YAML-ish text never panics the spec parser.
    #[test]
    fn spec_documents_never_panic_the_parser() {
        let mut rng = Rng(0xfeed_0042);
        let keys = [
            "program",
            "args",
            "env",
            "inputs",
            "outputs",
            "timeout",
            "resources",
            "retry",
            "s3",
            "memory",
            "- ",
            ": ",
            "{",
            "[",
            "\n  ",
        ];
        for _ in 0..5_000 {
            let mut text = String::new();
            for _ in 0..rng.below(20) {
                text.push_str(keys[rng.below(keys.len() as u64) as usize]);
                text.push_str(&rng.text());
            }
            if let Ok(doc) = SpecDocument::from_yaml(&text) {
                let _ = doc.to_proto();
            }
        }
    }
}
