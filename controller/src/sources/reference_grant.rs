//! Serde type for Gateway API's `ReferenceGrant` (`gateway.networking.k8s.io/v1beta1`, also `v1`): the owner of
//! a namespace allowing objects of some kinds in other namespaces to refer to objects of some kinds in it. Every
//! field of the spec is modelled; unknown fields are ignored. The fields the CRD requires default to empty, which
//! matches nothing (an empty `group` is the core group, as in the CRD).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// `ReferenceGrant`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceGrant {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ReferenceGrantSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceGrantSpec {
    /// Who may refer (any entry).
    #[serde(default)]
    pub from: Vec<ReferenceGrantFrom>,
    /// What they may refer to in the grant's namespace (any entry).
    #[serde(default)]
    pub to: Vec<ReferenceGrantTo>,
}

/// A `from` entry: objects of `group`/`kind` in `namespace`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceGrantFrom {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub namespace: String,
}

/// A `to` entry: objects of `group`/`kind` in the grant's namespace, only the one called `name` when set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceGrantTo {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
}
