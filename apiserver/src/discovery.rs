//! Discovery: `/version`, `/api`, `/apis`, the group and group-version documents, and the aggregated form
//! (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`) that kubectl 1.30+ asks for first.

use serde_json::{Value, json};

use crate::resources::{Registry, ResourceType};

pub const SERVER_MAJOR: &str = "1";
pub const SERVER_MINOR: &str = "33";

pub fn version() -> Value {
    json!({
        "major": SERVER_MAJOR,
        "minor": SERVER_MINOR,
        "gitVersion": format!("v{SERVER_MAJOR}.{SERVER_MINOR}.0-ambit.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH }),
    })
}

/// The client asked for aggregated discovery (`as=APIGroupDiscoveryList`, v2 or v2beta1).
pub fn wants_aggregated(accept: &str) -> Option<&'static str> {
    accept.split(',').map(|a| a.replace(' ', "")).find_map(|a| {
        if !a.contains("as=APIGroupDiscoveryList") || !a.contains("g=apidiscovery.k8s.io") {
            return None;
        }
        if a.contains("v=v2beta1") {
            Some("v2beta1")
        } else if a.contains("v=v2") {
            Some("v2")
        } else {
            None
        }
    })
}

pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_doc(group: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    json!({
        "name": group,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": versions.first().map(gv).unwrap_or(json!({})),
    })
}

pub fn group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, v)| group_doc(g, v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(reg: &Registry, name: &str) -> Option<Value> {
    let groups = reg.groups();
    let (g, v) = groups.iter().find(|(g, _)| g == name && !g.is_empty())?;
    let mut doc = group_doc(g, v);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

fn subresources(rt: &ResourceType) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut subs = Vec::new();
    if rt.status_subresource {
        subs.push(("status", vec!["get", "patch", "update"]));
    }
    if rt.group.is_empty() && rt.plural == "serviceaccounts" {
        subs.push(("token", vec!["create"]));
    }
    subs
}

pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for rt in reg.in_group_version(group, version) {
        let mut r = json!({
            "name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced,
            "kind": rt.kind, "verbs": rt.verbs(),
        });
        if !rt.short_names.is_empty() {
            r["shortNames"] = json!(rt.short_names);
        }
        if !rt.categories.is_empty() {
            r["categories"] = json!(rt.categories);
        }
        resources.push(r);
        for (sub, verbs) in subresources(rt) {
            let kind = if sub == "token" {
                "TokenRequest"
            } else {
                rt.kind.as_str()
            };
            let mut s = json!({"name": format!("{}/{sub}", rt.plural), "singularName": "", "namespaced": rt.namespaced,
                               "kind": kind, "verbs": verbs});
            if sub == "token" {
                s["group"] = json!("authentication.k8s.io");
                s["version"] = json!("v1");
            }
            resources.push(s);
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// The aggregated document for the core group (`core == true`, `/api`) or every other group (`/apis`).
pub fn aggregated(reg: &Registry, core: bool, version: &str) -> Value {
    let mut items = Vec::new();
    for (group, versions) in reg.groups() {
        if group.is_empty() != core {
            continue;
        }
        let vdocs: Vec<Value> = versions
            .iter()
            .map(|v| {
                let resources: Vec<Value> = reg
                    .in_group_version(&group, v)
                    .map(|rt| {
                        let kind = json!({"group": group, "version": v, "kind": rt.kind});
                        let subs: Vec<Value> = subresources(rt)
                            .into_iter()
                            .map(|(sub, verbs)| {
                                let kind = if sub == "token" {
                                    json!({"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"})
                                } else {
                                    kind.clone()
                                };
                                json!({"subresource": sub, "responseKind": kind, "verbs": verbs})
                            })
                            .collect();
                        let mut r = json!({
                            "resource": rt.plural, "responseKind": kind,
                            "scope": if rt.namespaced { "Namespaced" } else { "Cluster" },
                            "singularResource": rt.singular, "verbs": rt.verbs(),
                        });
                        if !rt.short_names.is_empty() {
                            r["shortNames"] = json!(rt.short_names);
                        }
                        if !rt.categories.is_empty() {
                            r["categories"] = json!(rt.categories);
                        }
                        if !subs.is_empty() {
                            r["subresources"] = json!(subs);
                        }
                        r
                    })
                    .collect();
                json!({"version": v, "resources": resources, "freshness": "Current"})
            })
            .collect();
        items.push(
            json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": vdocs}),
        );
    }
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_and_aggregated_discovery_list_builtins_with_status() {
        let reg = Registry::default();
        let v1 = resource_list(&reg, "", "v1").unwrap();
        let names: Vec<&str> = v1["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(
            names.contains(&"pods")
                && names.contains(&"pods/status")
                && names.contains(&"namespaces")
        );
        let pods = v1["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods")
            .unwrap();
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["namespaced"], true);
        assert!(resource_list(&reg, "apps", "v9").is_none());

        let apis = group_list(&reg);
        assert!(
            apis["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["name"] == "apps")
        );
        assert!(
            !apis["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["name"] == "")
        );

        let agg = aggregated(&reg, false, "v2");
        let apps = agg["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["metadata"]["name"] == "apps")
            .unwrap();
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        assert_eq!(deploy["scope"], "Namespaced");
        assert_eq!(deploy["subresources"][0]["subresource"], "status");
        let core = aggregated(&reg, true, "v2");
        assert_eq!(core["items"].as_array().unwrap().len(), 1);

        let accept =
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
        assert_eq!(wants_aggregated(accept), Some("v2"));
        assert_eq!(wants_aggregated("application/json"), None);
    }
}
