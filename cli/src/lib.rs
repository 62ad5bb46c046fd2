//! The ambit CLI: `ambit local …` runs the whole mesh on one host; `ambit echo` is the built-in test server;
//! `ambit authz check` explains a policy decision; `ambit ztunnel-config` (`zc`) shows a ztunnel's view of the mesh;
//! `ambit waypoint` manages waypoints; `ambit analyze` reports what will not work as meant; `ambit proxy-status`
//! lists the proxies connected to the controller and whether they are in sync; `ambit dashboard` runs Prometheus
//! and Grafana on the local mesh; `ambit precheck` says whether Ambit will run on a cluster or on this host.

pub mod analyze;
pub mod authz;
pub mod dashboard;
pub mod echo;
pub mod local;
pub mod precheck;
pub mod proxy_status;
pub mod waypoint;
pub mod zc;
