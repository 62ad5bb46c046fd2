//! The object index: the latest state of every object the sources reported, by kind, namespace and name. It has
//! one writer (the controller's event loop); compute reads it as a plain value.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;

use crate::sources::{
    AuthorizationPolicy, Event, Gateway, GrpcRoute, HttpRoute, Kind, Object, ObjectKey,
    PeerAuthentication, ReferenceGrant, TcpRoute,
};
use crate::sources::{
    DestinationRule, FaultInjection, RateLimitPolicy, RequestAuthentication, ServiceEntry,
    VirtualService, WorkloadEntry,
};

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub type Name = (String, String);

#[derive(Clone, Debug, Default)]
pub struct Index {
    pub namespaces: BTreeMap<String, core::Namespace>,
    pub pods: BTreeMap<Name, core::Pod>,
    pub services: BTreeMap<Name, core::Service>,
    pub service_accounts: BTreeMap<Name, core::ServiceAccount>,
    pub gateways: BTreeMap<Name, Gateway>,
    pub http_routes: BTreeMap<Name, HttpRoute>,
    pub grpc_routes: BTreeMap<Name, GrpcRoute>,
    pub tcp_routes: BTreeMap<Name, TcpRoute>,
    pub authorization_policies: BTreeMap<Name, AuthorizationPolicy>,
    pub peer_authentications: BTreeMap<Name, PeerAuthentication>,
    pub virtual_services: BTreeMap<Name, VirtualService>,
    pub destination_rules: BTreeMap<Name, DestinationRule>,
    pub fault_injections: BTreeMap<Name, FaultInjection>,
    /// Only the mesh config (`istio` in the root namespace) is read; other ConfigMaps are kept but unused.
    pub config_maps: BTreeMap<Name, core::ConfigMap>,
    pub request_authentications: BTreeMap<Name, RequestAuthentication>,
    pub rate_limit_policies: BTreeMap<Name, RateLimitPolicy>,
    pub service_entries: BTreeMap<Name, ServiceEntry>,
    pub workload_entries: BTreeMap<Name, WorkloadEntry>,
    /// By the namespace they grant access to.
    pub reference_grants: BTreeMap<Name, ReferenceGrant>,
    /// Whether every source finished its initial listing.
    pub synced: bool,
}

impl Index {
    /// Applies one event; returns whether anything changed.
    pub fn apply(&mut self, event: Event) -> bool {
        match event {
            Event::Apply(obj) => self.insert(obj),
            Event::Delete(key) => self.remove(&key),
            Event::InitDone => !std::mem::replace(&mut self.synced, true),
        }
    }

    /// Inserts an object; returns whether it differs from what was there.
    pub fn insert(&mut self, obj: Object) -> bool {
        let ObjectKey {
            namespace, name, ..
        } = obj.key();
        let key = (namespace, name);
        match obj {
            Object::Namespace(o) => replace(&mut self.namespaces, key.1, *o),
            Object::Pod(o) => replace(&mut self.pods, key, *o),
            Object::Service(o) => replace(&mut self.services, key, *o),
            Object::ServiceAccount(o) => replace(&mut self.service_accounts, key, *o),
            Object::Gateway(o) => replace(&mut self.gateways, key, *o),
            Object::HttpRoute(o) => replace(&mut self.http_routes, key, *o),
            Object::GrpcRoute(o) => replace(&mut self.grpc_routes, key, *o),
            Object::TcpRoute(o) => replace(&mut self.tcp_routes, key, *o),
            Object::AuthorizationPolicy(o) => replace(&mut self.authorization_policies, key, *o),
            Object::PeerAuthentication(o) => replace(&mut self.peer_authentications, key, *o),
            Object::VirtualService(o) => replace(&mut self.virtual_services, key, *o),
            Object::DestinationRule(o) => replace(&mut self.destination_rules, key, *o),
            Object::FaultInjection(o) => replace(&mut self.fault_injections, key, *o),
            Object::ConfigMap(o) => replace(&mut self.config_maps, key, *o),
            Object::RequestAuthentication(o) => replace(&mut self.request_authentications, key, *o),
            Object::RateLimitPolicy(o) => replace(&mut self.rate_limit_policies, key, *o),
            Object::ServiceEntry(o) => replace(&mut self.service_entries, key, *o),
            Object::WorkloadEntry(o) => replace(&mut self.workload_entries, key, *o),
            Object::ReferenceGrant(o) => replace(&mut self.reference_grants, key, *o),
        }
    }

    pub fn remove(&mut self, key: &ObjectKey) -> bool {
        let k = (key.namespace.clone(), key.name.clone());
        match key.kind {
            Kind::Namespace => self.namespaces.remove(&key.name).is_some(),
            Kind::Pod => self.pods.remove(&k).is_some(),
            Kind::Service => self.services.remove(&k).is_some(),
            Kind::ServiceAccount => self.service_accounts.remove(&k).is_some(),
            Kind::Gateway => self.gateways.remove(&k).is_some(),
            Kind::HttpRoute => self.http_routes.remove(&k).is_some(),
            Kind::GrpcRoute => self.grpc_routes.remove(&k).is_some(),
            Kind::TcpRoute => self.tcp_routes.remove(&k).is_some(),
            Kind::AuthorizationPolicy => self.authorization_policies.remove(&k).is_some(),
            Kind::PeerAuthentication => self.peer_authentications.remove(&k).is_some(),
            Kind::VirtualService => self.virtual_services.remove(&k).is_some(),
            Kind::DestinationRule => self.destination_rules.remove(&k).is_some(),
            Kind::FaultInjection => self.fault_injections.remove(&k).is_some(),
            Kind::ConfigMap => self.config_maps.remove(&k).is_some(),
            Kind::RequestAuthentication => self.request_authentications.remove(&k).is_some(),
            Kind::RateLimitPolicy => self.rate_limit_policies.remove(&k).is_some(),
            Kind::ServiceEntry => self.service_entries.remove(&k).is_some(),
            Kind::WorkloadEntry => self.workload_entries.remove(&k).is_some(),
            Kind::ReferenceGrant => self.reference_grants.remove(&k).is_some(),
        }
    }

    /// Labels of a namespace (empty when the Namespace object does not exist).
    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(ns)
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }
}

fn replace<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, key: K, value: V) -> bool {
    match map.get(&key) {
        Some(old) if *old == value => false,
        _ => {
            map.insert(key, value);
            true
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::sources::{Document, parse_document};

    fn obj(s: &str) -> Object {
        match parse_document(serde_yaml::from_str(s).unwrap()).unwrap() {
            Document::Object(o) => o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn apply_reports_changes_only() {
        let mut idx = Index::default();
        let p = obj("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: n}\n");
        assert!(idx.apply(Event::Apply(p.clone())));
        assert!(!idx.apply(Event::Apply(p.clone())));
        assert!(idx.apply(Event::InitDone));
        assert!(!idx.apply(Event::InitDone));
        assert!(idx.apply(Event::Delete(p.key())));
        assert!(!idx.apply(Event::Delete(p.key())));
        assert!(idx.pods.is_empty());
        let ns = obj("apiVersion: v1\nkind: Namespace\nmetadata: {name: n, labels: {a: b}}\n");
        idx.apply(Event::Apply(ns));
        assert_eq!(
            idx.namespace_labels("n").get("a").map(String::as_str),
            Some("b")
        );
    }
}
