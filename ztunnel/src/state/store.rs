//! The indexed store behind [`super::ProxyState`]. Every write keeps the indexes consistent: workload IPs,
//! (namespace, name), service VIPs/CIDRs/hostnames, and service endpoints (staged while the service is unknown).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use tracing::warn;

use super::types::*;
use crate::localconfig::LocalConfig;
use crate::rbac::Authorization;

/// What a resource name (xDS or local file) refers to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Named {
    Workload(String),
    Service(String),
    Policy(String),
}

/// The xDS type a resource name belongs to: each type's names are its own (a Service's `namespace/hostname` and
/// an Authorization's `namespace/name` can be the same string).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Address,
    Authorization,
}

impl Named {
    fn kind(&self) -> Kind {
        match self {
            Named::Workload(_) | Named::Service(_) => Kind::Address,
            Named::Policy(_) => Kind::Authorization,
        }
    }
}

#[derive(Default)]
pub(super) struct Store {
    pub(super) workloads: HashMap<String, Arc<Workload>>,
    by_ip: HashMap<NetworkAddress, String>,
    by_name: HashMap<(String, String), BTreeSet<String>>,
    pub(super) services: HashMap<String, Arc<Service>>,
    pub(super) svc_by_vip: HashMap<NetworkAddress, BTreeSet<String>>,
    svc_cidrs: Vec<(NetworkCidr, String)>,
    svc_by_host: HashMap<String, BTreeSet<String>>,
    /// Endpoints of services not known yet: service key → workload uid → endpoint.
    staged: HashMap<String, BTreeMap<String, Endpoint>>,
    pub(super) policies: HashMap<String, Arc<Authorization>>,
    /// xDS (type, resource name) → what it named, so a removal by name finds it.
    names: HashMap<(Kind, String), Named>,
    /// What the local config file added, replaced as a whole on reload.
    local: Vec<Named>,
}

impl Store {
    // ----- workloads -----

    /// Adds or replaces `w`; returns whether authorization decisions may have changed (see
    /// [`authz_inputs_changed`]), so live connections must be re-checked.
    pub(super) fn insert_workload(&mut self, w: Workload) -> bool {
        let old = self.workloads.remove(&w.uid);
        let authz_changed = authz_inputs_changed(old.as_deref(), &w);
        if let Some(old) = old {
            self.unindex_workload(&old);
        }
        let w = Arc::new(w);
        if w.indexed_by_ip() {
            for ip in &w.workload_ips {
                self.by_ip
                    .insert(NetworkAddress::new(&w.network, *ip), w.uid.clone());
            }
        }
        self.by_name
            .entry((w.namespace.clone(), w.name.clone()))
            .or_default()
            .insert(w.uid.clone());
        for (svc_key, ports) in &w.services {
            let ep = Endpoint {
                workload_uid: w.uid.clone(),
                port: ports.clone(),
                status: w.status,
            };
            match self.services.get_mut(svc_key) {
                Some(svc) => {
                    Arc::make_mut(svc).endpoints.insert(w.uid.clone(), ep);
                }
                None => {
                    self.staged
                        .entry(svc_key.clone())
                        .or_default()
                        .insert(w.uid.clone(), ep);
                }
            }
        }
        self.workloads.insert(w.uid.clone(), w);
        authz_changed
    }

    fn unindex_workload(&mut self, w: &Workload) {
        for ip in &w.workload_ips {
            let key = NetworkAddress::new(&w.network, *ip);
            // Another workload may have taken this IP since; leave its entry alone.
            if self.by_ip.get(&key) == Some(&w.uid) {
                self.by_ip.remove(&key);
            }
        }
        let name_key = (w.namespace.clone(), w.name.clone());
        if let Some(uids) = self.by_name.get_mut(&name_key) {
            uids.remove(&w.uid);
            if uids.is_empty() {
                self.by_name.remove(&name_key);
            }
        }
        for svc_key in w.services.keys() {
            if let Some(svc) = self.services.get_mut(svc_key) {
                Arc::make_mut(svc).endpoints.remove(&w.uid);
            }
            if let Some(eps) = self.staged.get_mut(svc_key) {
                eps.remove(&w.uid);
                if eps.is_empty() {
                    self.staged.remove(svc_key);
                }
            }
        }
    }

    fn remove_workload(&mut self, uid: &str) -> bool {
        match self.workloads.remove(uid) {
            Some(old) => {
                self.unindex_workload(&old);
                true
            }
            None => false,
        }
    }

    // ----- services -----

    pub(super) fn insert_service(&mut self, mut s: Service) {
        let key = s.key();
        // Endpoints come from workloads: keep the ones already attached, or adopt the staged ones.
        let derived = match self.services.remove(&key) {
            Some(old) => {
                self.unindex_service(&old);
                Arc::unwrap_or_clone(old).endpoints
            }
            None => self.staged.remove(&key).unwrap_or_default(),
        };
        s.endpoints.extend(derived);
        for vip in &s.vips {
            self.svc_by_vip
                .entry(vip.clone())
                .or_default()
                .insert(key.clone());
        }
        for cidr in &s.cidr_vips {
            self.svc_cidrs.push((cidr.clone(), key.clone()));
        }
        self.svc_by_host
            .entry(s.hostname.clone())
            .or_default()
            .insert(key.clone());
        self.services.insert(key, Arc::new(s));
    }

    fn unindex_service(&mut self, s: &Service) {
        let key = s.key();
        for vip in &s.vips {
            if let Some(keys) = self.svc_by_vip.get_mut(vip) {
                keys.remove(&key);
                if keys.is_empty() {
                    self.svc_by_vip.remove(vip);
                }
            }
        }
        self.svc_cidrs.retain(|(_, k)| *k != key);
        if let Some(keys) = self.svc_by_host.get_mut(&s.hostname) {
            keys.remove(&key);
            if keys.is_empty() {
                self.svc_by_host.remove(&s.hostname);
            }
        }
    }

    fn remove_service(&mut self, key: &str) -> bool {
        let Some(old) = self.services.remove(key) else {
            return false;
        };
        self.unindex_service(&old);
        // Workloads still name the service: stage their endpoints for when it comes back.
        let eps: BTreeMap<String, Endpoint> = old
            .endpoints
            .iter()
            .filter(|(uid, _)| {
                self.workloads
                    .get(*uid)
                    .is_some_and(|w| w.services.contains_key(key))
            })
            .map(|(uid, ep)| (uid.clone(), ep.clone()))
            .collect();
        if !eps.is_empty() {
            self.staged.insert(key.to_owned(), eps);
        }
        true
    }

    // ----- policies -----

    pub(super) fn insert_policy(&mut self, key: String, p: Authorization) {
        self.policies.insert(key, Arc::new(p));
    }

    // ----- names, removal, local config -----

    /// Records that resource `name` now refers to `named`; if it referred to something else before, that goes.
    /// Returns whether that removed a workload or a policy (authorization may have changed).
    pub(super) fn bind_name(&mut self, name: &str, named: Named) -> bool {
        match self
            .names
            .insert((named.kind(), name.to_owned()), named.clone())
        {
            Some(previous) if previous != named => {
                self.remove(&previous) && !matches!(previous, Named::Service(_))
            }
            _ => false,
        }
    }

    fn remove(&mut self, named: &Named) -> bool {
        match named {
            Named::Workload(uid) => self.remove_workload(uid),
            Named::Service(key) => self.remove_service(key),
            Named::Policy(key) => self.policies.remove(key).is_some(),
        }
    }

    /// Removes resource `name` of type `kind`; returns whether a workload or a policy went away (authorization
    /// may have changed: a workload removed and added back must be re-checked like any other update).
    pub(super) fn remove_named(&mut self, kind: Kind, name: &str) -> bool {
        if let Some(named) = self.names.remove(&(kind, name.to_owned())) {
            return self.remove(&named) && !matches!(named, Named::Service(_));
        }
        match kind {
            Kind::Address => {
                if self.remove_workload(name) {
                    return true;
                }
                self.remove_service(name);
                false
            }
            Kind::Authorization => self.policies.remove(name).is_some(),
        }
    }

    pub(super) fn replace_local(&mut self, local: LocalConfig) {
        for named in std::mem::take(&mut self.local) {
            self.remove(&named);
        }
        let mut added = Vec::new();
        for s in local.services {
            added.push(Named::Service(s.key()));
            self.insert_service(s);
        }
        for w in local.workloads {
            added.push(Named::Workload(w.uid.clone()));
            self.insert_workload(w);
        }
        for p in local.policies {
            let key = p.key();
            added.push(Named::Policy(key.clone()));
            self.insert_policy(key, p);
        }
        self.local = added;
    }

    // ----- reads -----

    pub(super) fn workload_by_ip(&self, network: &str, ip: IpAddr) -> Option<Arc<Workload>> {
        let uid = self.by_ip.get(&NetworkAddress::new(network, ip))?;
        self.workloads.get(uid).cloned()
    }

    pub(super) fn find_workload(
        &self,
        namespace: &str,
        name: &str,
        sa: &str,
    ) -> Option<Arc<Workload>> {
        let uids = self.by_name.get(&(namespace.to_owned(), name.to_owned()))?;
        uids.iter()
            .filter_map(|uid| self.workloads.get(uid))
            .find(|w| sa.is_empty() || w.service_account == sa)
            .cloned()
    }

    /// Among `keys`, the service visible from `namespace`: same namespace, then canonical, then the first.
    fn best_service<'a>(
        &self,
        keys: impl Iterator<Item = &'a String>,
        namespace: &str,
    ) -> Option<Arc<Service>> {
        let mut visible: Vec<&Arc<Service>> = keys
            .filter_map(|k| self.services.get(k))
            .filter(|s| s.visible_from(namespace))
            .collect();
        visible.sort_by_key(|s| (s.namespace != namespace, !s.canonical, s.key()));
        visible.first().map(|s| Arc::clone(s))
    }

    pub(super) fn service_by_vip(
        &self,
        network: &str,
        ip: IpAddr,
        namespace: &str,
    ) -> Option<Arc<Service>> {
        if let Some(keys) = self.svc_by_vip.get(&NetworkAddress::new(network, ip))
            && let Some(s) = self.best_service(keys.iter(), namespace)
        {
            return Some(s);
        }
        let longest = self
            .svc_cidrs
            .iter()
            .filter(|(c, _)| c.network == network && c.cidr.contains(&ip))
            .map(|(c, _)| c.cidr.prefix_len())
            .max()?;
        let keys = self
            .svc_cidrs
            .iter()
            .filter(|(c, _)| {
                c.network == network && c.cidr.contains(&ip) && c.cidr.prefix_len() == longest
            })
            .map(|(_, k)| k);
        self.best_service(keys, namespace)
    }

    pub(super) fn service_by_hostname(
        &self,
        hostname: &str,
        namespace: &str,
    ) -> Option<Arc<Service>> {
        self.best_service(self.svc_by_host.get(hostname)?.iter(), namespace)
    }

    pub(super) fn policies_for(&self, w: &Workload) -> Vec<Arc<Authorization>> {
        crate::rbac::select(
            self.policies.values(),
            |name| self.policies.get(name),
            &w.namespace,
            &w.authorization_policies,
            |name| warn!(policy = %name, workload = %w.uid, "workload names an unknown policy; skipped"),
        )
    }

    pub(super) fn dump(&self) -> serde_json::Value {
        let mut workloads: Vec<&Workload> = self.workloads.values().map(|w| &**w).collect();
        workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
        let mut services: Vec<&Service> = self.services.values().map(|s| &**s).collect();
        services.sort_by_key(|s| s.key());
        let mut policies: Vec<&Authorization> = self.policies.values().map(|p| &**p).collect();
        policies.sort_by_key(|p| p.key());
        let staged: BTreeMap<&String, &BTreeMap<String, Endpoint>> = self.staged.iter().collect();
        serde_json::json!({
            "workloads": workloads,
            "services": services,
            "policies": policies,
            "stagedServices": staged,
        })
    }
}

/// Whether replacing `old` by `new` can change an authorization decision: a new workload, or a change of what
/// selects policies for it (namespace, its WORKLOAD_SELECTOR list) or of who it is (name, identity). Endpoint
/// health, locality and the like cannot, and do not wake every live connection.
fn authz_inputs_changed(old: Option<&Workload>, new: &Workload) -> bool {
    let Some(old) = old else {
        return true;
    };
    old.namespace != new.namespace
        || old.name != new.name
        || old.service_account != new.service_account
        || old.trust_domain != new.trust_domain
        || old.authorization_policies != new.authorization_policies
}
