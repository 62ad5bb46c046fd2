//! The proxy state: workloads, services and authorization policies, with the indexes the data path looks them up
//! by. One writer (the xDS handler or the local config watcher) and many readers: a `std::sync::RwLock` held only
//! for synchronous lookups and updates, never across `.await`. Readers get `Arc`s they can keep.

pub mod convert;
mod lb;
mod store;
#[cfg(test)]
mod tests;
mod types;

use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::watch;
use tracing::debug;

use crate::localconfig::LocalConfig;
use crate::rbac::Authorization;
pub use convert::{AddressResource, ConvertError};
use store::Store;
pub use types::*;

/// Where one connection goes: a workload, the IP of it to dial and the (target) port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub workload: Arc<Workload>,
    pub ip: IpAddr,
    pub port: u16,
}

/// A resolved waypoint: the pod to send to, and the SANs it may present besides its own workload identity (the
/// waypoint Service's `subject_alt_names`, when it was resolved through a Service; spec 1.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedWaypoint {
    pub upstream: Upstream,
    pub service_sans: Vec<String>,
}

/// A cheap, cloneable handle on the shared state.
#[derive(Clone)]
pub struct ProxyState {
    inner: Arc<Inner>,
}

struct Inner {
    store: RwLock<Store>,
    policy_version: watch::Sender<u64>,
}

impl Default for ProxyState {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.read();
        f.debug_struct("ProxyState")
            .field("workloads", &s.workloads.len())
            .field("services", &s.services.len())
            .field("policies", &s.policies.len())
            .finish()
    }
}

impl ProxyState {
    pub fn new() -> Self {
        let (policy_version, _) = watch::channel(0);
        ProxyState {
            inner: Arc::new(Inner {
                store: RwLock::new(Store::default()),
                policy_version,
            }),
        }
    }

    // A panic while holding the lock cannot leave a half-applied index behind that matters more than losing the
    // whole state would, so a poisoned lock is simply taken over.
    fn read(&self) -> RwLockReadGuard<'_, Store> {
        self.inner
            .store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Store> {
        self.inner
            .store
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn bump_policies(&self) {
        self.inner.policy_version.send_modify(|v| *v += 1);
    }

    // ----- writes -----

    /// Applies one xDS `Address` resource named `name`. The error is the NACK reason.
    pub fn insert_address(
        &self,
        name: &str,
        addr: ambit_proto::workload::Address,
    ) -> Result<(), String> {
        let resource = AddressResource::try_from(addr).map_err(|e| e.to_string())?;
        let mut store = self.write();
        match resource {
            AddressResource::Workload(mut w) => {
                if w.uid.is_empty() {
                    w.uid = name.to_owned();
                }
                debug!(name, uid = %w.uid, "workload upserted");
                // The policies that select a workload arrive with the workload, not with the policy, and the two
                // resources of one new policy can arrive in either order: a workload that is new, or whose
                // policy list, namespace or identity changed, re-checks live connections as a policy change does.
                let unbound = store.bind_name(name, store::Named::Workload(w.uid.clone()));
                let changed = store.insert_workload(w);
                drop(store);
                if unbound || changed {
                    self.bump_policies();
                }
            }
            AddressResource::Service(s) => {
                debug!(name, service = %s.key(), "service upserted");
                let unbound = store.bind_name(name, store::Named::Service(s.key()));
                store.insert_service(s);
                drop(store);
                if unbound {
                    self.bump_policies();
                }
            }
        }
        Ok(())
    }

    /// Applies one xDS `Authorization` resource named `name`. The error is the NACK reason.
    pub fn insert_authorization(
        &self,
        name: &str,
        p: ambit_proto::security::Authorization,
    ) -> Result<(), String> {
        let policy = Authorization::try_from(p).map_err(|e| e.to_string())?;
        {
            let mut store = self.write();
            let key = if policy.name.is_empty() {
                name.to_owned()
            } else {
                policy.key()
            };
            debug!(name, policy = %key, "policy upserted");
            let _ = store.bind_name(name, store::Named::Policy(key.clone()));
            store.insert_policy(key, policy);
        }
        self.bump_policies();
        Ok(())
    }

    /// Removes the `Address` resource `name`: the workload or service it named, else a workload uid, else a
    /// `namespace/hostname` service.
    pub fn remove_address(&self, name: &str) {
        self.remove(store::Kind::Address, name);
    }

    /// Removes the `Authorization` resource `name` (the policy it named, else the policy keyed `name`).
    pub fn remove_authorization(&self, name: &str) {
        self.remove(store::Kind::Authorization, name);
    }

    fn remove(&self, kind: store::Kind, name: &str) {
        let authz_changed = self.write().remove_named(kind, name);
        if authz_changed {
            self.bump_policies();
        }
    }

    /// Replaces everything that came from the local config file with `local` (xDS resources are kept).
    pub fn replace_all(&self, local: LocalConfig) {
        self.write().replace_local(local);
        self.bump_policies();
    }

    /// Adds or replaces a workload directly (tests, tools); re-checks live connections as an xDS update does.
    pub fn insert_workload(&self, w: Workload) {
        let changed = self.write().insert_workload(w);
        if changed {
            self.bump_policies();
        }
    }

    /// Adds or replaces a service directly (tests, tools).
    pub fn insert_service(&self, s: Service) {
        self.write().insert_service(s);
    }

    /// Adds or replaces a policy directly (tests, tools).
    pub fn insert_policy(&self, p: Authorization) {
        self.write().insert_policy(p.key(), p);
        self.bump_policies();
    }

    /// Bumped on every authorization change: a policy added, changed or removed, a workload added or removed or
    /// changed in what selects its policies (see `store::authz_inputs_changed`), and every local config reload.
    /// Every live inbound connection (HBONE and plaintext) re-checks its authorization when it moves.
    pub fn policy_changes(&self) -> watch::Receiver<u64> {
        self.inner.policy_version.subscribe()
    }

    // ----- reads -----

    pub fn workload_by_ip(&self, network: &str, ip: IpAddr) -> Option<Arc<Workload>> {
        self.read().workload_by_ip(network, ip)
    }

    pub fn workload_by_uid(&self, uid: &str) -> Option<Arc<Workload>> {
        self.read().workloads.get(uid).cloned()
    }

    /// The workload with this namespace and name (and service account, unless `service_account` is empty).
    pub fn find_workload(
        &self,
        namespace: &str,
        name: &str,
        service_account: &str,
    ) -> Option<Arc<Workload>> {
        self.read().find_workload(namespace, name, service_account)
    }

    /// The service with VIP `ip` on `network` visible from `src_namespace`: same-namespace first, then
    /// `canonical`, then the first by key. CIDR VIPs are a longest-prefix fallback.
    pub fn service_by_vip(
        &self,
        network: &str,
        ip: IpAddr,
        src_namespace: &str,
    ) -> Option<Arc<Service>> {
        self.read().service_by_vip(network, ip, src_namespace)
    }

    /// The service named `hostname` visible from `prefer_namespace`, preferring that namespace, then `canonical`.
    pub fn service_by_hostname(
        &self,
        hostname: &str,
        prefer_namespace: &str,
    ) -> Option<Arc<Service>> {
        self.read().service_by_hostname(hostname, prefer_namespace)
    }

    /// The service with resource name `namespace/hostname`.
    pub fn service_by_key(&self, key: &str) -> Option<Arc<Service>> {
        self.read().services.get(key).cloned()
    }

    /// The services `w` is an endpoint of (that are known).
    pub fn services_for_workload(&self, w: &Workload) -> Vec<Arc<Service>> {
        let store = self.read();
        w.services
            .keys()
            .filter_map(|k| store.services.get(k).cloned())
            .collect()
    }

    /// The policies that apply to `w` (spec 5), sorted by key.
    pub fn policies_for(&self, w: &Workload) -> Vec<Arc<Authorization>> {
        self.read().policies_for(w)
    }

    pub fn policy(&self, key: &str) -> Option<Arc<Authorization>> {
        self.read().policies.get(key).cloned()
    }

    /// The target port of service port `svc_port` on endpoint `w` (spec 1.6).
    pub fn target_port(&self, svc: &Service, svc_port: u16, w: &Workload) -> Option<u16> {
        lb::target_port(svc, svc_port, w, false)
    }

    /// Load-balances `svc:svc_port` for a client `src` (spec 1.6).
    pub fn pick_endpoint(
        &self,
        svc: &Service,
        svc_port: u16,
        src: &Workload,
        dst_ip_family_hint: IpAddr,
    ) -> Option<Upstream> {
        self.read()
            .pick_endpoint(svc, svc_port, src, dst_ip_family_hint, false)
    }

    /// The waypoint pod to send to for `gw` (spec 1.9).
    pub fn resolve_waypoint(
        &self,
        gw: &GatewayAddress,
        src: &Workload,
    ) -> Option<ResolvedWaypoint> {
        self.read().resolve_waypoint(gw, src)
    }

    /// Every workload that makes up the waypoint `gw`, not only the one load balancing would pick.
    pub fn waypoint_workloads(&self, gw: &GatewayAddress) -> Vec<Arc<Workload>> {
        self.read().waypoint_workloads(gw)
    }

    /// `workloads`, `services`, `policies` and `stagedServices`, as `/config_dump` shows them.
    pub fn snapshot_for_dump(&self) -> serde_json::Value {
        self.read().dump()
    }
}
