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
