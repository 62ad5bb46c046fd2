//! Per-backend endpoint choice and protection: load-balancing algorithms (least request, round robin, random,
//! consistent hash by ring or Maglev, locality preference), outlier detection and connection/request limits
//! (circuit breaking).
//!
//! Everything here is pure and generic over endpoint indices (no `state` types), so it is table-tested on plain
//! numbers: [`lb`] picks an endpoint, [`hash`] maps request keys to endpoints, [`locality`] ranks endpoints by
//! distance, [`outlier`] ejects failing endpoints, [`limits`] caps what a backend may have open.

pub mod hash;
pub mod lb;
pub mod limits;
pub mod locality;
pub mod outlier;

pub use hash::{HashKey, HashPolicy, HashTable, Table};
pub use lb::{Algorithm, Balancer};
pub use limits::{
    ConnectionGuard, Counters, Guard, Limits, PendingGuard, RequestGuard, RetryGuard,
};
pub use locality::{Locality, Tiers, rank};
pub use outlier::{EndpointHealth, Outcome, OutlierDetection, ignore_ejections};
