//! A minimal OpenAPI v3 surface, only so that `kubectl apply` finds that the server takes the `fieldValidation`
//! query parameter (server-side field validation) instead of downloading schemas for client-side validation.
//! There are no schemas: `kubectl explain` does not work, and the server accepts unknown fields.

use serde_json::{Map, Value, json};

use crate::resources::Registry;

const HASH: &str = concat!("ambit-", env!("CARGO_PKG_VERSION"));

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: the built-in group-versions (custom resources fall back to the CRD's document in kubectl).
pub fn root(reg: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, versions) in reg.groups() {
        for v in versions {
            if reg
                .in_group_version(&group, &v)
                .any(|t| reg.is_builtin(&t.key()))
            {
                let p = gv_path(&group, &v);
                paths.insert(
                    p.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={HASH}")}),
                );
            }
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<gv>`: one PATCH operation per kind, declaring `fieldValidation`.
pub fn group_version(reg: &Registry, gv: &str) -> Option<Value> {
    let (group, version) = match gv.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => (String::new(), (*v).to_owned()),
        ["apis", g, v] => ((*g).to_owned(), (*v).to_owned()),
        _ => return None,
    };
    let mut paths = Map::new();
    for t in reg
        .in_group_version(&group, &version)
        .filter(|t| reg.is_builtin(&t.key()))
    {
        let path = if t.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}/{{name}}",
                gv_path(&group, &version),
                t.plural
            )
        } else {
            format!("/{}/{}/{{name}}", gv_path(&group, &version), t.plural)
        };
        let param = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
        paths.insert(
            path,
            json!({"patch": {
                "operationId": format!("patch{}", t.kind),
                "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation"), param("force")],
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": t.kind},
            }}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", crate::discovery::SERVER_MAJOR, crate::discovery::SERVER_MINOR)},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// `/openapi/v2`: an empty Swagger document (no definitions, so clients skip client-side validation), as the
/// gnostic protobuf older kubectl asks for, or as JSON.
pub fn v2(protobuf: bool) -> (Vec<u8>, &'static str) {
    let version = format!(
        "v{}.{}.0",
        crate::discovery::SERVER_MAJOR,
        crate::discovery::SERVER_MINOR
    );
    if !protobuf {
        let doc = json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": version}, "paths": {}});
        return (
            serde_json::to_vec(&doc).unwrap_or_default(),
            "application/json",
        );
    }
    fn field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
        out.push(tag << 3 | 2);
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    let mut info = Vec::new();
    field(&mut info, 1, b"Kubernetes");
    field(&mut info, 2, version.as_bytes());
    let mut doc = Vec::new();
    field(&mut doc, 1, b"2.0");
    field(&mut doc, 2, &info);
    field(&mut doc, 8, &[]);
    (
        doc,
        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_protobuf_is_a_document_with_swagger_info_and_paths() {
        let (doc, ct) = v2(true);
        assert!(ct.contains("protobuf"));
        assert_eq!(&doc[..5], b"\x0a\x032.0");
        assert_eq!(doc[5], 0x12);
        assert_eq!(doc[6] as usize, doc.len() - 9);
        assert_eq!(&doc[doc.len() - 2..], &[0x42, 0x00]);
        let (json, _) = v2(false);
        assert!(
            String::from_utf8(json)
                .unwrap()
                .contains("\"swagger\":\"2.0\"")
        );
    }

    #[test]
    fn root_lists_builtin_group_versions_with_patch_operations() {
        let reg = Registry::default();
        let root = root(&reg);
        assert!(
            root["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/api/v1?hash=")
        );
        assert!(root["paths"].get("apis/apps/v1").is_some());
        let doc = group_version(&reg, "api/v1").unwrap();
        let op = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(
            op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        assert!(doc["paths"].get("/api/v1/nodes/{name}").is_some());
        assert!(group_version(&reg, "apis/nope/v1").is_none());
    }
}
