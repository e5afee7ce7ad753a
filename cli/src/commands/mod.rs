//! The command groups of the CLI.

pub mod data;
pub mod describe;
pub mod devstack;
pub mod job;
pub mod node;
pub mod wasm;
