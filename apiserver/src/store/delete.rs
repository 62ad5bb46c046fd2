//! Deletion: finalizers, `ownerReferences` garbage collection, namespace termination and CRD removal.
//!
//! Simplified against the real server: garbage collection runs synchronously inside the delete (not in a
//! controller), `Foreground` deletes the dependents first and then the owner instead of waiting with a
//! `foregroundDeletion` finalizer, and pods are deleted at once (no grace period: no kubelet confirms).

use std::sync::Arc;

use serde_json::{Value, json};

use super::{EventType, Inner, WriteCtx};
use crate::error::ApiError;
use crate::meta;
use crate::resources::{ResourceType, TypeKey};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

impl Propagation {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        match s {
            "Background" => Ok(Propagation::Background),
            "Foreground" => Ok(Propagation::Foreground),
            "Orphan" => Ok(Propagation::Orphan),
            other => Err(ApiError::BadRequest(format!(
                "propagationPolicy: Unsupported value: {other:?}: supported values: \"Orphan\", \"Background\", \"Foreground\""
            ))),
        }
    }
}

/// `DeleteOptions` (body or query).
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub propagation: Option<Propagation>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

/// What a delete did.
#[derive(Debug)]
pub enum Deleted {
    /// Removed; the last state.
    Gone(Arc<Value>),
    /// Marked for deletion, waiting on finalizers (or on a namespace's content).
    Pending(Arc<Value>),
}

impl Inner {
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        self.check_served(rt)?;
        let old = self.get(rt, ns, name)?;
        if let Some(uid) = &opts.precondition_uid
            && uid != meta::uid(&old)
        {
            return Err(ApiError::conflict(
                &rt.group,
                &rt.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta::uid(&old)
                ),
            ));
        }
        if let Some(rv) = &opts.precondition_rv
            && rv != meta::resource_version(&old)
        {
            return Err(ApiError::stale(&rt.group, &rt.plural, name));
        }
        if opts.dry_run {
            return Ok(Deleted::Gone(old));
        }
        let propagation = opts.propagation.unwrap_or_default();
        if rt.key() == TypeKey::namespaces() {
            return Ok(self.terminate_namespace(rt, old));
        }
        if propagation == Propagation::Foreground {
            self.collect_dependents(meta::uid(&old), Propagation::Foreground);
        }
        if !meta::finalizers(&old).is_empty() {
            if propagation == Propagation::Orphan {
                self.orphan_dependents(meta::uid(&old));
            }
            if meta::is_deleting(&old) {
                return Ok(Deleted::Pending(old));
            }
            let mut marked = (*old).clone();
            if let Some(m) = meta::meta_mut(&mut marked) {
                m.insert(
                    "deletionTimestamp".into(),
                    Value::String(meta::now_rfc3339()),
                );
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
            }
            let obj = self.commit(&rt.key(), EventType::Modified, marked, Some(old));
            return Ok(Deleted::Pending(obj));
        }
        let obj = (*old).clone();
        Ok(Deleted::Gone(self.remove_with(rt, obj, propagation)))
    }

    /// Removes an object for good (its finalizers are done), then what hangs on it.
    pub(super) fn remove(
        &mut self,
        rt: &ResourceType,
        obj: Value,
        _old: Option<Arc<Value>>,
    ) -> Arc<Value> {
        self.remove_with(rt, obj, Propagation::Background)
    }

    fn remove_with(
        &mut self,
        rt: &ResourceType,
        obj: Value,
        propagation: Propagation,
    ) -> Arc<Value> {
        let gone = self.commit(&rt.key(), EventType::Deleted, obj, None);
        let uid = meta::uid(&gone).to_owned();
        if rt.key() == TypeKey::crds()
            && let Ok(crd_rt) = crate::resources::crd_resource_type(&gone)
        {
            let objs: Vec<Arc<Value>> = self.objects_of(&crd_rt.key()).cloned().collect();
            for o in objs {
                self.remove_with(&crd_rt, (*o).clone(), Propagation::Background);
            }
            self.objects.remove(&crd_rt.key());
            self.registry.unregister(&crd_rt.key());
        }
        match propagation {
            Propagation::Orphan => self.orphan_dependents(&uid),
            _ => self.collect_dependents(&uid, Propagation::Background),
        }
        let ns = meta::namespace(&gone).to_owned();
        if rt.namespaced && !ns.is_empty() {
            self.finish_namespace_if_empty(&ns);
        }
        gone
    }

    /// Garbage collection: a dependent whose owners are all gone is deleted; one that still has a live owner
    /// only loses the reference to `owner_uid`.
    fn collect_dependents(&mut self, owner_uid: &str, propagation: Propagation) {
        let Some(deps) = self.dependents.get(owner_uid).cloned() else {
            return;
        };
        for (key, (ns, name)) in deps {
            let (Some(dep), Some(rt)) = (
                self.find(&key, &ns, &name).cloned(),
                self.registry.get(&key).cloned(),
            ) else {
                continue;
            };
            let alive_owner = meta::owner_uids(&dep)
                .iter()
                .any(|u| u != owner_uid && self.by_uid(u).is_some_and(|o| !meta::is_deleting(o)));
            if alive_owner {
                self.drop_owner_ref(&rt, &dep, owner_uid);
            } else if !meta::is_deleting(&dep) {
                let opts = DeleteOptions {
                    propagation: Some(propagation),
                    ..Default::default()
                };
                // The dependent may already be gone through another path of the cascade.
                let _ = self.delete(&rt, &ns, &name, &opts);
            }
        }
    }

    fn orphan_dependents(&mut self, owner_uid: &str) {
        let Some(deps) = self.dependents.get(owner_uid).cloned() else {
            return;
        };
        for (key, (ns, name)) in deps {
            if let (Some(dep), Some(rt)) = (
                self.find(&key, &ns, &name).cloned(),
                self.registry.get(&key).cloned(),
            ) {
                self.drop_owner_ref(&rt, &dep, owner_uid);
            }
        }
    }

    fn drop_owner_ref(&mut self, rt: &ResourceType, dep: &Arc<Value>, owner_uid: &str) {
        let mut new = (**dep).clone();
        if let Some(m) = meta::meta_mut(&mut new)
            && let Some(Value::Array(refs)) = m.get_mut("ownerReferences")
        {
            refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid));
            if refs.is_empty() {
                m.remove("ownerReferences");
            }
        }
        let (ns, name) = (meta::namespace(dep).to_owned(), meta::name(dep).to_owned());
        // Cannot conflict: no resourceVersion precondition, the object exists (looked up under the same lock).
        let _ = self.update(
            rt,
            &ns,
            &name,
            new,
            super::Subresource::Main,
            &WriteCtx::new("garbage-collector"),
        );
    }

    /// Namespace deletion: mark it `Terminating`, delete everything in it, and remove it once it is empty
    /// (objects with finalizers keep it terminating until they go).
    fn terminate_namespace(&mut self, rt: &ResourceType, old: Arc<Value>) -> Deleted {
        let name = meta::name(&old).to_owned();
        let current = if meta::is_deleting(&old) {
            old
        } else {
            let mut marked = (*old).clone();
            if let Some(m) = meta::meta_mut(&mut marked) {
                m.insert(
                    "deletionTimestamp".into(),
                    Value::String(meta::now_rfc3339()),
                );
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
            }
            marked["status"] = json!({"phase": "Terminating"});
            self.commit(&rt.key(), EventType::Modified, marked, Some(old))
        };
        let types: Vec<ResourceType> = self
            .registry
            .all()
            .filter(|t| t.namespaced)
            .cloned()
            .collect();
        for t in types {
            let names: Vec<String> = self
                .objects
                .get(&t.key())
                .map(|m| {
                    m.range((name.clone(), String::new())..)
                        .take_while(|((n, _), _)| *n == name)
                        .map(|((_, obj), _)| obj.clone())
                        .collect()
                })
                .unwrap_or_default();
            for obj in names {
                // Already gone through garbage collection of an earlier object: fine.
                let _ = self.delete(&t, &name, &obj, &DeleteOptions::default());
            }
        }
        match self.find(&TypeKey::namespaces(), "", &name).cloned() {
            Some(ns) if self.namespace_is_empty(&name) => Deleted::Gone(self.remove_namespace(ns)),
            Some(ns) => Deleted::Pending(ns),
            None => Deleted::Gone(current),
        }
    }

    fn namespace_is_empty(&self, ns: &str) -> bool {
        self.objects.values().all(|m| {
            m.range((ns.to_owned(), String::new())..)
                .next()
                .is_none_or(|((n, _), _)| n != ns)
        })
    }

    fn finish_namespace_if_empty(&mut self, ns: &str) {
        if let Some(n) = self.find(&TypeKey::namespaces(), "", ns).cloned()
            && meta::is_deleting(&n)
            && self.namespace_is_empty(ns)
        {
            self.remove_namespace(n);
        }
    }

    fn remove_namespace(&mut self, ns: Arc<Value>) -> Arc<Value> {
        let mut obj = (*ns).clone();
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("finalizers");
        }
        self.commit(&TypeKey::namespaces(), EventType::Deleted, obj, None)
    }
}
