//! The ambit CLI.
