//! The command groups of the CLI, and the pieces they share: `sources` (a program's and
//! inputs' sources, uploaded when local), `waiting` (submit and wait), `results` (getting
//! them back), `describe` (a job for people).

pub mod data;
pub mod describe;
pub mod devstack;
pub mod job;
pub mod node;
pub mod results;
pub mod sources;
pub mod waiting;
pub mod wasm;

/// A `KEY=VALUE` flag (`-e`, `-l`), split at its first `=`; anything else is refused while
/// the command line is parsed, so it exits as a usage error.
pub fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} must be KEY=VALUE")),
    }
}
