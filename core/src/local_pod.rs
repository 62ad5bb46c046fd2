//! A pod as the node agent reconciles it: what the local mesh runtime writes into the agent's `--pods` file and
//! what the agent builds from the Kubernetes API on a cluster. Shared by the node agent (which reads it) and the
//! `ambit local` runtime (which writes it).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A pod on this node as the local mesh runtime describes it (the node agent's `--pods`
/// file), or as the node agent builds it from the Kubernetes API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalPod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    #[serde(default = "default_sa")]
    pub service_account: String,
    pub netns: PathBuf,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
}

fn default_sa() -> String {
    "default".to_owned()
}
