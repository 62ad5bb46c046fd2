//! Which pods the mesh captures (ambient-api-surface 1.1), decided identically by the controller (HBONE or not)
//! and the node agent (redirect or not): a pod is captured when it carries `istio.io/dataplane-mode=ambient`, or
//! its namespace does and the pod does not say `none`; never in an excluded namespace, never with a sidecar.

use std::collections::BTreeMap;

pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
pub const SIDECAR_STATUS: &str = "sidecar.istio.io/status";
/// Namespaces never captured unless configured otherwise (the CNI's `excludeNamespaces` default).
pub const DEFAULT_EXCLUDED_NAMESPACES: &[&str] = &["kube-system"];

/// [`DEFAULT_EXCLUDED_NAMESPACES`] as owned strings, as configurations hold them.
pub fn default_excluded_namespaces() -> Vec<String> {
    DEFAULT_EXCLUDED_NAMESPACES
        .iter()
        .map(|n| (*n).to_owned())
        .collect()
}

/// True when the pod's traffic goes through ztunnel.
pub fn captured(
    pod_labels: &BTreeMap<String, String>,
    pod_annotations: &BTreeMap<String, String>,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    excluded_namespaces: &[String],
) -> bool {
    if excluded_namespaces.iter().any(|e| e == namespace)
        || pod_annotations.contains_key(SIDECAR_STATUS)
    {
        return false;
    }
    let pod = pod_labels.get(DATAPLANE_MODE).map(String::as_str);
    let ns = namespace_labels.get(DATAPLANE_MODE).map(String::as_str);
    pod == Some("ambient") || (ns == Some("ambient") && pod != Some("none"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_enablement_selectors() {
        let amb = m(&[(DATAPLANE_MODE, "ambient")]);
        let none = m(&[(DATAPLANE_MODE, "none")]);
        let other = m(&[(DATAPLANE_MODE, "sidecar")]);
        let empty = m(&[]);
        let sidecar = m(&[(SIDECAR_STATUS, "{}")]);
        let excl = vec!["kube-system".to_owned()];
        // (pod labels, pod annotations, namespace, namespace labels) -> captured
        let cases = [
            (&amb, &empty, "a", &empty, true),
            (&empty, &empty, "a", &amb, true),
            (&other, &empty, "a", &amb, true),
            (&none, &empty, "a", &amb, false),
            (&other, &empty, "a", &empty, false),
            (&empty, &empty, "a", &empty, false),
            (&amb, &empty, "a", &none, true),
            (&amb, &sidecar, "a", &amb, false),
            (&amb, &empty, "kube-system", &amb, false),
        ];
        for (i, (pl, pa, ns, nl, want)) in cases.into_iter().enumerate() {
            assert_eq!(captured(pl, pa, ns, nl, &excl), want, "case {i}");
        }
    }
}
