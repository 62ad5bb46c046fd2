//! Ambit's node agent: decides which pods of its node are captured (the same enrollment rule as the controller),
//! installs the in-pod redirection rules of spec 4.4 inside each captured pod's network namespace, and hands the
//! pods to the node's ztunnel over ZDS.

pub mod agent;
pub mod install;
pub mod kube;
pub mod netns;
pub mod plugin;
pub mod plugin_install;
pub mod plugin_server;
pub mod server;

pub use agent::{AgentConfig, LocalPod, NodeAgent};
pub use server::{PodInfo, ZdsServer};
