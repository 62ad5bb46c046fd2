//! The ambit CLI: `ambit local …` runs the whole mesh on one host; `ambit echo` is the built-in test server.

pub mod echo;
pub mod local;
