//! The object store: every object in memory, one global `resourceVersion` counter, and the history of changes
//! that watches replay. One writer at a time (a mutex held only for synchronous work, never across `.await`);
//! each committed change is broadcast to the live watches while the lock is held, so they see changes in order.

mod defaults;
mod delete;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};

use crate::error::ApiError;
use crate::managed;
use crate::meta;
use crate::resources::{Registry, ResourceType, TypeKey};
use crate::selector::Selectors;

pub use delete::{DeleteOptions, Deleted, Propagation};

/// (namespace, name); the namespace is empty for cluster-scoped objects.
pub type ObjKey = (String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change. `old` is the object before a modification, so that a watch with a selector can turn a
/// modification that moves an object out of (into) its selection into DELETED (ADDED).
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub key: TypeKey,
    pub etype: EventType,
    pub object: Arc<Value>,
    pub old: Option<Arc<Value>>,
}

/// Which part of an object a write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subresource {
    Main,
    Status,
}

/// Who writes, and how: the field manager recorded in `managedFields`.
#[derive(Clone, Debug)]
pub struct WriteCtx {
    pub manager: String,
    pub dry_run: bool,
    /// The write is a server-side apply that already computed the object's `managedFields`.
    pub applied: bool,
}

impl WriteCtx {
    pub fn new(manager: &str) -> Self {
        WriteCtx {
            manager: manager.to_owned(),
            dry_run: false,
            applied: false,
        }
    }
}

/// Every object with the current version, for the snapshot.
pub type Dump = (u64, Vec<(TypeKey, Vec<Arc<Value>>)>);

/// Tunables of the store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Events kept for watches to resume from; older versions get `410 Expired`.
    pub history_limit: usize,
    /// Where Service cluster IPs are allocated from (first three octets + a /16 or /24 base), e.g. `10.96.0.0/16`.
    pub service_cidr: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            history_limit: 10_000,
            service_cidr: "10.96.0.0/16".into(),
        }
    }
}

/// The store's state. Reached only through [`Store::lock`].
pub struct Inner {
    rv: u64,
    pub registry: Registry,
    objects: BTreeMap<TypeKey, BTreeMap<ObjKey, Arc<Value>>>,
    history: VecDeque<Arc<Event>>,
    /// Every event with a version above this is still in `history`.
    compacted: u64,
    config: StoreConfig,
    events: broadcast::Sender<Arc<Event>>,
    dirty: Arc<Notify>,
    /// uid → where the object is.
    uids: HashMap<String, (TypeKey, ObjKey)>,
    /// owner uid → the objects whose `ownerReferences` name it.
    dependents: HashMap<String, BTreeSet<(TypeKey, ObjKey)>>,
}

/// The shared handle.
pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Event>>,
    dirty: Arc<Notify>,
}

const BROADCAST_CAPACITY: usize = 8192;

impl Store {
    pub fn new(config: StoreConfig) -> Self {
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let dirty = Arc::new(Notify::new());
        let mut inner = Inner {
            rv: 0,
            registry: Registry::default(),
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 0,
            config,
            events: events.clone(),
            dirty: dirty.clone(),
            uids: HashMap::new(),
            dependents: HashMap::new(),
        };
        inner.ensure_system_namespaces();
        Store {
            inner: Mutex::new(inner),
            events,
            dirty,
        }
    }

    /// The state; a panic of another holder does not make the store unusable.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Woken after every committed change (the snapshot writer waits on it).
    pub fn dirty(&self) -> Arc<Notify> {
        self.dirty.clone()
    }
}

impl Inner {
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// A receiver that sees every change after the current version (call with the lock held, so nothing falls
    /// between a replay and the live stream).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Forgets the event history: watches from any older version now get `410 Expired`.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Events after `rv` (the caller checked `rv >= compacted`).
    pub fn history_since(&self, rv: u64) -> impl Iterator<Item = &Arc<Event>> {
        let start = self.history.partition_point(|e| e.rv <= rv);
        self.history.range(start..)
    }

    pub fn objects_of(&self, key: &TypeKey) -> impl Iterator<Item = &Arc<Value>> {
        self.objects.get(key).into_iter().flat_map(|m| m.values())
    }

    /// Everything, for the snapshot.
    pub fn dump(&self) -> Dump {
        let objects = self
            .objects
            .iter()
            .map(|(k, m)| (k.clone(), m.values().cloned().collect()))
            .collect();
        (self.rv, objects)
    }

    /// Replaces the state with a snapshot's. CRDs are registered first so their objects are served. The history
    /// starts empty: watches from before the snapshot's version get `410 Expired`, from it or later resume.
    pub fn restore(&mut self, rv: u64, objects: Vec<(TypeKey, Vec<Value>)>) {
        self.objects.clear();
        self.history.clear();
        self.registry = Registry::default();
        self.uids.clear();
        self.dependents.clear();
        for (key, objs) in objects {
            for o in objs {
                let okey = (meta::namespace(&o).to_owned(), meta::name(&o).to_owned());
                self.reindex(&key, &okey, None, Some(&o));
                self.objects
                    .entry(key.clone())
                    .or_default()
                    .insert(okey, Arc::new(o));
            }
        }
        let crds: Vec<Arc<Value>> = self.objects_of(&TypeKey::crds()).cloned().collect();
        for crd in crds {
            if let Ok(rt) = crate::resources::crd_resource_type(&crd) {
                // A snapshot's CRD that now fails to register stays stored but unserved.
                let _ = self.registry.register_crd(rt);
            }
        }
        self.rv = rv;
        self.compacted = rv;
        self.ensure_system_namespaces();
    }

    fn ensure_system_namespaces(&mut self) {
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            if self.find(&TypeKey::namespaces(), "", ns).is_none() {
                let obj =
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
                if let Some(rt) = self.registry.get(&TypeKey::namespaces()).cloned() {
                    // Cannot fail: valid name, no conflict (checked just above).
                    let _ = self.create(&rt, "", obj, &WriteCtx::new("ambit-apiserver"));
                }
            }
        }
    }

    pub fn find(&self, key: &TypeKey, ns: &str, name: &str) -> Option<&Arc<Value>> {
        self.objects
            .get(key)
            .and_then(|m| m.get(&(ns.to_owned(), name.to_owned())))
    }

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
        self.find(&rt.key(), ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))
    }

    /// Matching objects in `(namespace, name)` order; `ns` `None` means all namespaces.
    pub fn list(&self, rt: &ResourceType, ns: Option<&str>, sel: &Selectors) -> Vec<Arc<Value>> {
        let Some(map) = self.objects.get(&rt.key()) else {
            return Vec::new();
        };
        let iter: Box<dyn Iterator<Item = (&ObjKey, &Arc<Value>)>> = match ns {
            Some(ns) => Box::new(
                map.range((ns.to_owned(), String::new())..)
                    .take_while(move |((n, _), _)| n == ns),
            ),
            None => Box::new(map.iter()),
        };
        iter.map(|(_, v)| v)
            .filter(|o| sel.matches(o))
            .cloned()
            .collect()
    }

    fn reindex(&mut self, key: &TypeKey, okey: &ObjKey, old: Option<&Value>, new: Option<&Value>) {
        let entry = (key.clone(), okey.clone());
        if let Some(old) = old {
            self.uids.remove(meta::uid(old));
            for owner in meta::owner_uids(old) {
                if let Some(set) = self.dependents.get_mut(&owner) {
                    set.remove(&entry);
                    if set.is_empty() {
                        self.dependents.remove(&owner);
                    }
                }
            }
        }
        if let Some(new) = new {
            self.uids.insert(meta::uid(new).to_owned(), entry.clone());
            for owner in meta::owner_uids(new) {
                self.dependents
                    .entry(owner)
                    .or_default()
                    .insert(entry.clone());
            }
        }
    }

    /// The object with this uid, if it exists.
    pub fn by_uid(&self, uid: &str) -> Option<&Arc<Value>> {
        let (key, (ns, name)) = self.uids.get(uid)?;
        self.find(key, ns, name)
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Stores `obj` (or removes it, for `Deleted`) at a new version and publishes the event.
    fn commit(
        &mut self,
        key: &TypeKey,
        etype: EventType,
        mut obj: Value,
        old: Option<Arc<Value>>,
    ) -> Arc<Value> {
        let rv = self.next_rv();
        if let Some(m) = meta::meta_mut(&mut obj) {
            m.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        let obj = Arc::new(obj);
        let okey = (
            meta::namespace(&obj).to_owned(),
            meta::name(&obj).to_owned(),
        );
        let map = self.objects.entry(key.clone()).or_default();
        let previous = if etype == EventType::Deleted {
            map.remove(&okey)
        } else {
            map.insert(okey.clone(), obj.clone())
        };
        self.reindex(
            key,
            &okey,
            previous.as_deref(),
            (etype != EventType::Deleted).then_some(&*obj),
        );
        let event = Arc::new(Event {
            rv,
            key: key.clone(),
            etype,
            object: obj.clone(),
            old,
        });
        self.history.push_back(event.clone());
        while self.history.len() > self.config.history_limit {
            if let Some(e) = self.history.pop_front() {
                self.compacted = e.rv;
            }
        }
        // No receiver is fine: nobody watches.
        let _ = self.events.send(event);
        self.dirty.notify_one();
        obj
    }

    /// POST: a new object, with server-set metadata (uid, creationTimestamp, generation, generateName).
    pub fn create(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
        ctx: &WriteCtx,
    ) -> Result<Arc<Value>, ApiError> {
        self.check_served(rt)?;
        check_body(rt, &obj)?;
        fill_type(rt, &mut obj);
        let ns = self.check_namespace(rt, ns, &obj)?;
        let Some(m) = meta::meta_mut(&mut obj) else {
            return Err(ApiError::BadRequest(
                "the object is not a JSON object".into(),
            ));
        };
        if rt.namespaced {
            m.insert("namespace".into(), Value::String(ns.clone()));
        } else {
            m.remove("namespace");
        }
        let mut name = m
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let generate = m
            .get("generateName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if name.is_empty() && !generate.is_empty() {
            name = (0..16)
                .map(|_| format!("{generate}{}", meta::name_suffix()))
                .find(|n| self.find(&rt.key(), &ns, n).is_none())
                .unwrap_or_default();
        }
        meta::validate_name(&name).map_err(|e| ApiError::invalid(&rt.kind, &rt.group, &name, e))?;
        meta::validate_metadata(m).map_err(|e| ApiError::invalid(&rt.kind, &rt.group, &name, e))?;
        if self.find(&rt.key(), &ns, &name).is_some() {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        m.insert("name".into(), Value::String(name.clone()));
        m.insert("uid".into(), Value::String(meta::new_uid()));
        m.insert(
            "creationTimestamp".into(),
            Value::String(meta::now_rfc3339()),
        );
        m.insert("generation".into(), json!(1));
        for f in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
            "selfLink",
        ] {
            m.remove(f);
        }
        if rt.status_subresource
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        self.apply_defaults(rt, &mut obj, None)
            .map_err(|e| ApiError::invalid(&rt.kind, &rt.group, &name, e))?;
        if !ctx.applied {
            managed::record_update(
                &mut obj,
                None,
                &ctx.manager,
                Subresource::Main,
                &rt.api_version(rt.storage_version()),
            );
        }
        if ctx.dry_run {
            return Ok(Arc::new(obj));
        }
        let obj = self.commit(&rt.key(), EventType::Added, obj, None);
        self.after_write(rt, &obj);
        Ok(obj)
    }

    /// PUT (and the second half of every patch): replaces the object, keeping what the server owns. A non-empty
    /// `metadata.resourceVersion` in `obj` must equal the stored one (409 otherwise).
    pub fn update(
        &mut self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        mut obj: Value,
        sub: Subresource,
        ctx: &WriteCtx,
    ) -> Result<Arc<Value>, ApiError> {
        self.check_served(rt)?;
        check_body(rt, &obj)?;
        fill_type(rt, &mut obj);
        let old = self.get(rt, ns, name)?;
        let body_name = meta::name(&obj);
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_ns = meta::namespace(&obj);
        if rt.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        let want_rv = meta::resource_version(&obj);
        if !want_rv.is_empty() && want_rv != meta::resource_version(&old) {
            return Err(ApiError::stale(&rt.group, &rt.plural, name));
        }
        let body_uid = meta::uid(&obj);
        if !body_uid.is_empty() && body_uid != meta::uid(&old) {
            return Err(ApiError::conflict(
                &rt.group,
                &rt.plural,
                name,
                "Precondition failed: UID in precondition does not match",
            ));
        }
        // What the server owns, whatever the body says.
        let mut new = match sub {
            Subresource::Status => {
                let mut n = (*old).clone();
                match obj.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        if let Some(o) = n.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
                if ctx.applied
                    && let Some(mf) = meta::meta(&obj).and_then(|m| m.get("managedFields"))
                    && let Some(m) = meta::meta_mut(&mut n)
                {
                    m.insert("managedFields".into(), mf.clone());
                }
                n
            }
            Subresource::Main => {
                let mut n = obj;
                if rt.status_subresource
                    && let Some(o) = n.as_object_mut()
                {
                    match old.get("status") {
                        Some(s) => o.insert("status".into(), s.clone()),
                        None => o.remove("status"),
                    };
                }
                let Some(m) = meta::meta_mut(&mut n) else {
                    return Err(ApiError::BadRequest(
                        "the object is not a JSON object".into(),
                    ));
                };
                meta::validate_metadata(m)
                    .map_err(|e| ApiError::invalid(&rt.kind, &rt.group, name, e))?;
                let keep = [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ];
                for f in keep {
                    match meta::meta(&old).and_then(|om| om.get(f)) {
                        Some(v) => m.insert(f.into(), v.clone()),
                        None => m.remove(f),
                    };
                }
                if !ctx.applied {
                    match meta::meta(&old).and_then(|om| om.get("managedFields")) {
                        Some(v) => m.insert("managedFields".into(), v.clone()),
                        None => m.remove("managedFields"),
                    };
                }
                m.insert("name".into(), Value::String(name.to_owned()));
                if rt.namespaced {
                    m.insert("namespace".into(), Value::String(ns.to_owned()));
                }
                n
            }
        };
        if meta::spec_part(&new) != meta::spec_part(&old) {
            let g = meta::meta(&old)
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if let Some(m) = meta::meta_mut(&mut new) {
                m.insert("generation".into(), json!(g + 1));
            }
        }
        self.apply_defaults(rt, &mut new, Some(&old))
            .map_err(|e| ApiError::invalid(&rt.kind, &rt.group, name, e))?;
        if !ctx.applied {
            managed::record_update(
                &mut new,
                Some(&old),
                &ctx.manager,
                sub,
                &rt.api_version(rt.storage_version()),
            );
        }
        if let Some(m) = meta::meta_mut(&mut new) {
            m.insert(
                "resourceVersion".into(),
                Value::String(meta::resource_version(&old).to_owned()),
            );
        }
        if meta::comparable(&new) == meta::comparable(&old) {
            return Ok(old);
        }
        if ctx.dry_run {
            return Ok(Arc::new(new));
        }
        if meta::is_deleting(&new) && meta::finalizers(&new).is_empty() {
            let gone = self.remove(rt, new, Some(old));
            return Ok(gone);
        }
        let obj = self.commit(&rt.key(), EventType::Modified, new, Some(old));
        self.after_write(rt, &obj);
        Ok(obj)
    }

    fn check_served(&self, rt: &ResourceType) -> Result<(), ApiError> {
        if self.registry.get(&rt.key()).is_none() {
            return Err(ApiError::NotFound {
                message: format!(
                    "the server could not find the requested resource ({})",
                    rt.key().id()
                ),
                details: Default::default(),
            });
        }
        if rt.create_only {
            return Err(ApiError::MethodNotAllowed(format!(
                "{} can only be created",
                rt.plural
            )));
        }
        Ok(())
    }

    /// The namespace an object goes to: the URL's, which must exist, not be terminating, and agree with the body.
    fn check_namespace(
        &self,
        rt: &ResourceType,
        ns: &str,
        obj: &Value,
    ) -> Result<String, ApiError> {
        if !rt.namespaced {
            return Ok(String::new());
        }
        let body_ns = meta::namespace(obj);
        if !body_ns.is_empty() && !ns.is_empty() && body_ns != ns {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        let ns = if ns.is_empty() { body_ns } else { ns };
        if ns.is_empty() {
            return Err(ApiError::BadRequest(
                "a namespaced object needs a namespace".into(),
            ));
        }
        match self.find(&TypeKey::namespaces(), "", ns) {
            None => Err(ApiError::not_found("", "namespaces", ns)),
            Some(n) if meta::is_deleting(n) => Err(ApiError::Forbidden(format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                rt.plural,
                meta::name(obj)
            ))),
            Some(_) => Ok(ns.to_owned()),
        }
    }
}

/// The body must be an object of the endpoint's kind.
fn check_body(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    if let Some(kind) = obj.get("kind").and_then(Value::as_str)
        && kind != rt.kind
    {
        return Err(ApiError::BadRequest(format!(
            "the kind of the object ({kind}) does not match the resource ({}, kind {})",
            rt.plural, rt.kind
        )));
    }
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str)
        && !rt.versions.iter().any(|v| rt.api_version(v) == av)
    {
        return Err(ApiError::BadRequest(format!(
            "the API version of the object ({av}) is not served by {}",
            rt.key().id()
        )));
    }
    if obj.get("metadata").is_some_and(|m| !m.is_object()) {
        return Err(ApiError::BadRequest("metadata must be an object".into()));
    }
    Ok(())
}

/// Objects are stored at the storage version (served versions share one schema: conversion strategy `None`).
fn fill_type(rt: &ResourceType, obj: &mut Value) {
    if let Some(o) = obj.as_object_mut() {
        o.insert(
            "apiVersion".into(),
            Value::String(rt.api_version(rt.storage_version())),
        );
        o.insert("kind".into(), Value::String(rt.kind.clone()));
    }
}

#[cfg(test)]
mod tests;
