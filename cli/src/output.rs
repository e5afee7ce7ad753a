//! Rendering results: tables for people, JSON or YAML (the protobuf JSON mapping, through
//! reflection on the published descriptors) for scripts.

use std::io::Write as _;
use std::sync::OnceLock;

use anyhow::Context as _;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage as _};

/// How listings and descriptions are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Stdout was closed by its reader (`shoal job list | head -1`). The command ends there,
/// quietly and with exit 0, as `ls | head` does.
#[derive(Debug)]
pub struct ClosedStdout;

impl std::fmt::Display for ClosedStdout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout is closed")
    }
}

impl std::error::Error for ClosedStdout {}

/// Whether `error` is a closed stdout, anywhere in its chain.
pub fn is_closed_stdout(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<ClosedStdout>())
}

/// Writes `bytes` to stdout and flushes them (a line, a log chunk: each shows as it comes).
/// Every output of a command goes through here, so a closed stdout ends it as
/// [`ClosedStdout`].
pub fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::BrokenPipe => anyhow::Error::new(ClosedStdout),
            _ => anyhow::Error::new(error).context("writing to stdout"),
        })
}

/// `println!` that returns a closed stdout as an error instead of panicking.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::write_stdout(b"\n")?
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format!("{}\n", format_args!($($arg)*)).as_bytes())?
    };
}

/// `eprintln!` that never panics: a closed or broken stderr (`shoal ... 2>&-`) loses the
/// message but not the command, whose work and exit code do not depend on it. The line is
/// formatted first and written in one call (stderr is unbuffered: `writeln!` on it makes
/// a system call per piece of the format).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut line = format!($($arg)*);
        line.push('\n');
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

/// `print!` that returns a closed stdout as an error instead of panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format!($($arg)*).as_bytes())?
    };
}

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(shoal::proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set compiled into this binary is valid")
    })
}

/// A protobuf message as JSON, by the canonical protobuf JSON mapping.
pub fn to_json<M: prost::Message + prost::Name>(message: &M) -> anyhow::Result<serde_json::Value> {
    let descriptor = pool()
        .get_message_by_name(&M::full_name())
        .with_context(|| format!("no descriptor for {}", M::full_name()))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())?;
    let _ = dynamic.descriptor();
    Ok(serde_json::to_value(&dynamic)?)
}

/// Prints messages as a JSON array or a YAML list.
pub fn print_structured<M: prost::Message + prost::Name>(
    format: Format,
    messages: &[M],
) -> anyhow::Result<()> {
    let values = messages
        .iter()
        .map(to_json)
        .collect::<anyhow::Result<Vec<_>>>()?;
    print_value(format, &serde_json::Value::Array(values))
}

/// Prints one message as JSON or YAML.
pub fn print_one<M: prost::Message + prost::Name>(
    format: Format,
    message: &M,
) -> anyhow::Result<()> {
    print_value(format, &to_json(message)?)
}

fn print_value(format: Format, value: &serde_json::Value) -> anyhow::Result<()> {
    match format {
        Format::Yaml => crate::out!("{}", serde_yaml_ng::to_string(value)?),
        _ => crate::outln!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}

/// A table with a header row, in the terminal's width.
pub fn table(header: &[&str]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
        .set_header(header.iter().copied());
    table
}

/// A timestamp for people (UTC, seconds).
pub fn time(timestamp: &Option<prost_types::Timestamp>) -> String {
    timestamp
        .and_then(|t| std::time::SystemTime::try_from(t).ok())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "-".into())
}
