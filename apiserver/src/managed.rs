//! `managedFields`: which field manager owns which fields, and server-side apply on top of it.
//!
//! A simplified ownership model, enough for labels, annotations, status and whole objects of one manager:
//! a field is a path of map keys; every list is atomic (one field, owned and replaced whole — the real server
//! merges associative lists such as `containers` by key); a manager is `(manager, operation, subresource)`.
//! Updates (PUT, merge/strategic/JSON patches) take ownership of the fields they change; an apply owns exactly
//! the fields of its configuration, removes the fields it owned before and no longer applies (unless another
//! manager owns them too), and conflicts (409) with another manager that owns a field it sets to a different
//! value, unless `force` takes the field over.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::meta;
use crate::store::Subresource;

type Path = Vec<String>;

/// Fields the server owns: never part of a manager's set.
fn is_server_field(path: &[String]) -> bool {
    match path {
        [top] => top == "apiVersion" || top == "kind",
        [m, f, ..] if m == "metadata" => matches!(
            f.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "managedFields"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "selfLink"
                | "generateName"
        ),
        _ => false,
    }
}

/// Every leaf path of `v` (scalars, lists, null and empty maps are leaves).
fn leaves(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
        match v {
            Value::Object(m) if !m.is_empty() || path.is_empty() => {
                for (k, child) in m {
                    path.push(k.clone());
                    if !is_server_field(path) {
                        walk(child, path, out);
                    }
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k))
}

fn remove_at(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        match cur.get_mut(k) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

fn to_fields_v1(set: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut cur = &mut root;
        for k in path {
            let entry = cur.entry(format!("f:{k}")).or_insert_with(|| json!({}));
            if !entry.is_object() {
                *entry = json!({});
            }
            match entry.as_object_mut() {
                Some(m) => cur = m,
                None => break,
            }
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
        let fields: Vec<(&String, &Value)> = v
            .as_object()
            .map(|m| m.iter().filter(|(k, _)| k.starts_with("f:")).collect())
            .unwrap_or_default();
        if fields.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (k, child) in fields {
            path.push(k[2..].to_owned());
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// One `managedFields` entry.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    subresource: String,
    api_version: String,
    time: String,
    fields: BTreeSet<Path>,
}

fn parse_entries(obj: &Value) -> Vec<Entry> {
    let Some(list) = meta::meta(obj)
        .and_then(|m| m.get("managedFields"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    let s = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    list.iter()
        .map(|e| Entry {
            manager: s(e, "manager"),
            operation: s(e, "operation"),
            subresource: s(e, "subresource"),
            api_version: s(e, "apiVersion"),
            time: s(e, "time"),
            fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
        })
        .collect()
}

fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.fields),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if let Some(m) = meta::meta_mut(obj) {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn sub_name(sub: Subresource) -> &'static str {
    match sub {
        Subresource::Main => "",
        Subresource::Status => "status",
    }
}

/// `a` is `b` or one of its ancestors or descendants: owning one affects the other.
fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn entry_mut<'a>(
    entries: &'a mut Vec<Entry>,
    manager: &str,
    op: &str,
    sub: &str,
    api_version: &str,
) -> &'a mut Entry {
    let idx = match entries
        .iter()
        .position(|e| e.manager == manager && e.operation == op && e.subresource == sub)
    {
        Some(i) => i,
        None => {
            entries.push(Entry {
                manager: manager.to_owned(),
                operation: op.to_owned(),
                subresource: sub.to_owned(),
                api_version: api_version.to_owned(),
                time: String::new(),
                fields: BTreeSet::new(),
            });
            entries.len() - 1
        }
    };
    let e = &mut entries[idx];
    e.time = meta::now_rfc3339();
    e.api_version = api_version.to_owned();
    e
}

/// Records an update by `manager` (operation `Update`): it now owns the fields it changed; fields it removed
/// are owned by nobody. `new` carries the stored object's `managedFields` in (or none on create).
pub fn record_update(
    new: &mut Value,
    old: Option<&Value>,
    manager: &str,
    sub: Subresource,
    api_version: &str,
) {
    let mut entries = old.map(parse_entries).unwrap_or_default();
    let new_leaves = leaves(new);
    let changed: BTreeSet<Path> = new_leaves
        .iter()
        .filter(|p| old.is_none_or(|o| at(o, p) != at(new, p)))
        .cloned()
        .collect();
    let removed: BTreeSet<Path> = old
        .map(|o| {
            leaves(o)
                .into_iter()
                .filter(|p| at(new, p).is_none())
                .collect()
        })
        .unwrap_or_default();
    if changed.is_empty() && removed.is_empty() {
        write_entries(new, &entries);
        return;
    }
    for e in entries.iter_mut() {
        e.fields
            .retain(|f| !changed.contains(f) && !removed.iter().any(|r| f.starts_with(r)));
    }
    if !changed.is_empty() {
        let e = entry_mut(&mut entries, manager, "Update", sub_name(sub), api_version);
        e.fields.extend(changed);
    }
    write_entries(new, &entries);
}

/// What part of the object an apply may touch: the endpoint (`/status` or the main resource) and whether the
/// kind has a status subresource (then the main resource leaves status alone).
#[derive(Clone, Copy, Debug)]
pub struct Scope {
    pub sub: Subresource,
    pub status_subresource: bool,
}

/// Server-side apply of `config` by `manager` onto `current` (`None`: the object does not exist yet). `scope`
/// limits the configuration to what the endpoint may change (status only, or all but status); `normalize`
/// applies the server's defaults to a candidate result.
pub fn apply(
    current: Option<&Value>,
    mut config: Value,
    manager: &str,
    force: bool,
    scope: Scope,
    api_version: &str,
    normalize: &dyn Fn(&mut Value),
) -> Result<Value, ApiError> {
    let Scope {
        sub,
        status_subresource,
    } = scope;
    let Some(cfg) = config.as_object_mut() else {
        return Err(ApiError::BadRequest(
            "the apply configuration must be an object".into(),
        ));
    };
    match sub {
        Subresource::Status => {
            cfg.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"))
        }
        Subresource::Main if status_subresource => {
            cfg.remove("status");
        }
        Subresource::Main => {}
    }
    if sub == Subresource::Status
        && let Some(m) = cfg.get_mut("metadata").and_then(Value::as_object_mut)
    {
        m.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "resourceVersion" | "uid"));
    }
    let applied = leaves(&config);
    let Some(current) = current else {
        let mut obj = config;
        let mut entries = Vec::new();
        entry_mut(&mut entries, manager, "Apply", sub_name(sub), api_version).fields = applied;
        write_entries(&mut obj, &entries);
        return Ok(obj);
    };
    let mut entries = parse_entries(current);
    let mine = |e: &Entry| {
        e.manager == manager && e.operation == "Apply" && e.subresource == sub_name(sub)
    };
    let previous: BTreeSet<Path> = entries
        .iter()
        .filter(|e| mine(e))
        .flat_map(|e| e.fields.clone())
        .collect();
    let mut obj = current.clone();
    for p in previous.difference(&applied) {
        let shared = entries
            .iter()
            .filter(|e| !mine(e))
            .any(|e| e.fields.iter().any(|f| overlaps(f, p)));
        let still_applied = applied.iter().any(|a| a.starts_with(p));
        if !shared && !still_applied {
            remove_at(&mut obj, p);
        }
    }
    merge_applied(&mut obj, &config);
    // A conflict is a field another manager owns that this apply would change (after the server's defaults, so
    // that applying `ports: [{port: 80}]` does not conflict over the defaulted `protocol`).
    let mut result = obj.clone();
    normalize(&mut result);
    let mut conflicts = Vec::new();
    for e in entries.iter().filter(|e| !mine(e)) {
        for p in &applied {
            let owned = e.fields.iter().any(|f| overlaps(f, p));
            if owned && at(current, p) != at(&result, p) {
                conflicts.push((e.manager.clone(), e.api_version.clone(), p.clone()));
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(conflict_error(current, &conflicts));
        }
        for e in entries.iter_mut().filter(|e| !mine(e)) {
            e.fields.retain(|f| !applied.iter().any(|p| overlaps(f, p)));
        }
    }
    entry_mut(&mut entries, manager, "Apply", sub_name(sub), api_version).fields = applied;
    write_entries(&mut obj, &entries);
    Ok(obj)
}

/// Maps merge key by key; everything else (lists included) is replaced; `null` removes.
fn merge_applied(target: &mut Value, config: &Value) {
    match (target.as_object_mut(), config.as_object()) {
        (Some(t), Some(c)) => {
            for (k, v) in c {
                if v.is_null() {
                    t.remove(k);
                } else if v.is_object() && t.get(k).is_some_and(Value::is_object) {
                    if let Some(child) = t.get_mut(k) {
                        merge_applied(child, v);
                    }
                } else {
                    t.insert(k.clone(), v.clone());
                }
            }
        }
        _ => *target = config.clone(),
    }
}

fn conflict_error(current: &Value, conflicts: &[(String, String, Path)]) -> ApiError {
    let lines: Vec<String> = conflicts
        .iter()
        .map(|(m, v, p)| format!("conflict with \"{m}\" using {v}: .{}", p.join(".")))
        .collect();
    let n = lines.len();
    ApiError::Conflict {
        message: format!(
            "Apply failed with {n} conflict{}: {}",
            if n == 1 { "" } else { "s" },
            lines.join("\n")
        ),
        details: crate::error::Details {
            name: meta::name(current).to_owned(),
            group: String::new(),
            kind: current
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        },
    }
}

#[cfg(test)]
mod tests;
