//! Logging setup shared by the daemons and the CLI: `tracing` to stderr, pretty or JSON,
//! filtered by `RUST_LOG` (or the given default).

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pretty" | "text" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (pretty or json)")),
        }
    }
}

/// Installs the global subscriber. `default_directives` applies when `RUST_LOG` is unset,
/// e.g. `info` for daemons, `warn` for the CLI. Calling it twice is harmless.
pub fn init(format: LogFormat, default_directives: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_directives));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A failed log write is reported with eprintln!, which panics when stderr itself is
        // gone (a closed pipe): losing a log line must never take a daemon down.
        .log_internal_errors(false);
    let _already_set = match format {
        LogFormat::Pretty => builder.compact().try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
