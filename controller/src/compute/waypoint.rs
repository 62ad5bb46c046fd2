//! Waypoint binding (`istio.io/use-waypoint`), following istiod's `waypoints.go`.
//!
//! A Gateway is a waypoint when its class is a waypoint class and it has exactly one listener, on port 15008 with
//! protocol `HBONE` ([`check_gateway`]); anything else is not a waypoint at all. Its address is `status.addresses`
//! or `spec.addresses` when set, else its Service hostname `<gw>.<ns>.svc.<suffix>` (what the deployer creates),
//! so nobody has to write Gateway status. It is *ready* only when at least one pod labelled
//! `gateway.networking.k8s.io/gateway-name=<gw>` in its namespace is ready ([`pod_ready`]); until then objects
//! bound to it get no waypoint in WDS (traffic stays direct) and their status says `WaypointIsNotReady`.
//!
//! Precedence for an object: its own `use-waypoint` label (including `none`), then a per-service-account
//! waypoint of its namespace (see [`FOR_SERVICE_ACCOUNT`]), then its namespace's `use-waypoint` label. Then the
//! checks: the Gateway exists, accepts the traffic type (`istio.io/waypoint-for`), admits the object's namespace
//! (`allowedRoutes.namespaces`) and is ready. Waypoint pods and Services themselves never get a waypoint.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_proto::workload::{GatewayAddress, NamespacedHostname, NetworkAddress, gateway_address};
use k8s_openapi::api::core::v1 as core;

use super::{ComputeConfig, ip_bytes, labels_of, service_hostname};
use crate::index::{Index, Name};
use crate::sources::Gateway;
use crate::sources::routes::RouteNamespaces;

pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
pub const MANAGED: &str = "gateway.istio.io/managed";
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
/// Gateway annotation (Istio 1.18-1.21 semantics): the waypoint serves the pods of its namespace that run as this
/// service account. It is equivalent to `istio.io/waypoint-for: all` restricted to one service account: pods
/// running as the account get it for pod-addressed traffic (`Workload.waypoint`), and Services of the namespace
/// whose selected pods all run as it get it for service-addressed traffic (`Service.waypoint`). It takes
/// precedence over the namespace's `use-waypoint`; an object's own `use-waypoint` label (including `none`) wins.
pub const FOR_SERVICE_ACCOUNT: &str = "istio.io/for-service-account";
/// GatewayClasses whose Gateways are waypoints.
pub const WAYPOINT_CLASSES: [&str; 3] = [
    "ambit-waypoint",
    "istio-waypoint",
    "istio-agentgateway-waypoint",
];
/// Port of the waypoint's HBONE listener.
pub const HBONE_PORT: u32 = 15008;
pub const INVALID_LISTENERS: &str =
    "Expected a single listener on port 15008 with protocol \"HBONE\"";

/// Which traffic a waypoint accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaypointFor {
    Service,
    Workload,
    All,
    None,
}

/// Which kind of object asks for a waypoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Service,
    Workload,
}

impl Target {
    fn traffic(self) -> &'static str {
        match self {
            Target::Service => "service",
            Target::Workload => "workload",
        }
    }
}

/// What kind of Gateway this is, for us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatewayCheck {
    /// Not of a waypoint class: somebody else's Gateway.
    NotWaypoint,
    /// A waypoint class with listeners other than the single HBONE one: rejected, never bound.
    InvalidListeners,
    Valid,
}

pub fn check_gateway(gw: &Gateway) -> GatewayCheck {
    if !WAYPOINT_CLASSES.contains(&gw.spec.gateway_class_name.as_str()) {
        return GatewayCheck::NotWaypoint;
    }
    match gw.spec.listeners.as_slice() {
        [l] if l.port == HBONE_PORT && l.protocol == "HBONE" => GatewayCheck::Valid,
        _ => GatewayCheck::InvalidListeners,
    }
}

/// `allowedRoutes.namespaces` of the HBONE listener: who may attach (bind objects or routes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedFrom {
    Same,
    All,
    /// `matchLabels` on the namespace; `None` when `matchExpressions` are used (unsupported: selects nothing).
    Selector(Option<BTreeMap<String, String>>),
}

impl AllowedFrom {
    fn from_spec(ns: Option<&RouteNamespaces>) -> AllowedFrom {
        match ns.and_then(|n| n.from.as_deref()) {
            Some("All") => AllowedFrom::All,
            Some("Selector") => {
                let sel = ns.and_then(|n| n.selector.as_ref());
                AllowedFrom::Selector(match sel {
                    Some(s) if !s.match_expressions.is_empty() => None,
                    Some(s) => Some(s.match_labels.clone()),
                    None => Some(BTreeMap::new()),
                })
            }
            _ => AllowedFrom::Same,
        }
    }

    /// Whether an object in `ns` (with labels `ns_labels`) may attach to a Gateway in `gw_ns`.
    pub fn admits(&self, gw_ns: &str, ns: &str, ns_labels: &BTreeMap<String, String>) -> bool {
        match self {
            AllowedFrom::Same => gw_ns == ns,
            AllowedFrom::All => true,
            AllowedFrom::Selector(Some(sel)) => {
                sel.iter().all(|(k, v)| ns_labels.get(k) == Some(v))
            }
            AllowedFrom::Selector(None) => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Waypoint {
    pub address: GatewayAddress,
    pub accepts: WaypointFor,
    /// At least one ready pod runs it.
    pub ready: bool,
    pub allowed: AllowedFrom,
    /// `istio.io/for-service-account`.
    pub service_account: Option<String>,
    /// The service accounts the waypoint itself runs as (its pods'; the deployer's `<gateway name>` until a pod
    /// exists), sorted: the identities destination ztunnels see on traffic it forwards.
    pub identities: Vec<String>,
}

impl Waypoint {
    fn accepts(&self, target: Target) -> bool {
        self.service_account.is_some()
            || matches!(
                (self.accepts, target),
                (WaypointFor::All, _)
                    | (WaypointFor::Service, Target::Service)
                    | (WaypointFor::Workload, Target::Workload)
            )
    }
}

/// Whether a pod counts as ready: its `Ready` condition when it has one; otherwise (manifests written by hand or
/// by a runner that does not report conditions) when it has an IP and its phase is `Running` or unset.
pub fn pod_ready(pod: &core::Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
    {
        return c.status == "True";
    }
    let has_ip = status.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
        || status.pod_ips.iter().flatten().any(|p| !p.ip.is_empty());
    has_ip && matches!(status.phase.as_deref(), None | Some("Running"))
}

/// The address a waypoint Gateway is reached at (whether or not it is ready).
pub fn gateway_address(ns: &str, name: &str, gw: &Gateway, cfg: &ComputeConfig) -> GatewayAddress {
    let published = gw
        .status
        .as_ref()
        .and_then(|s| s.addresses.first())
        .or(gw.spec.addresses.first());
    let hostname = |h: String| {
        gateway_address::Destination::Hostname(NamespacedHostname {
            namespace: ns.to_owned(),
            hostname: h,
        })
    };
    let destination = match published {
        Some(a) => match (a.kind.as_deref(), a.value.parse::<IpAddr>()) {
            (None | Some("IPAddress"), Ok(ip)) => {
                gateway_address::Destination::Address(NetworkAddress {
                    network: cfg.network.clone(),
                    address: ip_bytes(ip),
                    length: None,
                })
            }
            _ => hostname(a.value.clone()),
        },
        None => hostname(service_hostname(name, ns, cfg)),
    };
    GatewayAddress {
        destination: Some(destination),
        hbone_mtls_port: HBONE_PORT,
    }
}

/// Every valid waypoint Gateway, ready or not.
pub fn waypoints(index: &Index, cfg: &ComputeConfig) -> BTreeMap<Name, Waypoint> {
    let mut ready: BTreeMap<(&str, &str), bool> = BTreeMap::new();
    let mut accounts: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for ((ns, _), pod) in &index.pods {
        if let Some(gw) = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(GATEWAY_NAME))
        {
            let r = ready.entry((ns.as_str(), gw.as_str())).or_default();
            *r = *r || pod_ready(pod);
            accounts
                .entry((ns.as_str(), gw.as_str()))
                .or_default()
                .push(pod_service_account(pod).to_owned());
        }
    }
    let mut out = BTreeMap::new();
    for ((ns, name), gw) in &index.gateways {
        if check_gateway(gw) != GatewayCheck::Valid {
            continue;
        }
        let labels = labels_of(&gw.metadata);
        let accepts = match labels.get(WAYPOINT_FOR).map(String::as_str) {
            None | Some("service") => WaypointFor::Service,
            Some("workload") => WaypointFor::Workload,
            Some("all") => WaypointFor::All,
            Some(_) => WaypointFor::None,
        };
        let allowed = AllowedFrom::from_spec(
            gw.spec
                .listeners
                .first()
                .and_then(|l| l.allowed_routes.as_ref())
                .and_then(|a| a.namespaces.as_ref()),
        );
        let service_account = gw
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(FOR_SERVICE_ACCOUNT))
            .filter(|s| !s.is_empty())
            .cloned();
        out.insert(
            (ns.clone(), name.clone()),
            Waypoint {
                address: gateway_address(ns, name, gw, cfg),
                accepts,
                ready: ready
                    .get(&(ns.as_str(), name.as_str()))
                    .copied()
                    .unwrap_or(false),
                allowed,
                service_account,
                identities: {
                    let mut sas = accounts
                        .remove(&(ns.as_str(), name.as_str()))
                        .unwrap_or_else(|| vec![name.clone()]);
                    sas.sort();
                    sas.dedup();
                    sas
                },
            },
        );
    }
    out
}

/// Why an object that asked for a waypoint did not get it (the `istio.io/WaypointBound` reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    NotReady,
    UnsupportedTrafficType,
    AttachmentDenied,
}

/// The outcome for an object that asks for a waypoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    pub waypoint: Name,
    /// `Ok(address)` when bound.
    pub outcome: Result<GatewayAddress, Refusal>,
}

impl Binding {
    pub fn address(&self) -> Option<GatewayAddress> {
        self.outcome.as_ref().ok().cloned()
    }

    /// `(status, reason, message)` of the `istio.io/WaypointBound` condition.
    pub fn condition(&self, target: Target) -> (bool, &'static str, String) {
        let (ns, name) = &self.waypoint;
        match self.outcome {
            Ok(_) => (
                true,
                "WaypointAccepted",
                format!("Successfully attached to waypoint {ns}/{name}"),
            ),
            Err(Refusal::NotFound) => (
                false,
                "WaypointIsNotReady",
                format!("waypoint {ns}/{name} not found"),
            ),
            Err(Refusal::NotReady) => (
                false,
                "WaypointIsNotReady",
                format!("waypoint {ns}/{name} has no ready pod"),
            ),
            Err(Refusal::UnsupportedTrafficType) => (
                false,
                "UnsupportedTrafficType",
                format!(
                    "waypoint {ns}/{name} does not support {} traffic",
                    target.traffic()
                ),
            ),
            Err(Refusal::AttachmentDenied) => (
                false,
                "AttachmentDenied",
                format!("waypoint {ns}/{name} does not allow attachment from this namespace"),
            ),
        }
    }
}

/// The object asking for a waypoint.
pub struct Subject<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub ns: &'a str,
    pub ns_labels: &'a BTreeMap<String, String>,
    pub target: Target,
    /// The pod's service account, or the one all of a Service's pods share.
    pub service_account: Option<&'a str>,
}

/// The binding of an object, or `None` when it does not ask for (or opts out of) a waypoint.
pub fn resolve(s: &Subject<'_>, waypoints: &BTreeMap<Name, Waypoint>) -> Option<Binding> {
    let lookup = |l: &BTreeMap<String, String>| -> Option<Option<Name>> {
        let name = l.get(USE_WAYPOINT)?;
        if name == "none" {
            return Some(None);
        }
        let wns = l
            .get(USE_WAYPOINT_NAMESPACE)
            .filter(|s| !s.is_empty())
            .map_or(s.ns, String::as_str);
        Some(Some((wns.to_owned(), name.clone())))
    };
    let by_sa = || {
        let sa = s.service_account?;
        waypoints
            .iter()
            .find(|((ns, _), w)| ns == s.ns && w.service_account.as_deref() == Some(sa))
            .map(|(k, _)| k.clone())
    };
    let (key, inherited) = match lookup(s.labels) {
        Some(k) => (k?, false),
        None => match by_sa() {
            Some(k) => (k, false),
            None => (lookup(s.ns_labels)??, true),
        },
    };
    let outcome = match waypoints.get(&key) {
        None => Err(Refusal::NotFound),
        Some(w) if !w.accepts(s.target) => {
            // A workload inheriting its namespace's waypoint is silently not bound.
            if inherited && s.target == Target::Workload {
                return None;
            }
            Err(Refusal::UnsupportedTrafficType)
        }
        Some(w) if !w.allowed.admits(&key.0, s.ns, s.ns_labels) => Err(Refusal::AttachmentDenied),
        Some(w) if !w.ready => Err(Refusal::NotReady),
        Some(w) => Ok(w.address.clone()),
    };
    Some(Binding {
        waypoint: key,
        outcome,
    })
}

/// Whether the object is (part of) a waypoint itself; those never get a waypoint.
pub fn is_waypoint_object(
    labels: &BTreeMap<String, String>,
    ns: &str,
    name: Option<&str>,
    waypoints: &BTreeMap<Name, Waypoint>,
) -> bool {
    if labels
        .get(MANAGED)
        .is_some_and(|v| v == "istio.io-mesh-controller")
    {
        return true;
    }
    if let Some(gw) = labels.get(GATEWAY_NAME)
        && waypoints.contains_key(&(ns.to_owned(), gw.clone()))
    {
        return true;
    }
    name.is_some_and(|n| waypoints.contains_key(&(ns.to_owned(), n.to_owned())))
}

/// The bindings of every Service and pod that asks for a waypoint, computed once per [`super::compute`].
#[derive(Clone, Debug, Default)]
pub struct Bindings {
    pub waypoints: BTreeMap<Name, Waypoint>,
    pub services: BTreeMap<Name, Binding>,
    pub pods: BTreeMap<Name, Binding>,
    /// ServiceEntries that ask for a waypoint (service traffic, as Services).
    pub service_entries: BTreeMap<Name, Binding>,
}

fn pod_service_account(pod: &core::Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
}

pub fn bindings(index: &Index, cfg: &ComputeConfig) -> Bindings {
    let waypoints = waypoints(index, cfg);
    let sa_namespaces: Vec<&str> = waypoints
        .iter()
        .filter(|(_, w)| w.service_account.is_some())
        .map(|((ns, _), _)| ns.as_str())
        .collect();
    let mut out = Bindings::default();
    for ((ns, name), svc) in &index.services {
        let labels = labels_of(&svc.metadata);
        if is_waypoint_object(&labels, ns, Some(name), &waypoints) {
            continue;
        }
        // The service account all selected pods share (only looked for where an SA waypoint exists).
        let shared_sa = if sa_namespaces.contains(&ns.as_str()) {
            let mut sas = index
                .pods
                .range((ns.clone(), String::new())..)
                .take_while(|((pns, _), _)| pns == ns)
                .filter(|(_, p)| super::workload::selects(svc, &labels_of(&p.metadata)))
                .map(|(_, p)| pod_service_account(p));
            sas.next()
                .filter(|first| sas.all(|sa| sa == *first))
                .map(str::to_owned)
        } else {
            None
        };
        let ns_labels = index.namespace_labels(ns);
        let subject = Subject {
            labels: &labels,
            ns,
            ns_labels: &ns_labels,
            target: Target::Service,
            service_account: shared_sa.as_deref(),
        };
        if let Some(b) = resolve(&subject, &waypoints) {
            out.services.insert((ns.clone(), name.clone()), b);
        }
    }
    for ((ns, name), se) in &index.service_entries {
        let labels = labels_of(&se.metadata);
        let ns_labels = index.namespace_labels(ns);
        let subject = Subject {
            labels: &labels,
            ns,
            ns_labels: &ns_labels,
            target: Target::Service,
            service_account: None,
        };
        if let Some(b) = resolve(&subject, &waypoints) {
            out.service_entries.insert((ns.clone(), name.clone()), b);
        }
    }
    for ((ns, name), pod) in &index.pods {
        let labels = labels_of(&pod.metadata);
        if is_waypoint_object(&labels, ns, None, &waypoints) {
            continue;
        }
        let ns_labels = index.namespace_labels(ns);
        let subject = Subject {
            labels: &labels,
            ns,
            ns_labels: &ns_labels,
            target: Target::Workload,
            service_account: Some(pod_service_account(pod)),
        };
        if let Some(b) = resolve(&subject, &waypoints) {
            out.pods.insert((ns.clone(), name.clone()), b);
        }
    }
    out.waypoints = waypoints;
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn wp(h: &str, accepts: WaypointFor, ready: bool, allowed: AllowedFrom) -> Waypoint {
        Waypoint {
            address: GatewayAddress {
                destination: Some(gateway_address::Destination::Hostname(NamespacedHostname {
                    namespace: "a".into(),
                    hostname: h.into(),
                })),
                hbone_mtls_port: HBONE_PORT,
            },
            accepts,
            ready,
            allowed,
            service_account: None,
            identities: vec![h.into()],
        }
    }

    fn wps() -> BTreeMap<Name, Waypoint> {
        let mut sa = wp("sa", WaypointFor::Service, true, AllowedFrom::Same);
        sa.service_account = Some("reviews".into());
        BTreeMap::from([
            (
                ("a".into(), "svc-wp".into()),
                wp("svc", WaypointFor::Service, true, AllowedFrom::Same),
            ),
            (
                ("a".into(), "all-wp".into()),
                wp("all", WaypointFor::All, true, AllowedFrom::All),
            ),
            (
                ("a".into(), "sel-wp".into()),
                wp(
                    "sel",
                    WaypointFor::All,
                    true,
                    AllowedFrom::Selector(Some(map(&[("team", "x")]))),
                ),
            ),
            (
                ("a".into(), "cold".into()),
                wp("cold", WaypointFor::All, false, AllowedFrom::Same),
            ),
            (("a".into(), "sa-wp".into()), sa),
        ])
    }

    fn run(
        labels: &[(&str, &str)],
        ns: &str,
        ns_labels: &[(&str, &str)],
        target: Target,
        sa: Option<&str>,
    ) -> Option<Result<String, Refusal>> {
        let (l, nl) = (map(labels), map(ns_labels));
        let s = Subject {
            labels: &l,
            ns,
            ns_labels: &nl,
            target,
            service_account: sa,
        };
        let b = resolve(&s, &wps())?;
        Some(b.outcome.map(|a| match a.destination {
            Some(gateway_address::Destination::Hostname(h)) => h.hostname,
            _ => String::new(),
        }))
    }

    #[test]
    fn object_label_beats_service_account_beats_namespace() {
        let ns = [(USE_WAYPOINT, "all-wp")];
        let w = Target::Workload;
        assert_eq!(run(&[], "a", &ns, w, None), Some(Ok("all".into())));
        assert_eq!(run(&[(USE_WAYPOINT, "none")], "a", &ns, w, None), None);
        assert_eq!(
            run(&[], "a", &ns, w, Some("reviews")),
            Some(Ok("sa".into()))
        );
        assert_eq!(
            run(&[(USE_WAYPOINT, "none")], "a", &ns, w, Some("reviews")),
            None
        );
        assert_eq!(
            run(
                &[(USE_WAYPOINT, "svc-wp")],
                "a",
                &ns,
                Target::Service,
                Some("reviews")
            ),
            Some(Ok("svc".into()))
        );
        // The SA waypoint serves only its own namespace.
        assert_eq!(run(&[], "b", &[], w, Some("reviews")), None);
    }

    #[test]
    fn refusals() {
        let w = Target::Workload;
        let s = Target::Service;
        let r = |l: &[(&str, &str)], ns, nl: &[(&str, &str)], t| run(l, ns, nl, t, None);
        assert_eq!(
            r(&[(USE_WAYPOINT, "svc-wp")], "a", &[], w),
            Some(Err(Refusal::UnsupportedTrafficType))
        );
        // Inherited by a workload from its namespace: silently nothing; a Service is told.
        assert_eq!(r(&[], "a", &[(USE_WAYPOINT, "svc-wp")], w), None);
        assert_eq!(
            r(&[], "a", &[(USE_WAYPOINT, "svc-wp")], s),
            Some(Ok("svc".into()))
        );
        assert_eq!(
            r(&[(USE_WAYPOINT, "missing")], "a", &[], s),
            Some(Err(Refusal::NotFound))
        );
        assert_eq!(
            r(&[(USE_WAYPOINT, "cold")], "a", &[], s),
            Some(Err(Refusal::NotReady))
        );
        // Cross-namespace: Same refuses, All admits, Selector looks at the namespace's labels.
        let x = |name: &'static str| [(USE_WAYPOINT, name), (USE_WAYPOINT_NAMESPACE, "a")];
        assert_eq!(
            r(&x("svc-wp"), "b", &[], s),
            Some(Err(Refusal::AttachmentDenied))
        );
        assert_eq!(r(&x("all-wp"), "b", &[], s), Some(Ok("all".into())));
        assert_eq!(
            r(&x("sel-wp"), "b", &[], s),
            Some(Err(Refusal::AttachmentDenied))
        );
        assert_eq!(
            r(&x("sel-wp"), "b", &[("team", "x")], s),
            Some(Ok("sel".into()))
        );
    }

    #[test]
    fn pod_readiness() {
        let pod = |s: &str| -> core::Pod { serde_yaml::from_str(s).unwrap() };
        assert!(pod_ready(&pod("status: {podIP: 10.0.0.1}")));
        assert!(pod_ready(&pod("status: {podIP: 10.0.0.1, phase: Running}")));
        assert!(!pod_ready(&pod(
            "status: {podIP: 10.0.0.1, phase: Pending}"
        )));
        assert!(!pod_ready(&pod("status: {phase: Running}")));
        assert!(!pod_ready(&pod("metadata: {name: x}")));
        assert!(!pod_ready(&pod(
            "status: {podIP: 10.0.0.1, conditions: [{type: Ready, status: 'False'}]}"
        )));
        assert!(pod_ready(&pod(
            "status: {conditions: [{type: Ready, status: 'True'}]}"
        )));
    }
}
