//! Ambit controller: Kubernetes objects (or manifests) in, Istio-compatible delta xDS and certificates out.
//!
//! Data flow: [`sources`] (kube-rs watchers on the Kubernetes API, or manifest directories) emit events into the
//! [`index`]; [`compute`] turns the index into the resources upstream ztunnel consumes, as a pure function; the
//! [`xds`] server pushes the differences to every connected client.

pub mod admin;
pub mod analyze;
pub mod app;
pub mod ca;
pub mod compute;
pub mod controller;
pub mod deploy;
pub mod index;
pub mod leader;
pub mod sources;
pub mod status_writer;
pub mod xds;
