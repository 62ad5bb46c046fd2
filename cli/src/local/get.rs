//! `ambit local get <kind> [name]`: the objects of the running mesh as the API server holds them (what the
//! supervisor hands the controller: the manifests, the waypoints the controller deployed, Services with their
//! VIPs and pods with their status), with the `status` the controller computed (`/debug/status` on 15014)
//! filled in, as `kubectl get` shows it.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use super::State;
use super::net::{GATEWAY, NET_NS};

#[derive(clap::Args, Debug, Clone)]
pub struct GetArgs {
    /// gateway, httproute, grpcroute, tcproute, virtualservice, destinationrule, faultinjection, service or pod
    /// (plurals and kubectl's short names work too).
    pub kind: String,
    /// One object; all of the kind when omitted.
    pub name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// `yaml` or `json`; a table when omitted.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Format>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

/// A kind `get` knows: its `kind` field and the lower-case name the controller keys status by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub kind: &'static str,
    pub key: &'static str,
}

const KINDS: [(Kind, &[&str]); 9] = [
    (
        Kind {
            kind: "Gateway",
            key: "gateway",
        },
        &["gateway", "gateways", "gtw"],
    ),
    (
        Kind {
            kind: "HTTPRoute",
            key: "httproute",
        },
        &["httproute", "httproutes"],
    ),
    (
        Kind {
            kind: "GRPCRoute",
            key: "grpcroute",
        },
        &["grpcroute", "grpcroutes"],
    ),
    (
        Kind {
            kind: "TCPRoute",
            key: "tcproute",
        },
        &["tcproute", "tcproutes"],
    ),
    (
        Kind {
            kind: "VirtualService",
            key: "virtualservice",
        },
        &["virtualservice", "virtualservices", "vs"],
    ),
    (
        Kind {
            kind: "DestinationRule",
            key: "destinationrule",
        },
        &["destinationrule", "destinationrules", "dr"],
    ),
    (
        Kind {
            kind: "FaultInjection",
            key: "faultinjection",
        },
        &["faultinjection", "faultinjections"],
    ),
    (
        Kind {
            kind: "Service",
            key: "service",
        },
        &["service", "services", "svc"],
    ),
    (
        Kind {
            kind: "Pod",
            key: "pod",
        },
        &["pod", "pods", "po"],
    ),
];

/// The kind `name` means (case does not matter; `httproute.gateway.networking.k8s.io` works too).
pub fn kind(name: &str) -> Result<Kind> {
    let lower = name.to_ascii_lowercase();
    let short = lower.split('.').next().unwrap_or("");
    KINDS
        .iter()
        .find(|(_, names)| names.contains(&short))
        .map(|(k, _)| *k)
        .with_context(|| {
            format!(
                "unknown kind {name:?}: one of {}",
                KINDS
                    .iter()
                    .map(|(k, _)| k.key)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

pub fn run(dir: &Path, args: &GetArgs) -> Result<i32> {
    let kind = kind(&args.kind)?;
    // The supervisor must be running for the view to be current.
    State::load(dir)?;
    let path = dir.join("cluster/cluster.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let namespace = (!args.all_namespaces).then_some(args.namespace.as_str());
    let mut objects = select(&documents(&text)?, kind, namespace, args.name.as_deref());
    if let Some(name) = &args.name
        && objects.is_empty()
    {
        bail!(
            "{} {name:?} not found in namespace {}",
            kind.key,
            args.namespace
        );
    }
    match fetch_status(kind, namespace) {
        Ok(status) => {
            for obj in &mut objects {
                if let Some(s) = status.get(&status_key(kind, obj)) {
                    merge_status(obj, s);
                }
            }
        }
        Err(why) => {
            eprintln!("warning: no computed status ({why}); showing the objects without it")
        }
    }
    print!("{}", render(&objects, args.name.is_some(), args.output)?);
    Ok(0)
}

/// Every document of a multi-document YAML text, as JSON values.
fn documents(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc)?;
        if !v.is_null() {
            out.push(serde_json::to_value(v)?);
        }
    }
    Ok(out)
}

fn meta<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or_default()
}

fn object_namespace(obj: &Value) -> &str {
    match meta(obj, "namespace") {
        "" => "default",
        ns => ns,
    }
}

/// The objects of `kind` in `namespace` (all when `None`) named `name` (all when `None`), sorted.
pub fn select(
    docs: &[Value],
    kind: Kind,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Vec<Value> {
    let mut out: Vec<Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind.kind)
        .filter(|d| namespace.is_none_or(|ns| object_namespace(d) == ns))
        .filter(|d| name.is_none_or(|n| meta(d, "name") == n))
        .cloned()
        .collect();
    out.sort_by(|a, b| {
        (object_namespace(a), meta(a, "name")).cmp(&(object_namespace(b), meta(b, "name")))
    });
    out
}

fn status_key(kind: Kind, obj: &Value) -> String {
    format!(
        "{}/{}/{}",
        kind.key,
        object_namespace(obj),
        meta(obj, "name")
    )
}

/// The controller's `/debug/status` for `kind` (and `namespace`), or why there is none.
fn fetch_status(kind: Kind, namespace: Option<&str>) -> Result<Map<String, Value>, String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("reaching the controller inside the mesh's network needs root".into());
    }
    let mut path = format!("/debug/status?kind={}", kind.key);
    if let Some(ns) = namespace {
        path.push_str(&format!("&namespace={ns}"));
    }
    let addr = SocketAddr::from((GATEWAY, 15014));
    let (code, body) = super::http::get_in(NET_NS, addr, &path)
        .ok_or_else(|| format!("the controller at {addr} did not answer"))?;
    if code != 200 {
        return Err(format!(
            "the controller answered {code} to {path}: it may predate /debug/status"
        ));
    }
    match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(format!("{path} did not return a JSON object")),
    }
}

/// Whether each of `gateways` (`<ns>/<name>`) has settled in the controller's gateway statuses: `Programmed`
/// (its pods are ready and traffic is bound to it) or not `Accepted` (it never will be).
pub fn waypoints_settled(status: &Map<String, Value>, gateways: &[String]) -> bool {
    gateways.iter().all(|gw| {
        status.get(&format!("gateway/{gw}")).is_some_and(|s| {
            let has = |kind: &str, value: &str| {
                s["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == kind && c["status"] == value))
            };
            has("Programmed", "True") || has("Accepted", "False")
        })
    })
}

/// Fills `obj.status` with what the controller computed: its conditions replace those of the same type, other
/// fields replace the object's.
pub fn merge_status(obj: &mut Value, computed: &Value) {
    let Some(o) = obj.as_object_mut() else {
        return;
    };
    let status = o.entry("status").or_insert_with(|| json!({}));
    if !status.is_object() {
        *status = json!({});
    }
    let Some(fields) = computed.as_object() else {
        return;
    };
    for (k, v) in fields {
        if k == "conditions"
            && let (Some(have), Some(new)) = (status[k.as_str()].as_array_mut(), v.as_array())
        {
            for c in new {
                match have.iter_mut().find(|h| h["type"] == c["type"]) {
                    Some(h) => *h = c.clone(),
                    None => have.push(c.clone()),
                }
            }
            continue;
        }
        status[k.as_str()] = v.clone();
    }
}

/// One object (when asked for by name) or a `List`, as YAML or JSON; or a table.
pub fn render(objects: &[Value], one: bool, format: Option<Format>) -> Result<String> {
    let value = match (one, objects) {
        (true, [obj]) => obj.clone(),
        _ => json!({"apiVersion": "v1", "kind": "List", "items": objects}),
    };
    Ok(match format {
        Some(Format::Json) => format!("{}\n", serde_json::to_string_pretty(&value)?),
        Some(Format::Yaml) => serde_yaml::to_string(&value)?,
        None => table(objects),
    })
}

/// `Type=Status` of each condition.
fn conditions(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}={}",
                c["type"].as_str().unwrap_or("?"),
                c["status"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// NAMESPACE, NAME and a summary of the conditions (a route's per parent).
fn table(objects: &[Value]) -> String {
    let mut rows = vec![[
        "NAMESPACE".to_owned(),
        "NAME".to_owned(),
        "STATUS".to_owned(),
    ]];
    for obj in objects {
        let status = &obj["status"];
        let mut summary = conditions(&status["conditions"]);
        for p in status["parents"].as_array().into_iter().flatten() {
            summary.push(format!(
                "parent {}: {}",
                p["parentRef"]["name"].as_str().unwrap_or("?"),
                conditions(&p["conditions"]).join(" ")
            ));
        }
        rows.push([
            object_namespace(obj).to_owned(),
            meta(obj, "name").to_owned(),
            if summary.is_empty() {
                "-".to_owned()
            } else {
                summary.join(" ")
            },
        ]);
    }
    let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r[1].len()).max().unwrap_or(0);
    rows.iter()
        .map(|r| format!("{:<w0$}  {:<w1$}  {}\n", r[0], r[1], r[2]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: bookinfo}
spec: {gatewayClassName: istio-waypoint}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: bookinfo}
status:
  podIP: 10.244.1.2
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Service
metadata: {name: other}
"#;

    #[test]
    fn waypoints_settle_when_programmed_or_refused() {
        let status = |v: Value| v.as_object().cloned().unwrap();
        let gws = ["a/wp".to_owned()];
        let cond = |t: &str, s: &str| json!({"conditions": [{"type": t, "status": s}]});
        assert!(!waypoints_settled(&status(json!({})), &gws));
        assert!(!waypoints_settled(
            &status(json!({"gateway/a/wp": cond("Programmed", "False")})),
            &gws
        ));
        assert!(waypoints_settled(
            &status(json!({"gateway/a/wp": cond("Programmed", "True")})),
            &gws
        ));
        assert!(waypoints_settled(
            &status(json!({"gateway/a/wp": cond("Accepted", "False")})),
            &gws
        ));
        assert!(waypoints_settled(&status(json!({})), &[]));
    }

    #[test]
    fn kinds_by_any_name() {
        assert_eq!(kind("svc").unwrap().kind, "Service");
        assert_eq!(kind("HTTPRoutes").unwrap().key, "httproute");
        assert_eq!(kind("vs").unwrap().kind, "VirtualService");
        assert_eq!(
            kind("destinationrules.networking.istio.io").unwrap().key,
            "destinationrule"
        );
        assert_eq!(
            kind("gateways.gateway.networking.k8s.io").unwrap().kind,
            "Gateway"
        );
        assert!(kind("deployment").is_err());
    }

    #[test]
    fn selects_and_merges_status() {
        let docs = documents(CLUSTER).unwrap();
        let svc = kind("service").unwrap();
        assert_eq!(select(&docs, svc, None, None).len(), 2);
        assert_eq!(select(&docs, svc, Some("default"), None).len(), 1);
        let mut gw = select(
            &docs,
            kind("gateway").unwrap(),
            Some("bookinfo"),
            Some("waypoint"),
        );
        assert_eq!(
            status_key(kind("gateway").unwrap(), &gw[0]),
            "gateway/bookinfo/waypoint"
        );
        merge_status(
            &mut gw[0],
            &json!({"conditions": [{"type": "Programmed", "status": "True"}], "addresses": [{"value": "x"}]}),
        );
        assert_eq!(gw[0]["status"]["conditions"][0]["type"], "Programmed");
        assert_eq!(gw[0]["status"]["addresses"][0]["value"], "x");
        assert!(table(&gw).contains("Programmed=True"));

        // A pod keeps its own conditions; the controller's are added.
        let mut pod = select(&docs, kind("pod").unwrap(), Some("bookinfo"), None);
        merge_status(
            &mut pod[0],
            &json!({"conditions": [{"type": "istio.io/WaypointBound", "status": "False"}]}),
        );
        let c = conditions(&pod[0]["status"]["conditions"]);
        assert_eq!(c, vec!["Ready=True", "istio.io/WaypointBound=False"]);
        assert_eq!(pod[0]["status"]["podIP"], "10.244.1.2");

        let one = render(&gw, true, Some(Format::Json)).unwrap();
        assert!(one.contains("\"kind\": \"Gateway\""), "{one}");
        let list = render(&pod, false, Some(Format::Yaml)).unwrap();
        assert!(list.contains("kind: List"), "{list}");
    }
}
