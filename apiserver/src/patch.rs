//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch.
//!
//! The strategic merge patch is a practical subset of the real one: lists of objects whose field name has a
//! known merge key (`containers`/`env`/`volumes`… by `name`, `ports` by `containerPort` or `port`,
//! `volumeMounts` by `mountPath`, `conditions` by `type`, `ownerReferences` by `uid`) are merged element by element,
//! with `$patch: delete|replace`, `$setElementOrder/<list>`, `$deleteFromPrimitiveList/<list>` and `$retainKeys`
//! honoured; every other list is replaced, as in a merge patch. It does not consult per-kind schemas, so a list
//! the real server would replace but whose name is in the table is merged (and vice versa).

use serde_json::{Map, Value};

use crate::error::ApiError;

/// The kinds of PATCH, from the request's `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml"
            | "application/apply-patch+json"
            | "application/apply-patch+cbor" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

/// RFC 7386: maps merge recursively, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(t) = target.as_object_mut() else {
        return;
    };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let has = |k: &str| items.iter().any(|i| i.get(k).is_some());
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "ports" if has("containerPort") => "containerPort",
        "ports" if has("port") => "port",
        _ => return None,
    })
}

/// A strategic merge patch (see the module docs for what is supported).
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            if let Some(m) = replaced.as_object_mut() {
                m.remove("$patch");
            }
            *target = replaced;
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) if other != "merge" => {
            return Err(ApiError::BadRequest(format!(
                "unknown patch directive $patch: {other}"
            )));
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(t) = target.as_object_mut() else {
        return Ok(());
    };
    if let Some(Value::Array(keep)) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in p {
        if k.starts_with('$') {
            if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/")
                && let (Some(Value::Array(list)), Some(del)) = (t.get_mut(field), v.as_array())
            {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (t.get_mut(k), v) {
            (Some(Value::Array(cur)), Value::Array(items)) => {
                if let Some(key) = merge_key(k, items) {
                    merge_list(cur, items, key)?;
                    if let Some(Value::Array(order)) = p.get(&format!("$setElementOrder/{k}")) {
                        reorder(cur, order, key);
                    }
                } else {
                    *cur = items.clone();
                }
            }
            (Some(cur), Value::Object(_)) if cur.is_object() => {
                strategic_merge_patch(cur, v)?;
                if cur.is_null() {
                    t.remove(k);
                }
            }
            (_, Value::Array(items)) => {
                let cleaned: Vec<Value> = items
                    .iter()
                    .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                    .cloned()
                    .collect();
                t.insert(k.clone(), Value::Array(cleaned));
            }
            (_, Value::Object(_)) => {
                let mut fresh = Value::Object(Map::new());
                strategic_merge_patch(&mut fresh, v)?;
                if !fresh.is_null() {
                    t.insert(k.clone(), fresh);
                }
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(())
}

fn merge_list(cur: &mut Vec<Value>, items: &[Value], key: &str) -> Result<(), ApiError> {
    for item in items {
        let Some(id) = item.get(key) else {
            if item.get("$patch").and_then(Value::as_str) == Some("replace") {
                cur.clear();
                continue;
            }
            return Err(ApiError::BadRequest(format!(
                "map: {item} does not contain declared merge key: {key}"
            )));
        };
        let pos = cur.iter().position(|c| c.get(key) == Some(id));
        match (pos, item.get("$patch").and_then(Value::as_str)) {
            (Some(i), Some("delete")) => {
                cur.remove(i);
            }
            (None, Some("delete")) => {}
            (Some(i), _) => strategic_merge_patch(&mut cur[i], item)?,
            (None, _) => {
                let mut fresh = Value::Object(Map::new());
                strategic_merge_patch(&mut fresh, item)?;
                cur.push(fresh);
            }
        }
    }
    Ok(())
}

fn reorder(cur: &mut [Value], order: &[Value], key: &str) {
    let rank = |v: &Value| {
        v.get(key)
            .and_then(|id| order.iter().position(|o| o.get(key) == Some(id)))
            .unwrap_or(usize::MAX)
    };
    cur.sort_by_key(rank);
}

fn pointer_parts(path: &str) -> Result<Vec<String>, ApiError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(ApiError::BadRequest(format!(
            "JSON patch path {path:?} must start with '/'"
        )));
    };
    Ok(rest
        .split('/')
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn parent_mut<'a>(doc: &'a mut Value, parts: &[String]) -> Result<&'a mut Value, ApiError> {
    let mut cur = doc;
    for p in parts {
        cur = match cur {
            Value::Object(m) => m.get_mut(p),
            Value::Array(a) => p.parse::<usize>().ok().and_then(move |i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| ApiError::Invalid {
            message: format!("JSON patch: path element {p:?} does not exist"),
            details: Default::default(),
        })?;
    }
    Ok(cur)
}

fn missing(what: &str) -> ApiError {
    ApiError::Invalid {
        message: format!("JSON patch: {what}"),
        details: Default::default(),
    }
}

fn remove_path(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let parts = pointer_parts(path)?;
    let Some((last, parents)) = parts.split_last() else {
        return Ok(std::mem::take(doc));
    };
    match parent_mut(doc, parents)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| missing(&format!("no value at {path}"))),
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(missing(&format!("no value at {path}"))),
        },
        _ => Err(missing(&format!("no value at {path}"))),
    }
}

fn add_path(doc: &mut Value, path: &str, value: Value, replace: bool) -> Result<(), ApiError> {
    let parts = pointer_parts(path)?;
    let Some((last, parents)) = parts.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parents)? {
        Value::Object(m) => {
            if replace && !m.contains_key(last) {
                return Err(missing(&format!("no value at {path} to replace")));
            }
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            if last == "-" && !replace {
                a.push(value);
            } else {
                match last.parse::<usize>() {
                    Ok(i) if replace && i < a.len() => a[i] = value,
                    Ok(i) if !replace && i <= a.len() => a.insert(i, value),
                    _ => return Err(missing(&format!("index out of range at {path}"))),
                }
            }
        }
        _ => return Err(missing(&format!("parent of {path} is not a container"))),
    }
    Ok(())
}

/// RFC 6902.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let Some(ops) = patch.as_array() else {
        return Err(ApiError::BadRequest(
            "a JSON patch is a list of operations".into(),
        ));
    };
    for op in ops {
        let s = |k: &str| op.get(k).and_then(Value::as_str);
        let path = s("path")
            .ok_or_else(|| ApiError::BadRequest("JSON patch operation without path".into()))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| ApiError::BadRequest(format!("{op}: missing value")))
        };
        match s("op") {
            Some("add") => add_path(doc, path, value()?, false)?,
            Some("replace") => add_path(doc, path, value()?, true)?,
            Some("remove") => {
                remove_path(doc, path)?;
            }
            Some("test") => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(missing(&format!("test failed at {path}")));
                }
            }
            Some(kind @ ("move" | "copy")) => {
                let from =
                    s("from").ok_or_else(|| ApiError::BadRequest(format!("{op}: missing from")))?;
                let v = if kind == "move" {
                    remove_path(doc, from)?
                } else {
                    doc.pointer(from)
                        .cloned()
                        .ok_or_else(|| missing(&format!("no value at {from}")))?
                };
                add_path(doc, path, v, false)?;
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown JSON patch operation {other:?}"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_sets_merges_and_deletes() {
        let mut doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": [1, 2]}});
        merge_patch(
            &mut doc,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}, "spec": {"x": [3]}}),
        );
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"x": [3]}})
        );
    }

    #[test]
    fn strategic_patch_merges_containers_by_name_and_keeps_order() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}]},
            {"name": "side", "image": "side:1"}]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "side"}],
            "containers": [{"name": "side", "image": "side:2"}, {"name": "app", "env": [{"name": "B", "value": "2"}]}]}});
        strategic_merge_patch(&mut pod, &patch).unwrap();
        assert_eq!(pod["spec"]["containers"][0]["image"], "app:1");
        assert_eq!(
            pod["spec"]["containers"][0]["env"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(pod["spec"]["containers"][1]["image"], "side:2");
        let del = json!({"spec": {"containers": [{"name": "side", "$patch": "delete"}]}});
        strategic_merge_patch(&mut pod, &del).unwrap();
        assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 1);
        let mut fin = json!({"metadata": {"finalizers": ["a", "b"]}});
        strategic_merge_patch(
            &mut fin,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        )
        .unwrap();
        assert_eq!(fin["metadata"]["finalizers"], json!(["b"]));
        assert!(
            strategic_merge_patch(&mut pod, &json!({"spec": {"containers": [{"image": "x"}]}}))
                .is_err()
        );
    }

    #[test]
    fn strategic_patch_replaces_unknown_lists_and_handles_labels() {
        let mut obj = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"args": ["x", "y"]}});
        let patch = json!({"metadata": {"labels": {"istio.io/dataplane-mode": "ambient", "a": null}}, "spec": {"args": ["z"]}});
        strategic_merge_patch(&mut obj, &patch).unwrap();
        assert_eq!(
            obj,
            json!({"metadata": {"labels": {"istio.io/dataplane-mode": "ambient"}}, "spec": {"args": ["z"]}})
        );
    }

    #[test]
    fn json_patch_operations() {
        let mut doc = json!({"metadata": {"labels": {"a": "1"}}, "list": [1, 3]});
        let ops = json!([
            {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"},
            {"op": "add", "path": "/list/1", "value": 2},
            {"op": "add", "path": "/list/-", "value": 4},
            {"op": "replace", "path": "/metadata/labels/a", "value": "9"},
            {"op": "test", "path": "/list/0", "value": 1},
            {"op": "copy", "from": "/list/0", "path": "/first"},
            {"op": "move", "from": "/first", "path": "/moved"},
            {"op": "remove", "path": "/list/3"}]);
        json_patch(&mut doc, &ops).unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"labels": {"a": "9", "b/c": "2"}}, "list": [1, 2, 3], "moved": 1})
        );
        assert!(
            json_patch(
                &mut doc,
                &json!([{"op": "test", "path": "/moved", "value": 2}])
            )
            .is_err()
        );
        assert!(json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(json_patch(&mut doc, &json!({"op": "add"})).is_err());
    }
}
