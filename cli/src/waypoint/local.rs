//! The local mesh as `ambit waypoint`'s back end. The mesh's API server is its manifest directory (the one given
//! to `ambit local up -f`, recorded in `state.json`): the supervisor re-reads it within a second of a change and
//! hands it to the controller. So `apply` writes the Gateway there and `delete` removes it; the computed status
//! comes from the controller's `/debug/status` (port 15014 inside the mesh's network, so it needs root).
//!
//! Where an object goes: an object already defined in one of the directory's files is rewritten in place, that
//! document only (the other documents of the file stay byte for byte; the rewritten one loses its comments).
//! Otherwise it goes to an Ambit-owned file, `ambit-waypoint-<ns>-<name>.yaml` for a Gateway and
//! `ambit-namespace-<ns>.yaml` for a Namespace. Never a second copy: when two files define one object, both the
//! supervisor and the controller keep only one of them, wholly (by file name order), so a copy that adds a label
//! would silently drop the other's labels, or be dropped itself. `delete` removes Ambit-owned files only; a
//! waypoint the user wrote into their own file is theirs to remove.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::view::{self, Binding};
use super::{Gateway, WaypointError, WaypointMesh};

/// Reads the controller's `/debug/status` for a kind (and namespace): `<kind>/<ns>/<name>` → status.
pub type StatusFetch = Box<dyn Fn(&str, Option<&str>) -> Result<Map<String, Value>, String>>;

pub struct LocalMesh {
    manifests: PathBuf,
    status: StatusFetch,
}

/// One document of a manifest file: its text (with the `---` line before it) and, when it is an object, the
/// object.
struct Segment {
    text: String,
    object: Option<Value>,
}

struct ManifestFile {
    path: PathBuf,
    segments: Vec<Segment>,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> WaypointError {
    move |source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            WaypointError::Mesh(format!(
                "{what}: {source}: the local mesh's manifest directory belongs to whoever started it; run as them (sudo)"
            ))
        } else {
            WaypointError::Io { what, source }
        }
    }
}

fn meta<'a>(v: &'a Value, field: &str) -> &'a str {
    v["metadata"][field].as_str().unwrap_or_default()
}

fn namespace_of(v: &Value) -> &str {
    match meta(v, "namespace") {
        "" => "default",
        ns => ns,
    }
}

/// Splits at `---` lines, keeping every byte, so a file can be written back with one document changed.
fn segments(text: &str) -> Vec<Segment> {
    let mut out: Vec<String> = vec![String::new()];
    for line in text.split_inclusive('\n') {
        let t = line.trim_end();
        if (t == "---" || t.starts_with("--- ")) && out.last().is_some_and(|s| !s.is_empty()) {
            out.push(String::new());
        }
        if let Some(last) = out.last_mut() {
            last.push_str(line);
        }
    }
    out.into_iter()
        .map(|text| {
            let object = serde_yaml::from_str::<serde_yaml::Value>(&text)
                .ok()
                .and_then(|v| serde_json::to_value(v).ok())
                .filter(Value::is_object);
            Segment { text, object }
        })
        .collect()
}

impl ManifestFile {
    fn read(path: &Path) -> Result<ManifestFile, WaypointError> {
        let text = std::fs::read_to_string(path).map_err(io(format!("read {}", path.display())))?;
        Ok(ManifestFile {
            path: path.to_owned(),
            segments: segments(&text),
        })
    }

    fn find(&self, kind: &str, ns: &str, name: &str) -> Option<usize> {
        self.segments.iter().rposition(|s| {
            s.object.as_ref().is_some_and(|o| {
                o["kind"] == kind
                    && meta(o, "name") == name
                    && (kind == "Namespace" || namespace_of(o) == ns)
            })
        })
    }

    /// Replaces document `i` with `object` and writes the file (to a hidden temporary file, then renamed, so the
    /// supervisor never reads half of it).
    fn replace(&mut self, i: usize, object: &Value) -> Result<(), WaypointError> {
        let json = self.path.extension().is_some_and(|e| e == "json");
        let body = if json {
            serde_json::to_string_pretty(object)
                .map(|s| s + "\n")
                .map_err(|e| e.to_string())
        } else {
            serde_yaml::to_string(object).map_err(|e| e.to_string())
        }
        .map_err(|e| WaypointError::Mesh(format!("cannot write {}: {e}", self.path.display())))?;
        let seg = &mut self.segments[i];
        let separator = seg
            .text
            .lines()
            .next()
            .filter(|l| l.trim_end() == "---" || l.starts_with("--- "))
            .map(|l| format!("{l}\n"))
            .unwrap_or_default();
        seg.text = format!("{separator}{body}");
        let text: String = self.segments.iter().map(|s| s.text.as_str()).collect();
        write_atomically(&self.path, &text)
    }
}

fn write_atomically(path: &Path, text: &str) -> Result<(), WaypointError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.ambit-tmp"));
    std::fs::write(&tmp, text).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("write {}", path.display())))
}

/// The Ambit-owned file of a waypoint Gateway.
pub fn gateway_file(ns: &str, name: &str) -> String {
    format!("ambit-waypoint-{ns}-{name}.yaml")
}

/// The Ambit-owned file of a Namespace the manifests do not define.
pub fn namespace_file(ns: &str) -> String {
    format!("ambit-namespace-{ns}.yaml")
}

impl LocalMesh {
    /// The running local mesh of `local_dir` (its `state.json`).
    pub fn open(local_dir: &Path) -> Result<LocalMesh, WaypointError> {
        let state = crate::local::State::load(local_dir).map_err(|e| {
            WaypointError::Mesh(format!(
                "{e:#}: start one with `sudo ambit local up -f DIR` (or point --local-dir at it)"
            ))
        })?;
        Ok(LocalMesh::new(state.manifests, Box::new(fetch_status)))
    }

    /// A mesh whose manifests are in `manifests`, with the controller's status from `status`.
    pub fn new(manifests: PathBuf, status: StatusFetch) -> LocalMesh {
        LocalMesh { manifests, status }
    }

    pub fn manifests(&self) -> &Path {
        &self.manifests
    }

    fn files(&self) -> Result<Vec<ManifestFile>, WaypointError> {
        let paths = crate::local::manifests::files(&self.manifests)
            .map_err(io(format!("read {}", self.manifests.display())))?;
        paths.iter().map(|p| ManifestFile::read(p)).collect()
    }

    fn objects(&self) -> Result<Vec<Value>, WaypointError> {
        Ok(self
            .files()?
            .into_iter()
            .flat_map(|f| f.segments.into_iter().filter_map(|s| s.object))
            .collect())
    }

    /// The file and document that define `kind ns/name` (the last one, which wins), if any.
    fn locate(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Result<Option<(ManifestFile, usize)>, WaypointError> {
        let mut found = None;
        for f in self.files()? {
            if let Some(i) = f.find(kind, ns, name) {
                found = Some((f, i));
            }
        }
        Ok(found)
    }
}

/// The controller's `/debug/status` in the local mesh's network.
fn fetch_status(kind: &str, namespace: Option<&str>) -> Result<Map<String, Value>, String> {
    use crate::local::net::{GATEWAY, NET_NS};
    if !nix::unistd::Uid::effective().is_root() {
        return Err(
            "the controller's status is inside the mesh's network: run as root (sudo) to see it"
                .into(),
        );
    }
    let mut path = format!("/debug/status?kind={kind}");
    if let Some(ns) = namespace {
        path.push_str(&format!("&namespace={ns}"));
    }
    let addr = SocketAddr::from((GATEWAY, 15014));
    let (code, body) = crate::local::http::get_in(NET_NS, addr, &path).ok_or_else(|| {
        format!("the controller at {addr} did not answer: is `ambit local up` running?")
    })?;
    if code != 200 {
        return Err(format!("the controller answered {code} to {path}"));
    }
    match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(format!("{path} did not return a JSON object")),
    }
}

impl WaypointMesh for LocalMesh {
    fn gateways(
        &self,
        namespace: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>), WaypointError> {
        let mut gws: Vec<Value> = self
            .objects()?
            .into_iter()
            .filter(|o| o["kind"] == "Gateway")
            .filter(|o| namespace.is_none_or(|ns| namespace_of(o) == ns))
            .collect();
        match (self.status)("gateway", namespace) {
            Ok(status) => {
                for gw in &mut gws {
                    let key = format!("gateway/{}/{}", namespace_of(gw), meta(gw, "name"));
                    if let Some(s) = status.get(&key) {
                        crate::local::get::merge_status(gw, s);
                    }
                }
                Ok((gws, None))
            }
            Err(why) => Ok((gws, Some(why))),
        }
    }

    fn namespace_labels(
        &self,
        ns: &str,
    ) -> Result<Option<BTreeMap<String, String>>, WaypointError> {
        let objects = self.objects()?;
        let declared = objects
            .iter()
            .rev()
            .find(|o| o["kind"] == "Namespace" && meta(o, "name") == ns);
        if let Some(n) = declared {
            return Ok(Some(
                n["metadata"]["labels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect(),
            ));
        }
        // As in the local runtime, a namespace that objects use exists, without labels; `default` always does.
        let used = ns == "default"
            || objects
                .iter()
                .any(|o| o["kind"] != "Namespace" && namespace_of(o) == ns);
        Ok(used.then(BTreeMap::new))
    }

    fn apply_gateway(&self, gw: &Gateway) -> Result<String, WaypointError> {
        let owned = self.manifests.join(gateway_file(&gw.namespace, &gw.name));
        match self.locate("Gateway", &gw.namespace, &gw.name)? {
            Some((mut file, i)) if file.path != owned => {
                // The user's own Gateway: set what `apply` manages, keep the rest.
                let mut obj = file.segments[i].object.clone().unwrap_or_default();
                gw.merge_into(&mut obj);
                file.replace(i, &obj)?;
                Ok(file.path.display().to_string())
            }
            _ => {
                write_atomically(&owned, &gw.to_yaml())?;
                Ok(owned.display().to_string())
            }
        }
    }

    fn label_namespace(&self, ns: &str, key: &str, value: &str) -> Result<String, WaypointError> {
        match self.locate("Namespace", ns, ns)? {
            Some((mut file, i)) => {
                let mut obj = file.segments[i].object.clone().unwrap_or_default();
                let meta = obj.as_object_mut().map(|o| {
                    o.entry("metadata")
                        .or_insert_with(|| Value::Object(Map::new()))
                });
                if let Some(Value::Object(m)) = meta {
                    let labels = m
                        .entry("labels")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !labels.is_object() {
                        *labels = Value::Object(Map::new());
                    }
                    labels[key] = Value::String(value.to_owned());
                }
                file.replace(i, &obj)?;
                Ok(file.path.display().to_string())
            }
            None => {
                let path = self.manifests.join(namespace_file(ns));
                let text = format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata:\n  labels:\n    {key}: {}\n  name: {ns}\n",
                    super::yaml_scalar(value)
                );
                write_atomically(&path, &text)?;
                Ok(path.display().to_string())
            }
        }
    }

    fn delete_gateway(&self, ns: &str, name: &str) -> Result<bool, WaypointError> {
        let owned = self.manifests.join(gateway_file(ns, name));
        match self.locate("Gateway", ns, name)? {
            None => Ok(false),
            Some((file, _)) if file.path == owned => {
                std::fs::remove_file(&owned).map_err(io(format!("remove {}", owned.display())))?;
                Ok(true)
            }
            Some((file, _)) => Err(WaypointError::Mesh(format!(
                "waypoint {ns}/{name} is defined in {}, which ambit did not write: remove it from that file",
                file.path.display()
            ))),
        }
    }

    fn bindings(&self, namespace: Option<&str>) -> Result<Vec<Binding>, String> {
        let mut all = Map::new();
        for kind in ["service", "serviceentry", "pod"] {
            all.extend((self.status)(kind, namespace)?);
        }
        Ok(view::bindings(&all))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_keep_every_byte() {
        let text = "# head\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n# two\nkind: X\n--- \n\n";
        let s = segments(text);
        assert_eq!(s.iter().map(|s| s.text.as_str()).collect::<String>(), text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].object.as_ref().unwrap()["metadata"]["name"], "a");
        assert_eq!(s[1].object.as_ref().unwrap()["kind"], "X");
        assert!(s[2].object.is_none());
    }
}
