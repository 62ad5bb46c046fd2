//! Shared building blocks of the Ambit proxies. Each module has one concern; see docs/ARCHITECTURE.md.

pub mod admin;
pub mod authz;
pub mod ca;
pub mod cert;
pub mod cmdline;
pub mod dns_forward;
pub mod drain;
pub mod enrollment;
pub mod grpc;
pub mod hbone;
pub mod hostname;
pub mod identity;
pub mod jwt;
#[cfg(feature = "kube")]
pub mod kube;
pub mod local_pod;
pub mod logging;
pub mod metrics;
pub mod rbac;
pub mod readiness;
pub mod redirect;
pub mod runtime;
pub mod signal;
pub mod signer;
pub mod tls;
pub mod xds;
pub mod zds;

pub use identity::Identity;
