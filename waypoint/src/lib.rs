//! Ambit's waypoint: the mesh's L7 tier. It terminates HBONE from ztunnels, routes each HTTP/1.1, HTTP/2 or gRPC
//! request (or TCP connection) by the Gateway API routes attached to the destination service, and sends it on over
//! HBONE to the chosen endpoint. See docs/ARCHITECTURE.md ("Waypoint").

/// The L7 authorization and JWT engines live in `ambit-core` so that `ambit authz check` runs the very same code.
pub use ambit_core::{authz, jwt};

pub mod app;
pub mod balance;
pub mod config;
pub mod extauthz;
pub mod filters;
pub mod http;
pub mod inbound;
pub mod localconfig;
pub mod metrics;
pub mod ratelimit;
pub mod resilience;
pub mod route;
pub mod state;
pub mod upstream;

/// The HBONE port of every mesh workload (and of the waypoint itself).
pub const HBONE_PORT: u16 = 15008;
