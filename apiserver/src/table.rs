//! Server-side printing (`Accept: ...;as=Table;g=meta.k8s.io;v=v1`): the columns `kubectl get` shows, for the
//! kinds people look at most, a CRD's `additionalPrinterColumns`, and Name/Age for everything else.

use serde_json::{Value, json};

use crate::resources::ResourceType;

/// Does the client take a Table (it lists plain JSON too, as a fallback)?
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|a| {
        let a = a.replace(' ', "");
        a.contains("as=Table") && a.contains("g=meta.k8s.io")
    })
}

pub fn content_type(accept: &str) -> &'static str {
    if accept.contains("v=v1beta1") && !accept.contains("v=v1;") && !accept.contains("v=v1,") {
        "application/json;as=Table;v=v1beta1;g=meta.k8s.io"
    } else {
        "application/json;as=Table;v=v1;g=meta.k8s.io"
    }
}

type Cells = Box<dyn Fn(&Value) -> Vec<Value>>;

struct Column {
    name: &'static str,
    kind: &'static str,
    priority: u8,
}

const fn col(name: &'static str, kind: &'static str, priority: u8) -> Column {
    Column {
        name,
        kind,
        priority,
    }
}

fn age(obj: &Value, now: i64) -> String {
    let Some(ts) = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
    else {
        return "<unknown>".into();
    };
    let Ok(t) = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
    else {
        return "<unknown>".into();
    };
    let s = (now - t.unix_timestamp()).max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn s(v: Option<&Value>) -> Value {
    match v {
        None | Some(Value::Null) => json!("<none>"),
        Some(Value::String(x)) => json!(x),
        Some(other) => other.clone(),
    }
}

/// A tiny JSONPath: `.a.b`, `.list[0].x`, `.conditions[?(@.type=="Ready")].status`.
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let mut segments = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    let path = path.trim_start_matches('.');
    for (i, c) in path.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            '.' if depth == 0 => {
                segments.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    segments.push(&path[start..]);
    let mut cur = obj;
    for seg in segments.into_iter().filter(|s| !s.is_empty()) {
        let (field, filter) = match seg.split_once('[') {
            Some((f, rest)) => (f, Some(rest.trim_end_matches(']'))),
            None => (seg, None),
        };
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        if let Some(f) = filter {
            if let Ok(i) = f.parse::<usize>() {
                cur = cur.get(i)?;
            } else {
                let cond = f
                    .trim_start_matches("?(")
                    .trim_end_matches(')')
                    .trim_start_matches("@.");
                let (k, v) = cond.split_once("==")?;
                let v = v.trim().trim_matches('"').trim_matches('\'');
                cur = cur
                    .as_array()?
                    .iter()
                    .find(|e| e.get(k.trim()).and_then(Value::as_str) == Some(v))?;
            }
        }
    }
    Some(cur)
}

fn pod_cells(pod: &Value) -> Vec<Value> {
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array);
    let total = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses.map_or(0, |s| s.iter().filter(|c| c["ready"] == true).count());
    let restarts: i64 = statuses.map_or(0, |s| {
        s.iter().filter_map(|c| c["restartCount"].as_i64()).sum()
    });
    let status = if pod.pointer("/metadata/deletionTimestamp").is_some() {
        json!("Terminating")
    } else {
        s(pod
            .pointer("/status/reason")
            .or(pod.pointer("/status/phase")))
    };
    vec![
        json!(format!("{ready}/{total}")),
        status,
        json!(restarts),
        s(pod.pointer("/status/podIP")),
        s(pod.pointer("/spec/nodeName")),
    ]
}

fn service_ports(svc: &Value) -> Value {
    let ports: Vec<String> = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
                .collect()
        })
        .unwrap_or_default();
    if ports.is_empty() {
        json!("<none>")
    } else {
        json!(ports.join(","))
    }
}

/// The Table for `objects` (already at the client's version). `include` is `includeObject`.
pub fn render(
    rt: &ResourceType,
    objects: &[Value],
    include: &str,
    resource_version: &str,
) -> Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (extra_cols, cells): (Vec<Column>, Cells) = match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => (
            vec![
                col("Ready", "string", 0),
                col("Status", "string", 0),
                col("Restarts", "integer", 0),
                col("IP", "string", 1),
                col("Node", "string", 1),
            ],
            Box::new(pod_cells),
        ),
        ("", "namespaces") => (
            vec![col("Status", "string", 0)],
            Box::new(|o: &Value| vec![s(o.pointer("/status/phase"))]),
        ),
        ("", "services") => (
            vec![
                col("Type", "string", 0),
                col("Cluster-IP", "string", 0),
                col("Port(s)", "string", 0),
            ],
            Box::new(|o: &Value| {
                vec![
                    s(o.pointer("/spec/type")),
                    s(o.pointer("/spec/clusterIP")),
                    service_ports(o),
                ]
            }),
        ),
        ("apps", "deployments") => (
            vec![
                col("Ready", "string", 0),
                col("Up-to-date", "integer", 0),
                col("Available", "integer", 0),
            ],
            Box::new(|o: &Value| {
                let n = |p: &str| o.pointer(p).and_then(Value::as_i64).unwrap_or(0);
                vec![
                    json!(format!(
                        "{}/{}",
                        n("/status/readyReplicas"),
                        n("/spec/replicas")
                    )),
                    json!(n("/status/updatedReplicas")),
                    json!(n("/status/availableReplicas")),
                ]
            }),
        ),
        _ => (Vec::new(), Box::new(|_: &Value| Vec::new())),
    };
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}),
    ];
    let custom: Vec<_> = rt
        .printer_columns
        .iter()
        .filter(|c| c.json_path != ".metadata.creationTimestamp")
        .collect();
    for c in &extra_cols {
        defs.push(json!({"name": c.name, "type": c.kind, "format": "", "description": c.name, "priority": c.priority}));
    }
    for c in &custom {
        defs.push(json!({"name": c.name, "type": c.kind, "format": "", "description": c.name, "priority": 0}));
    }
    defs.push(
        json!({"name": "Age", "type": "string", "format": "", "description": "Age", "priority": 0}),
    );
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = vec![s(o.pointer("/metadata/name"))];
            row.extend(cells(o));
            for c in &custom {
                row.push(s(json_path(o, &c.json_path)));
            }
            row.push(json!(age(o, now)));
            let object = match include {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))}),
            };
            json!({"cells": row, "object": object})
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": defs, "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;
    use crate::resources::TypeKey;

    #[test]
    fn pods_print_ready_status_and_age() {
        let reg = Registry::default();
        let rt = reg.get(&TypeKey::pods()).unwrap();
        let pod = json!({"metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "containerStatuses": [{"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1}]}});
        let t = render(rt, &[pod], "Metadata", "7");
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "web",
                "1/2",
                "Running",
                3,
                "<none>",
                "n1",
                t["rows"][0]["cells"][6]
            ])
        );
        assert!(t["rows"][0]["cells"][6].as_str().unwrap().ends_with('d'));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }

    #[test]
    fn json_path_filters_conditions() {
        let gw = json!({"status": {"conditions": [{"type": "Accepted", "status": "True"}, {"type": "Programmed", "status": "False"}]}});
        assert_eq!(
            json_path(&gw, ".status.conditions[?(@.type==\"Programmed\")].status"),
            Some(&json!("False"))
        );
        assert_eq!(
            json_path(&gw, ".status.conditions[0].type"),
            Some(&json!("Accepted"))
        );
        assert_eq!(json_path(&gw, ".spec.x"), None);
    }
}
