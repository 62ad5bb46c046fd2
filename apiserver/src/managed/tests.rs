use serde_json::json;

use super::*;

fn entries(obj: &Value) -> Vec<(String, String)> {
    parse_entries(obj)
        .into_iter()
        .map(|e| (e.manager, e.operation))
        .collect()
}

fn no_defaults(_: &mut Value) {}

#[test]
fn fields_v1_round_trips() {
    let set: BTreeSet<Path> = [
        vec!["metadata".to_owned(), "labels".to_owned(), "a".to_owned()],
        vec!["spec".to_owned()],
    ]
    .into_iter()
    .collect();
    let v = to_fields_v1(&set);
    assert_eq!(
        v,
        json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {}})
    );
    assert_eq!(from_fields_v1(&v), set);
    assert_eq!(
        from_fields_v1(&json!({"f:spec": {".": {}, "f:x": {}}})).len(),
        1
    );
}

#[test]
fn updates_take_the_fields_they_change() {
    let old = json!({"metadata": {"name": "p"}, "spec": {"a": 1, "b": 2}});
    let mut created = old.clone();
    record_update(&mut created, None, "creator", Subresource::Main, "v1");
    let mut new = created.clone();
    new["spec"]["b"] = json!(3);
    new["metadata"]["labels"] = json!({"x": "y"});
    record_update(&mut new, Some(&created), "editor", Subresource::Main, "v1");
    let e = parse_entries(&new);
    let editor = e.iter().find(|e| e.manager == "editor").unwrap();
    assert!(
        editor
            .fields
            .contains(&vec!["spec".to_owned(), "b".to_owned()])
    );
    assert!(editor.fields.contains(&vec![
        "metadata".to_owned(),
        "labels".to_owned(),
        "x".to_owned()
    ]));
    let creator = e.iter().find(|e| e.manager == "creator").unwrap();
    assert_eq!(
        creator.fields,
        [vec!["spec".to_owned(), "a".to_owned()]]
            .into_iter()
            .collect()
    );
}

#[test]
fn apply_owns_removes_and_conflicts() {
    let cfg = |labels: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": labels}});
    let a = apply(
        None,
        cfg(json!({"a": "1", "b": "2"})),
        "mgr",
        false,
        Scope {
            sub: Subresource::Main,
            status_subresource: false,
        },
        "v1",
        &no_defaults,
    )
    .unwrap();
    assert_eq!(entries(&a), vec![("mgr".to_owned(), "Apply".to_owned())]);
    // Dropping `b` from the configuration removes it; `a` stays.
    let a = apply(
        Some(&a),
        cfg(json!({"a": "1"})),
        "mgr",
        false,
        Scope {
            sub: Subresource::Main,
            status_subresource: false,
        },
        "v1",
        &no_defaults,
    )
    .unwrap();
    assert_eq!(a["metadata"]["labels"], json!({"a": "1"}));
    // Another manager changes `a`: the first manager's re-apply with another value conflicts, unless forced.
    let mut edited = a.clone();
    edited["metadata"]["labels"]["a"] = json!("9");
    record_update(
        &mut edited,
        Some(&a),
        "kubectl-label",
        Subresource::Main,
        "v1",
    );
    let err = apply(
        Some(&edited),
        cfg(json!({"a": "1"})),
        "mgr",
        false,
        Scope {
            sub: Subresource::Main,
            status_subresource: false,
        },
        "v1",
        &no_defaults,
    )
    .unwrap_err();
    assert_eq!(err.code(), 409);
    assert!(
        err.to_string().contains("conflict with \"kubectl-label\""),
        "{err}"
    );
    // Agreeing with the current value is not a conflict (shared ownership).
    apply(
        Some(&edited),
        cfg(json!({"a": "9"})),
        "mgr",
        false,
        Scope {
            sub: Subresource::Main,
            status_subresource: false,
        },
        "v1",
        &no_defaults,
    )
    .unwrap();
    let forced = apply(
        Some(&edited),
        cfg(json!({"a": "1"})),
        "mgr",
        true,
        Scope {
            sub: Subresource::Main,
            status_subresource: false,
        },
        "v1",
        &no_defaults,
    )
    .unwrap();
    assert_eq!(forced["metadata"]["labels"]["a"], "1");
    assert!(
        !entries(&forced).iter().any(|(m, _)| m == "kubectl-label"),
        "ownership moved"
    );
}

#[test]
fn apply_to_status_touches_only_status() {
    let current =
        json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "g"}, "spec": {"a": 1}});
    let cfg = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "g", "labels": {"no": "x"}},
                     "spec": {"a": 2}, "status": {"conditions": [{"type": "Programmed", "status": "True"}]}});
    let out = apply(
        Some(&current),
        cfg,
        "ctl",
        false,
        Scope {
            sub: Subresource::Status,
            status_subresource: true,
        },
        "v1",
        &no_defaults,
    )
    .unwrap();
    assert_eq!(out["spec"]["a"], 1);
    assert!(out.pointer("/metadata/labels").is_none());
    assert_eq!(out["status"]["conditions"][0]["type"], "Programmed");
    let e = parse_entries(&out);
    assert_eq!(e[0].subresource, "status");
}
