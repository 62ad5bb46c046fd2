//! The kinds the server serves: the built-ins Ambit uses, and every version of every CustomResourceDefinition
//! applied to it. Objects are stored once per (group, plural), whatever version a client reads them at.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where objects of one resource live in the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TypeKey {
    pub group: String,
    pub plural: String,
}

impl TypeKey {
    pub fn new(group: &str, plural: &str) -> Self {
        TypeKey {
            group: group.to_owned(),
            plural: plural.to_owned(),
        }
    }

    pub fn crds() -> Self {
        Self::new("apiextensions.k8s.io", "customresourcedefinitions")
    }

    pub fn namespaces() -> Self {
        Self::new("", "namespaces")
    }

    pub fn pods() -> Self {
        Self::new("", "pods")
    }

    /// `pods` or `gateways.gateway.networking.k8s.io`: the snapshot's key and the CRD name form.
    pub fn id(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// A CRD's `additionalPrinterColumns` entry (what `kubectl get` shows).
#[derive(Clone, Debug, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub kind: String,
    pub json_path: String,
}

/// One served resource.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceType {
    pub group: String,
    /// Served versions, the storage (preferred) version first.
    pub versions: Vec<String>,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Has a `status` subresource: the main resource ignores status changes, `/status` touches only status.
    pub status_subresource: bool,
    /// TokenReview: `create` only, nothing stored.
    pub create_only: bool,
    pub printer_columns: Vec<PrinterColumn>,
}

/// The verbs discovery lists for ordinary resources.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceType {
    pub fn key(&self) -> TypeKey {
        TypeKey::new(&self.group, &self.plural)
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    pub fn storage_version(&self) -> &str {
        self.versions.first().map(String::as_str).unwrap_or("v1")
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        if self.create_only {
            vec!["create"]
        } else {
            ALL_VERBS.to_vec()
        }
    }
}

/// `obj` as a client reading at `version` sees it: only `apiVersion` differs between a CRD's served versions
/// (conversion strategy `None`).
pub fn at_version<'a>(obj: &'a Value, rt: &ResourceType, version: &str) -> Cow<'a, Value> {
    let want = rt.api_version(version);
    if obj.get("apiVersion").and_then(Value::as_str) == Some(want.as_str()) {
        Cow::Borrowed(obj)
    } else {
        let mut o = obj.clone();
        o["apiVersion"] = Value::String(want);
        Cow::Owned(o)
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
}

const fn b(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    status: bool,
) -> Builtin {
    Builtin {
        group,
        version,
        kind,
        plural,
        namespaced,
        short,
        status,
    }
}

const BUILTINS: &[Builtin] = &[
    b("", "v1", "Namespace", "namespaces", false, &["ns"], true),
    b("", "v1", "Pod", "pods", true, &["po"], true),
    b("", "v1", "Service", "services", true, &["svc"], true),
    b("", "v1", "Endpoints", "endpoints", true, &["ep"], false),
    b(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        true,
        &["sa"],
        false,
    ),
    b("", "v1", "Node", "nodes", false, &["no"], true),
    b("", "v1", "ConfigMap", "configmaps", true, &["cm"], false),
    b("", "v1", "Secret", "secrets", true, &[], false),
    b("", "v1", "Event", "events", true, &["ev"], false),
    b(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        true,
        &["deploy"],
        true,
    ),
    b(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        true,
        &["rs"],
        true,
    ),
    b("apps", "v1", "DaemonSet", "daemonsets", true, &["ds"], true),
    b(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
        &[],
        false,
    ),
    b(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        true,
        &[],
        false,
    ),
    b(
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        true,
        &["ev"],
        false,
    ),
    b(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        true,
        &["hpa"],
        true,
    ),
    b(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
        &["pdb"],
        true,
    ),
    b(
        "authentication.k8s.io",
        "v1",
        "TokenReview",
        "tokenreviews",
        false,
        &[],
        false,
    ),
    // Stored and served (charts carry them), not enforced: the local API server has no authorization.
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        false,
        &[],
        false,
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
        &[],
        false,
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        true,
        &[],
        false,
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        true,
        &[],
        false,
    ),
    b(
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
        "priorityclasses",
        false,
        &["pc"],
        false,
    ),
    b(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        &["crd", "crds"],
        true,
    ),
];

fn builtin_types() -> Vec<ResourceType> {
    BUILTINS
        .iter()
        .map(|b| ResourceType {
            group: b.group.to_owned(),
            versions: vec![b.version.to_owned()],
            kind: b.kind.to_owned(),
            plural: b.plural.to_owned(),
            singular: b.kind.to_lowercase(),
            namespaced: b.namespaced,
            short_names: b.short.iter().map(|s| (*s).to_owned()).collect(),
            categories: Vec::new(),
            status_subresource: b.status,
            create_only: b.plural == "tokenreviews",
            printer_columns: Vec::new(),
        })
        .collect()
}

/// Why a CRD cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CrdError(pub String);

/// The resource a CustomResourceDefinition defines (`None` versions served is an error).
pub fn crd_resource_type(crd: &Value) -> Result<ResourceType, CrdError> {
    let spec = crd
        .get("spec")
        .ok_or_else(|| CrdError("spec: Required value".into()))?;
    let text = |v: Option<&Value>, what: &str| -> Result<String, CrdError> {
        match v.and_then(Value::as_str) {
            Some(s) if !s.is_empty() => Ok(s.to_owned()),
            _ => Err(CrdError(format!("{what}: Required value"))),
        }
    };
    let group = text(spec.get("group"), "spec.group")?;
    let names = spec.get("names");
    let plural = text(names.and_then(|n| n.get("plural")), "spec.names.plural")?;
    let kind = text(names.and_then(|n| n.get("kind")), "spec.names.kind")?;
    let singular = names
        .and_then(|n| n.get("singular"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| kind.to_lowercase());
    let strings = |field: &str| -> Vec<String> {
        names
            .and_then(|n| n.get(field))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaced = match spec.get("scope").and_then(Value::as_str) {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => {
            return Err(CrdError(
                "spec.scope: Unsupported value: must be Namespaced or Cluster".into(),
            ));
        }
    };
    let expected_name = format!("{plural}.{group}");
    let name = crd.pointer("/metadata/name").and_then(Value::as_str);
    if name != Some(expected_name.as_str()) {
        return Err(CrdError(format!(
            "metadata.name: Invalid value: {:?}: must be spec.names.plural+\".\"+spec.group ({expected_name})",
            name.unwrap_or("")
        )));
    }
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CrdError("spec.versions: Required value".into()))?;
    let mut served = Vec::new();
    let mut status_subresource = false;
    let mut printer_columns = Vec::new();
    for v in versions {
        let vname = text(v.get("name"), "spec.versions[].name")?;
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        status_subresource |= v.pointer("/subresources/status").is_some();
        let storage = v.get("storage").and_then(Value::as_bool) == Some(true);
        if storage || printer_columns.is_empty() {
            let columns = v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .map(|cols| {
                    cols.iter()
                        .filter_map(|c| {
                            Some(PrinterColumn {
                                name: c.get("name")?.as_str()?.to_owned(),
                                kind: c
                                    .get("type")
                                    .and_then(Value::as_str)
                                    .unwrap_or("string")
                                    .to_owned(),
                                json_path: c.get("jsonPath")?.as_str()?.to_owned(),
                            })
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            if storage || !columns.is_empty() {
                printer_columns = columns;
            }
        }
        if storage {
            served.insert(0, vname);
        } else {
            served.push(vname);
        }
    }
    if served.is_empty() {
        return Err(CrdError("spec.versions: no version is served".into()));
    }
    Ok(ResourceType {
        group,
        versions: served,
        kind,
        plural,
        singular,
        namespaced,
        short_names: strings("shortNames"),
        categories: strings("categories"),
        status_subresource,
        create_only: false,
        printer_columns,
    })
}

/// Every served resource, built-in and custom.
#[derive(Clone, Debug)]
pub struct Registry {
    types: BTreeMap<TypeKey, ResourceType>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            types: builtin_types().into_iter().map(|t| (t.key(), t)).collect(),
        }
    }
}

impl Registry {
    pub fn get(&self, key: &TypeKey) -> Option<&ResourceType> {
        self.types.get(key)
    }

    /// The resource `plural` of `group` if it is served at `version`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .get(&TypeKey::new(group, plural))
            .filter(|t| t.versions.iter().any(|v| v == version))
    }

    pub fn by_kind(&self, group: &str, kind: &str) -> Option<&ResourceType> {
        self.types
            .values()
            .find(|t| t.group == group && t.kind == kind)
    }

    pub fn all(&self) -> impl Iterator<Item = &ResourceType> {
        self.types.values()
    }

    /// Registers (or re-registers, when a CRD changes) a custom resource. A CRD may not shadow a built-in.
    pub fn register_crd(&mut self, rt: ResourceType) -> Result<(), CrdError> {
        if let Some(existing) = self.types.get(&rt.key())
            && is_builtin(existing)
        {
            return Err(CrdError(format!(
                "{} is a built-in resource",
                rt.key().id()
            )));
        }
        self.types.insert(rt.key(), rt);
        Ok(())
    }

    pub fn unregister(&mut self, key: &TypeKey) {
        if self.types.get(key).is_some_and(|t| !is_builtin(t)) {
            self.types.remove(key);
        }
    }

    /// Groups in discovery order (core first, then by name), each with its versions, preferred first.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in self.types.values() {
            let versions = groups.entry(t.group.clone()).or_default();
            for v in &t.versions {
                if !versions.contains(v) {
                    versions.push(v.clone());
                }
            }
        }
        for versions in groups.values_mut() {
            versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        groups.into_iter().collect()
    }

    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a ResourceType> + 'a {
        self.types
            .values()
            .filter(move |t| t.group == group && t.versions.iter().any(|v| v == version))
    }
}

impl Registry {
    /// `key` names a built-in resource (a CRD may not define it).
    pub fn is_builtin(&self, key: &TypeKey) -> bool {
        BUILTINS
            .iter()
            .any(|b| b.group == key.group && b.plural == key.plural)
    }
}

fn is_builtin(t: &ResourceType) -> bool {
    BUILTINS
        .iter()
        .any(|b| b.group == t.group && b.plural == t.plural)
}

/// Kubernetes version ordering: GA > beta > alpha, higher numbers first (`v2` > `v1` > `v1beta2` > `v1alpha1`).
pub fn version_priority(v: &str) -> (u8, u32, u32) {
    let Some(rest) = v.strip_prefix('v') else {
        return (0, 0, 0);
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let minor = |t: &str| t.parse().unwrap_or(0);
    if tail.is_empty() {
        (3, major, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, major, minor(n))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, major, minor(n))
    } else {
        (0, major, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gateway_crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "gateways.gateway.networking.k8s.io"},
            "spec": {"group": "gateway.networking.k8s.io", "scope": "Namespaced",
                "names": {"plural": "gateways", "kind": "Gateway", "shortNames": ["gtw"]},
                "versions": [
                    {"name": "v1beta1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                     "additionalPrinterColumns": [{"name": "Class", "type": "string", "jsonPath": ".spec.gatewayClassName"}]},
                    {"name": "v1alpha1", "served": false, "storage": false}]}
        })
    }

    #[test]
    fn crd_defines_a_served_resource_with_storage_version_first() {
        let rt = crd_resource_type(&gateway_crd()).unwrap();
        assert_eq!(rt.versions, vec!["v1", "v1beta1"]);
        assert!(rt.namespaced && rt.status_subresource);
        assert_eq!(rt.short_names, vec!["gtw"]);
        assert_eq!(rt.singular, "gateway");
        assert_eq!(rt.printer_columns[0].json_path, ".spec.gatewayClassName");
        let mut reg = Registry::default();
        reg.register_crd(rt).unwrap();
        assert!(
            reg.lookup("gateway.networking.k8s.io", "v1beta1", "gateways")
                .is_some()
        );
        assert!(
            reg.lookup("gateway.networking.k8s.io", "v1alpha1", "gateways")
                .is_none()
        );
        let groups = reg.groups();
        let (_, versions) = groups
            .iter()
            .find(|(g, _)| g == "gateway.networking.k8s.io")
            .unwrap();
        assert_eq!(versions, &vec!["v1".to_owned(), "v1beta1".to_owned()]);
    }

    #[test]
    fn crd_errors_name_the_field() {
        let mut crd = gateway_crd();
        crd["metadata"]["name"] = json!("wrong");
        assert!(
            crd_resource_type(&crd)
                .unwrap_err()
                .0
                .contains("metadata.name")
        );
        let mut crd = gateway_crd();
        crd["spec"]["scope"] = json!("Galaxy");
        assert!(
            crd_resource_type(&crd)
                .unwrap_err()
                .0
                .contains("spec.scope")
        );
        let mut reg = Registry::default();
        let mut pods = crd_resource_type(&gateway_crd()).unwrap();
        pods.group = String::new();
        pods.plural = "pods".into();
        assert!(reg.register_crd(pods).is_err());
    }

    #[test]
    fn versions_sort_like_kubernetes() {
        let mut v = vec!["v1alpha1", "v1beta1", "v2", "v1", "v1beta2"];
        v.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(v, vec!["v2", "v1", "v1beta2", "v1beta1", "v1alpha1"]);
    }
}
