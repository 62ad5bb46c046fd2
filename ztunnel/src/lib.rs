//! Ambit ztunnel: the per-node L4 proxy (HBONE, mTLS, L4 authorization).

pub mod app;
pub mod config;
pub mod dns;
pub mod inpod;
pub mod localconfig;
pub mod metrics;
pub mod pods;
pub mod proxy;
pub mod rbac;
pub mod state;
pub mod workers;
