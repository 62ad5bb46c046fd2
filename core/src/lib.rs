//! Shared building blocks of the Ambit proxies. Each module has one owner concern; see docs/ARCHITECTURE.md.

pub mod drain;
pub mod identity;

pub use identity::Identity;
