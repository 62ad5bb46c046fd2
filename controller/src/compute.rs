//! Compute: a pure function from the object [`Index`] to the resources upstream ztunnel consumes
//! (`istio.workload.Address` and `istio.security.Authorization`), named exactly as istiod names them:
//! workloads `<cluster>//Pod/<ns>/<name>`, services `<ns>/<hostname>`, policies `<ns>/<name>`; the waypoint's
//! `ambit.waypoint.Route` (`<ns>/<kind>/<name>/<rule>`, from Gateway API routes and VirtualServices) and
//! `ambit.waypoint.BackendPolicy` (by service hostname, from DestinationRules), the waypoint's L7 policies
//! (`ambit.waypoint.AuthorizationPolicy`, `RequestAuthentication`, `RateLimitPolicy`, `<ns>/<name>`, from
//! [`waypoint_policy`]) and which waypoint gets which; object status; and the waypoint deployments.

pub mod authz;
pub mod deployer;
pub mod destination_rule;
pub mod fault_injection;
pub mod istio_hosts;
pub mod reference_grant;
pub mod render;
pub mod route_scopes;
pub mod routes;
pub mod service;
pub mod service_entry;
pub mod status;
#[cfg(test)]
pub mod test_support;
pub mod virtual_service;
pub mod waypoint;
pub mod waypoint_guard;
pub mod waypoint_policy;
pub mod workload;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_proto::security::Authorization;
use ambit_proto::waypoint::{
    AuthorizationPolicy, BackendPolicy, RateLimitPolicy, RequestAuthentication, Route,
};
use ambit_proto::workload::{self as address_types, Address, address};

use crate::index::Index;

/// Mesh-wide settings that shape the output.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ComputeConfig {
    /// istiod's `CLUSTER_ID`; the first segment of workload uids.
    pub cluster_id: String,
    pub trust_domain: String,
    /// DNS suffix of service hostnames (`<svc>.<ns>.svc.<domain>`).
    pub domain_suffix: String,
    /// Policies here without a selector are GLOBAL; PeerAuthentication here is mesh-wide.
    pub root_namespace: String,
    /// Network of every workload and VIP (unless a `topology.istio.io/network` label says otherwise).
    pub network: String,
    /// Send `istio.io/dry-run` AuthorizationPolicies as dry-run (istiod's
    /// `AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY`); otherwise they are not sent.
    pub enable_dry_run: bool,
    /// Namespaces whose pods are never captured (the CNI's `excludeNamespaces`).
    pub excluded_namespaces: Vec<String>,
    /// istiod's `PILOT_AUTO_ALLOW_WAYPOINT_POLICY`: attach an ALLOW policy for their waypoints' identities to
    /// the pods bound to a waypoint ([`waypoint_guard`]).
    pub auto_allow_waypoint_policy: bool,
    /// What the auto-deployed waypoints are configured with.
    pub deployer: deployer::DeployerConfig,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        ComputeConfig {
            cluster_id: "Kubernetes".to_owned(),
            trust_domain: "cluster.local".to_owned(),
            domain_suffix: "cluster.local".to_owned(),
            root_namespace: "istio-system".to_owned(),
            network: String::new(),
            enable_dry_run: false,
            excluded_namespaces: ambit_core::enrollment::default_excluded_namespaces(),
            auto_allow_waypoint_policy: false,
            deployer: deployer::DeployerConfig::default(),
        }
    }
}

/// Everything the xDS server serves, keyed by resource name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    pub addresses: BTreeMap<String, Address>,
    pub authorizations: BTreeMap<String, Authorization>,
    /// Alternative lookup keys (`network/IP`) to the resource name that owns the address.
    pub aliases: BTreeMap<String, String>,
    /// Why a policy was not sent or was changed (istiod's `ZtunnelAccepted` condition), by `ns/name`.
    pub policy_status: BTreeMap<String, String>,
    /// Waypoint routes, one per route rule, by `<ns>/<kind>/<name>/<rule index>`.
    pub routes: BTreeMap<String, Route>,
    /// Waypoint `(ns, gateway)` → the routes it gets ([`route_scopes`]).
    pub route_scopes: route_scopes::RouteScopes,
    /// Waypoint backend policies (DestinationRules), by service hostname.
    pub backend_policies: BTreeMap<String, BackendPolicy>,
    /// Waypoint `(ns, gateway)` → the backend policies it gets ([`route_scopes::backend_policy_scopes`]).
    pub backend_policy_scopes: route_scopes::RouteScopes,
    /// Waypoint authorization policies (AuthorizationPolicy with targetRefs), by `<ns>/<name>`.
    pub waypoint_authorizations: BTreeMap<String, AuthorizationPolicy>,
    pub waypoint_authorization_scopes: route_scopes::RouteScopes,
    /// Waypoint JWT rules (RequestAuthentication with targetRefs), by `<ns>/<name>`.
    pub request_authentications: BTreeMap<String, RequestAuthentication>,
    pub request_authentication_scopes: route_scopes::RouteScopes,
    /// Waypoint local rate limits (Ambit's RateLimitPolicy), by `<ns>/<name>`.
    pub rate_limits: BTreeMap<String, RateLimitPolicy>,
    pub rate_limit_scopes: route_scopes::RouteScopes,
    /// The `status` object Kubernetes would hold, by `<kind>/<ns>/<name>` (kind in lower case).
    pub status: BTreeMap<String, serde_json::Value>,
    /// Auto-deployed waypoint manifests, by `<ns>.<gateway>`.
    pub deployments: BTreeMap<String, Vec<serde_json::Value>>,
}

impl Resources {
    /// Adds a service as `<ns>/<hostname>` with its VIPs (`network/IP`, `network/IP/len` for CIDRs) as aliases,
    /// unless a service of that name is already there.
    fn insert_service(&mut self, svc: address_types::Service) {
        let name = format!("{}/{}", svc.namespace, svc.hostname);
        if self.addresses.contains_key(&name) {
            return;
        }
        for a in &svc.addresses {
            if let Some(ip) = ip_from_bytes(&a.address) {
                let alias = match a.length {
                    Some(len) => format!("{}/{ip}/{len}", a.network),
                    None => format!("{}/{ip}", a.network),
                };
                self.aliases.insert(alias, name.clone());
            }
        }
        self.addresses.insert(
            name,
            Address {
                r#type: Some(address::Type::Service(svc)),
            },
        );
    }

    /// Adds a workload by uid with its addresses (`network/IP`) as aliases.
    fn insert_workload(&mut self, wl: address_types::Workload) {
        for a in &wl.addresses {
            if let Some(ip) = ip_from_bytes(a) {
                self.aliases
                    .insert(format!("{}/{}", wl.network, ip), wl.uid.clone());
            }
        }
        self.addresses.insert(
            wl.uid.clone(),
            Address {
                r#type: Some(address::Type::Workload(wl)),
            },
        );
    }
}

/// Computes all resources from the index.
pub fn compute(index: &Index, cfg: &ComputeConfig) -> Resources {
    let policies = authz::convert_all(index, cfg);
    let bindings = waypoint::bindings(index, cfg);
    let mut out = Resources::default();
    for svc in service::services(index, cfg, &bindings) {
        out.insert_service(svc);
    }
    let mut guards = waypoint_guard::Guards::new(cfg, &bindings);
    for wl in workload::workloads(index, cfg, &policies, &bindings, &mut guards) {
        out.insert_workload(wl);
    }
    // After the Kubernetes ones: a Kubernetes Service of the same hostname wins.
    let mut entries = service_entry::entries(index, cfg, &policies, &bindings);
    for svc in std::mem::take(&mut entries.services) {
        out.insert_service(svc);
    }
    for wl in std::mem::take(&mut entries.workloads) {
        out.insert_workload(wl);
    }
    let ztunnel_status =
        waypoint_policy::ztunnel_status(index, &policies.status, &policies.resources);
    out.authorizations = policies.resources;
    out.authorizations.append(&mut guards.resources);
    out.policy_status = policies.status;
    let routes = routes::routes(index, cfg, &bindings.waypoints);
    let rules = destination_rule::convert_all(index, cfg);
    let vs = virtual_service::virtual_services(
        index,
        cfg,
        &bindings,
        &routes.routes,
        &destination_rule::subset_names(&rules),
    );
    out.routes = routes.routes;
    out.routes.extend(vs.routes);
    out.route_scopes = route_scopes::route_scopes(&out.routes, &out.addresses, &bindings.waypoints);
    let candidates = rules
        .values()
        .flat_map(|r| r.policies.iter().map(|p| p.hostname.clone()))
        .collect();
    out.backend_policy_scopes = route_scopes::backend_policy_scopes(
        &out.routes,
        &out.route_scopes,
        &out.addresses,
        &bindings.waypoints,
        &candidates,
    );
    let mut waypoints_of: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for ((ns, gw), names) in &out.backend_policy_scopes {
        for n in names {
            waypoints_of
                .entry(n.clone())
                .or_default()
                .insert(format!("{ns}/{gw}"));
        }
    }
    let (policies, dr_status) = destination_rule::finish(rules, &waypoints_of);
    out.backend_policies = policies;
    out.status = routes.status;
    out.status.extend(vs.status);
    out.status.extend(dr_status);
    out.status
        .extend(status::gateways(index, &bindings, &routes.attached));
    out.status.extend(status::waypoint_bound(&bindings));
    entries.add_status(&mut out.status);
    let route_names = out.routes.keys().cloned().collect();
    let l7 = waypoint_policy::compute_all(
        &waypoint_policy::Ctx {
            index,
            cfg,
            bindings: &bindings,
            route_scopes: &out.route_scopes,
            routes: &route_names,
        },
        &out.addresses,
    );
    out.waypoint_authorizations = l7.authorizations;
    out.waypoint_authorization_scopes = l7.authorization_scopes;
    out.request_authentications = l7.request_authentications;
    out.request_authentication_scopes = l7.request_authentication_scopes;
    out.rate_limits = l7.rate_limits;
    out.rate_limit_scopes = l7.rate_limit_scopes;
    out.status.extend(ztunnel_status);
    out.status.extend(l7.status);
    out.deployments = deployer::deployments(index, &cfg.deployer);
    out
}

/// The service hostname of `<name>` in `<ns>`.
pub fn service_hostname(name: &str, ns: &str, cfg: &ComputeConfig) -> String {
    format!("{name}.{ns}.svc.{}", cfg.domain_suffix)
}

pub fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

pub fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Label map of an object (empty when unset).
pub(crate) fn labels_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}
