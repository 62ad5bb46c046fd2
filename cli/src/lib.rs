//! The ambit CLI.

pub mod echo;
