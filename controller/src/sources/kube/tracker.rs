//! The pure part of the Kubernetes source: one kind's kube-rs watcher events become source [`Event`]s.
//!
//! A watcher (re)lists with `Init`, `InitApply`… and `InitDone`; an object that was applied before but is missing
//! from a new listing was deleted while nobody watched, so `InitDone` reports it as `Delete`. A kind whose CRD is
//! not installed counts as an empty listing. Objects are converted by [`parse_document`], the manifest source's
//! parser, so both sources give the controller the same objects.

use std::collections::BTreeSet;

use ::kube::api::DynamicObject;
use ::kube::runtime::watcher;

use crate::sources::{Document, Event, Kind, Object, ObjectKey, parse_document};

/// What one kind's watcher has reported so far.
#[derive(Debug)]
pub struct KindTracker {
    kind: Kind,
    /// `apiVersion` the kind is watched at (the objects are read at that version).
    api_version: String,
    /// The kind's name as the API spells it (`HTTPRoute`).
    kind_name: String,
    /// Keys applied downstream and not deleted since.
    known: BTreeSet<ObjectKey>,
    /// Keys seen since the last `Init`, while a listing is under way.
    listing: Option<BTreeSet<ObjectKey>>,
    /// The first listing (or "not installed") has completed.
    synced: bool,
    /// Objects skipped because they did not parse (for logs and tests).
    rejected: u64,
}

impl KindTracker {
    pub fn new(kind: Kind, api_version: &str, kind_name: &str) -> Self {
        KindTracker {
            kind,
            api_version: api_version.to_owned(),
            kind_name: kind_name.to_owned(),
            known: BTreeSet::new(),
            listing: None,
            synced: false,
            rejected: 0,
        }
    }

    /// The first listing is complete (possibly as "not installed").
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// How many objects currently exist downstream.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Objects skipped so far because they were not valid.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// The source events for one watcher event.
    pub fn on_event(&mut self, ev: watcher::Event<DynamicObject>) -> Vec<Event> {
        match ev {
            watcher::Event::Init => {
                self.listing = Some(BTreeSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(obj) => {
                let key = self.key_of(&obj);
                if let Some(listing) = &mut self.listing {
                    listing.insert(key.clone());
                }
                self.apply(key, obj).into_iter().collect()
            }
            watcher::Event::Apply(obj) => {
                let key = self.key_of(&obj);
                self.apply(key, obj).into_iter().collect()
            }
            watcher::Event::Delete(obj) => {
                let key = self.key_of(&obj);
                if self.known.remove(&key) {
                    vec![Event::Delete(key)]
                } else {
                    Vec::new()
                }
            }
            watcher::Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                self.finish_listing(&listed)
            }
        }
    }

    /// The kind is not served (its CRD is not installed): an empty listing.
    pub fn not_installed(&mut self) -> Vec<Event> {
        self.listing = None;
        self.finish_listing(&BTreeSet::new())
    }

    fn finish_listing(&mut self, listed: &BTreeSet<ObjectKey>) -> Vec<Event> {
        self.synced = true;
        let gone: Vec<ObjectKey> = self.known.difference(listed).cloned().collect();
        gone.into_iter()
            .map(|key| {
                self.known.remove(&key);
                Event::Delete(key)
            })
            .collect()
    }

    /// `Apply` for a valid object. An invalid one is logged and skipped; the last good version (if any) stays.
    fn apply(&mut self, key: ObjectKey, obj: DynamicObject) -> Option<Event> {
        match self.convert(obj) {
            Ok(o) => {
                self.known.insert(key);
                Some(Event::Apply(o))
            }
            Err(reason) => {
                self.rejected += 1;
                tracing::error!(object = %key, error = %reason, kept.last_good = self.known.contains(&key),
                    "invalid object from the Kubernetes API; skipped");
                None
            }
        }
    }

    fn key_of(&self, obj: &DynamicObject) -> ObjectKey {
        ObjectKey {
            kind: self.kind,
            namespace: if self.kind.namespaced() {
                obj.metadata
                    .namespace
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "default".to_owned())
            } else {
                String::new()
            },
            name: obj.metadata.name.clone().unwrap_or_default(),
        }
    }

    /// The typed object, through the manifest source's parser. `apiVersion`/`kind` are set from the watched
    /// resource (list items may lack them) and `managedFields` are dropped (the controller never reads them).
    fn convert(&self, obj: DynamicObject) -> Result<Object, String> {
        let mut value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
        let Some(map) = value.as_object_mut() else {
            return Err("not a JSON object".to_owned());
        };
        map.insert("apiVersion".into(), self.api_version.clone().into());
        map.insert("kind".into(), self.kind_name.clone().into());
        if let Some(meta) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("managedFields");
        }
        let yaml = serde_yaml::to_value(&value).map_err(|e| e.to_string())?;
        match parse_document(yaml).map_err(|e| e.to_string())? {
            Document::Object(o) if o.kind() == self.kind => Ok(o),
            Document::Object(o) => Err(format!(
                "read as {:?}, watched as {:?}",
                o.kind(),
                self.kind
            )),
            Document::Unknown(api_version, kind) => Err(format!(
                "{api_version} {kind} is not a kind the controller reads"
            )),
            Document::Empty => Err("empty object".to_owned()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "n", "resourceVersion": "1",
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            "status": {"podIP": "10.0.0.1"}
        }))
        .unwrap()
    }

    fn tracker() -> KindTracker {
        KindTracker::new(Kind::Pod, "v1", "Pod")
    }

    fn summary(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Apply(o) => format!("apply {}", o.key()),
                Event::Delete(k) => format!("delete {k}"),
                Event::InitDone => "init-done".to_owned(),
            })
            .collect()
    }

    fn list(t: &mut KindTracker, objs: Vec<DynamicObject>) -> Vec<String> {
        let mut out = t.on_event(watcher::Event::Init);
        for o in objs {
            out.extend(t.on_event(watcher::Event::InitApply(o)));
        }
        out.extend(t.on_event(watcher::Event::InitDone));
        summary(&out)
    }

    #[test]
    fn listing_applies_and_a_relist_deletes_what_disappeared() {
        let mut t = tracker();
        assert!(!t.synced());
        assert_eq!(
            list(&mut t, vec![pod("a", json!("n1")), pod("b", json!("n1"))]),
            ["apply Pod/n/a", "apply Pod/n/b"]
        );
        assert!(t.synced());
        assert_eq!(t.len(), 2);
        // A watch event, then a re-list (e.g. after 410 Gone) where b is gone and c appeared.
        let ev = t.on_event(watcher::Event::Apply(pod("a", json!("n2"))));
        assert_eq!(summary(&ev), ["apply Pod/n/a"]);
        assert_eq!(
            list(&mut t, vec![pod("a", json!("n2")), pod("c", json!("n1"))]),
            ["apply Pod/n/a", "apply Pod/n/c", "delete Pod/n/b"]
        );
        // A delete of something known, then of something never applied.
        let ev = t.on_event(watcher::Event::Delete(pod("c", json!("n1"))));
        assert_eq!(summary(&ev), ["delete Pod/n/c"]);
        assert!(
            t.on_event(watcher::Event::Delete(pod("z", json!("n1"))))
                .is_empty()
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn objects_are_parsed_like_manifests() {
        let mut t = tracker();
        t.on_event(watcher::Event::Init);
        let ev = t.on_event(watcher::Event::InitApply(pod("a", json!("n1"))));
        let [Event::Apply(Object::Pod(p))] = ev.as_slice() else {
            panic!("{ev:?}")
        };
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        assert!(p.metadata.managed_fields.is_none(), "managedFields dropped");
        assert_eq!(p.metadata.resource_version.as_deref(), Some("1"));
        // A cluster-scoped kind has no namespace; a CRD kind is read at the watched version.
        let mut ns = KindTracker::new(Kind::Namespace, "v1", "Namespace");
        let obj = serde_json::from_value(json!({"metadata": {"name": "demo"}})).unwrap();
        assert_eq!(
            summary(&ns.on_event(watcher::Event::Apply(obj))),
            ["apply Namespace/demo"]
        );
        let mut ap = KindTracker::new(
            Kind::AuthorizationPolicy,
            "security.istio.io/v1",
            "AuthorizationPolicy",
        );
        let obj = serde_json::from_value(json!({
            "apiVersion": "security.istio.io/v1beta1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "deny", "namespace": "n"}, "spec": {"action": "DENY"}
        }))
        .unwrap();
        assert_eq!(
            summary(&ap.on_event(watcher::Event::Apply(obj))),
            ["apply AuthorizationPolicy/n/deny"]
        );
    }

    #[test]
    fn an_invalid_object_is_skipped_and_keeps_its_last_good_state() {
        let mut t = tracker();
        list(&mut t, vec![pod("a", json!("n1"))]);
        // nodeName must be a string: the change is skipped, a stays known.
        assert!(
            t.on_event(watcher::Event::Apply(pod("a", json!([1]))))
                .is_empty()
        );
        assert_eq!(t.rejected(), 1);
        // Still invalid in a re-list: neither applied nor deleted; b goes on.
        assert_eq!(
            list(&mut t, vec![pod("a", json!([1])), pod("b", json!("n1"))]),
            ["apply Pod/n/b"]
        );
        assert_eq!(t.len(), 2);
        // A new object that never parsed is not known, so its delete is silent.
        assert!(
            t.on_event(watcher::Event::Apply(pod("x", json!({}))))
                .is_empty()
        );
        assert!(
            t.on_event(watcher::Event::Delete(pod("x", json!({}))))
                .is_empty()
        );
    }

    #[test]
    fn a_missing_crd_is_an_empty_listing() {
        let mut t = KindTracker::new(
            Kind::AuthorizationPolicy,
            "security.istio.io/v1",
            "AuthorizationPolicy",
        );
        assert!(t.not_installed().is_empty());
        assert!(t.synced());
        let obj: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "n"}, "spec": {}
        }))
        .unwrap();
        list(&mut t, vec![obj]);
        assert_eq!(t.len(), 1);
        // The CRD is removed again: its objects are gone.
        assert_eq!(
            summary(&t.not_installed()),
            ["delete AuthorizationPolicy/n/p"]
        );
        assert!(t.is_empty());
    }

    #[test]
    fn an_interrupted_listing_restarts_cleanly() {
        let mut t = tracker();
        list(&mut t, vec![pod("a", json!("n1")), pod("b", json!("n1"))]);
        // Init, part of a listing, then a fresh Init (the list failed and was retried).
        t.on_event(watcher::Event::Init);
        t.on_event(watcher::Event::InitApply(pod("a", json!("n1"))));
        assert_eq!(
            list(&mut t, vec![pod("b", json!("n1"))]),
            ["apply Pod/n/b", "delete Pod/n/a"]
        );
    }
}
