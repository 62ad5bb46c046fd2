//! `ambit analyze`'s findings: what in a mesh's configuration will not do what its author meant, each with a
//! stable code, a severity, the object and what to do. Computed from the object [`Index`] and the [`Resources`]
//! the controller computed from it (the same conditions it writes as status), so the analysis and the mesh cannot
//! disagree.
//!
//! | code | severity | finding |
//! |---|---|---|
//! | AMB0000 | Error | a manifest the controller could not read |
//! | AMB0001 | Warning | policies in a namespace where no pod is in the mesh |
//! | AMB0002 | Error | an object bound to a waypoint that is missing or not ready |
//! | AMB0003 | Error | `use-waypoint` to a waypoint that does not take that traffic type |
//! | AMB0004 | Error | `use-waypoint` to a waypoint that does not admit the object's namespace |
//! | AMB0005 | Warning | an AuthorizationPolicy for ztunnel with L7 fields (what is enforced instead) |
//! | AMB0006 | Error | a service behind a waypoint whose pods' L4 policies refuse the waypoint's identity |
//! | AMB0007 | Error | a route whose backend does not resolve |
//! | AMB0008 | Warning | a VirtualService overridden by Gateway API routes on the same Service |
//! | AMB0009 | Warning | STRICT mTLS for workloads while pods outside the mesh exist that cannot call them |
//! | AMB0010 | Error | a mesh label with a value it cannot have (`dataplane-mode: ambinet`) |
//! | AMB0011 | Warning | a label key one typo away from a mesh label |
//! | AMB0012 | Warning | `ambit.dev/waypoint-required` on something no waypoint is bound to |
//! | AMB0013 | Warning | a waypoint policy not (fully) applied (`WaypointAccepted` False) |
//! | AMB0014 | Error | a route not accepted by its parent, or a waypoint Gateway not accepted |
//! | AMB0015 | Warning | a ServiceEntry part Ambit does not send (wildcards, DNS endpoints) |
//! | AMB0016 | Warning | any other False condition the controller wrote |

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_core::identity::Identity;
use ambit_core::rbac::{self, Connection};
use ambit_proto::workload::address;
use serde::Serialize;
use serde_json::Value;

use crate::compute::waypoint::{USE_WAYPOINT, WAYPOINT_FOR};
use crate::compute::waypoint_guard::WAYPOINT_REQUIRED;
use crate::compute::workload::DATAPLANE_MODE;
use crate::compute::{ComputeConfig, Resources, ip_from_bytes, labels_of};
use crate::index::Index;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Severity {
    Error,
    Warning,
    Info,
}

/// One finding, as `ambit analyze` prints it: `Error [AMB0002] (Service demo/echo) message`, then the fix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    pub code: &'static str,
    pub severity: Severity,
    /// `Kind ns/name` (or `Kind name` for cluster-scoped objects, the file for AMB0000).
    pub object: String,
    pub namespace: String,
    pub message: String,
    pub fix: String,
}

/// The kinds as status keys spell them (`<kind>/<ns>/<name>`) and as people do.
fn kind_name(key_kind: &str) -> &str {
    match key_kind {
        "service" => "Service",
        "pod" => "Pod",
        "serviceentry" => "ServiceEntry",
        "gateway" => "Gateway",
        "httproute" => "HTTPRoute",
        "grpcroute" => "GRPCRoute",
        "tcproute" => "TCPRoute",
        "authorizationpolicy" => "AuthorizationPolicy",
        "requestauthentication" => "RequestAuthentication",
        "ratelimitpolicy" => "RateLimitPolicy",
        "virtualservice" => "VirtualService",
        "destinationrule" => "DestinationRule",
        "faultinjection" => "FaultInjection",
        other => other,
    }
}

fn finding(
    code: &'static str,
    severity: Severity,
    (kind, ns, name): (&str, &str, &str),
    message: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        code,
        severity,
        object: if ns.is_empty() {
            format!("{kind} {name}")
        } else {
            format!("{kind} {ns}/{name}")
        },
        namespace: ns.to_owned(),
        message: message.into(),
        fix: fix.into(),
    }
}

/// Every finding of the mesh, sorted (errors first). `manifest_errors` are `(file, error)` pairs from the source.
pub fn analyze(
    index: &Index,
    res: &Resources,
    cfg: &ComputeConfig,
    manifest_errors: &[(String, String)],
) -> Vec<Finding> {
    let mut out: Vec<Finding> = manifest_errors
        .iter()
        .map(|(file, e)| {
            finding(
                "AMB0000",
                Severity::Error,
                ("File", "", file),
                e.clone(),
                "fix the document; the rest of the file still applies only if it parses",
            )
        })
        .collect();
    from_status(res, &mut out);
    labels(index, &mut out);
    unenrolled_namespaces(index, cfg, &mut out);
    waypoint_identity(index, res, cfg, &mut out);
    strict_with_uncaptured(index, res, cfg, &mut out);
    required_without_waypoint(index, res, &mut out);
    out.sort();
    out.dedup();
    out
}

/// The conditions the controller wrote that say something does not work.
fn from_status(res: &Resources, out: &mut Vec<Finding>) {
    for (key, status) in &res.status {
        let mut parts = key.splitn(3, '/');
        let (Some(k), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let kind = kind_name(k);
        let object = (kind, ns, name);
        let own = status["conditions"].as_array().into_iter().flatten();
        let parents = status["parents"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|p| p["conditions"].as_array().into_iter().flatten());
        for c in own.chain(parents) {
            let (t, reason) = (
                c["type"].as_str().unwrap_or_default(),
                c["reason"].as_str().unwrap_or_default(),
            );
            // Accepted with caveats is still worth saying (istiod writes ZtunnelAccepted True UnsupportedValue,
            // and PartiallyInvalid as True too).
            let caveat = matches!(reason, "UnsupportedValue" | "PartiallyInvalid");
            if c["status"] != "False" && !caveat {
                continue;
            }
            let message = c["message"].as_str().unwrap_or_default().to_owned();
            let f = |code, sev, fix: &str| finding(code, sev, object, message.clone(), fix);
            out.push(match (t, reason) {
                ("istio.io/WaypointBound", "WaypointIsNotReady") => f(
                    "AMB0002",
                    Severity::Error,
                    "deploy the waypoint (`ambit waypoint apply`) or fix its Gateway; until it is ready traffic goes \
                     direct without L7 policy (ambit.dev/waypoint-required refuses it instead)",
                ),
                ("istio.io/WaypointBound", "UnsupportedTrafficType") => f(
                    "AMB0003",
                    Severity::Error,
                    "set istio.io/waypoint-for on the waypoint Gateway to `service`, `workload` or `all` to match \
                     what uses it",
                ),
                ("istio.io/WaypointBound", "AttachmentDenied") => f(
                    "AMB0004",
                    Severity::Error,
                    "allow this namespace in the Gateway's listener allowedRoutes.namespaces",
                ),
                ("ZtunnelAccepted", _) => f(
                    "AMB0005",
                    Severity::Warning,
                    "move the L7 rules to a policy with targetRefs (a Service or the waypoint Gateway) so a waypoint \
                     enforces them",
                ),
                ("WaypointAccepted", _) => f(
                    "AMB0013",
                    Severity::Warning,
                    "bind the target to a waypoint (istio.io/use-waypoint) or fix the fields named",
                ),
                ("ResolvedRefs", "RefNotPermitted") => f(
                    "AMB0007",
                    Severity::Error,
                    "create a ReferenceGrant in the backend's namespace whose `from` names this route's kind and \
                     namespace and whose `to` names the backend, or use a backend in the route's namespace; requests \
                     routed there get 500",
                ),
                ("ResolvedRefs", _) => f(
                    "AMB0007",
                    Severity::Error,
                    "create the backend Service or fix the backendRef; requests routed there get 500",
                ),
                (_, "OverriddenByGatewayAPI") => f(
                    "AMB0008",
                    Severity::Warning,
                    "use one API per Service: remove the VirtualService or the HTTPRoute",
                ),
                ("Accepted", "PartiallyInvalid") => f(
                    "AMB0014",
                    Severity::Warning,
                    "fix the fields the message names; the rest of the object applies",
                ),
                ("Accepted", _) => f(
                    "AMB0014",
                    Severity::Error,
                    "fix the object as the message says; it is not applied",
                ),
                ("ambit.dev/Supported", _) => f(
                    "AMB0015",
                    Severity::Warning,
                    "use explicit hosts and IP endpoints",
                ),
                ("Programmed", _) => continue,
                _ => f(
                    "AMB0016",
                    Severity::Warning,
                    &format!("see the object's {t} condition ({reason})"),
                ),
            });
        }
    }
}

const MESH_LABELS: [&str; 6] = [
    DATAPLANE_MODE,
    USE_WAYPOINT,
    "istio.io/use-waypoint-namespace",
    WAYPOINT_FOR,
    "istio.io/ingress-use-waypoint",
    WAYPOINT_REQUIRED,
];

/// Levenshtein distance, for label keys and values (short strings).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn check_labels(
    object: (&str, &str, &str),
    labels: &BTreeMap<String, String>,
    out: &mut Vec<Finding>,
) {
    let allowed: [(&str, &[&str]); 3] = [
        (DATAPLANE_MODE, &["ambient", "none"]),
        (WAYPOINT_FOR, &["service", "workload", "all", "none"]),
        (WAYPOINT_REQUIRED, &["true", "false"]),
    ];
    for (key, value) in labels {
        if let Some((_, values)) = allowed.iter().find(|(k, _)| k == key)
            && !values.contains(&value.as_str())
        {
            let near = values.iter().min_by_key(|v| distance(value, v)).copied();
            out.push(finding(
                "AMB0010",
                Severity::Error,
                object,
                format!("{key}: {value:?} is not one of {values:?}"),
                match near {
                    Some(v) if distance(value, v) <= 2 => format!("did you mean {key}: {v}?"),
                    _ => format!("use one of {values:?}"),
                },
            ));
        }
        if !MESH_LABELS.contains(&key.as_str())
            && let Some(m) = MESH_LABELS
                .iter()
                .find(|m| (1..=2).contains(&distance(key, m)))
        {
            out.push(finding(
                "AMB0011",
                Severity::Warning,
                object,
                format!("label {key} is not a mesh label; it has no effect"),
                format!("did you mean {m}?"),
            ));
        }
    }
}

fn labels(index: &Index, out: &mut Vec<Finding>) {
    for (name, ns) in &index.namespaces {
        check_labels(("Namespace", "", name), &labels_of(&ns.metadata), out);
    }
    for ((ns, name), p) in &index.pods {
        check_labels(("Pod", ns, name), &labels_of(&p.metadata), out);
    }
    for ((ns, name), s) in &index.services {
        check_labels(("Service", ns, name), &labels_of(&s.metadata), out);
    }
    for ((ns, name), g) in &index.gateways {
        check_labels(("Gateway", ns, name), &labels_of(&g.metadata), out);
    }
}

/// Namespaces with policies or routes but no pod in the mesh: nothing enforces them.
fn unenrolled_namespaces(index: &Index, cfg: &ComputeConfig, out: &mut Vec<Finding>) {
    let mut meshed: BTreeSet<&str> = BTreeSet::new();
    let mut has_pods: BTreeSet<&str> = BTreeSet::new();
    for ((ns, _), pod) in &index.pods {
        has_pods.insert(ns);
        let labels = labels_of(&pod.metadata);
        let ann = pod.metadata.annotations.clone().unwrap_or_default();
        if crate::compute::workload::enrolled(&labels, &ann, ns, &index.namespace_labels(ns), cfg) {
            meshed.insert(ns);
        }
    }
    let mut policies: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (ns, name) in index.authorization_policies.keys() {
        policies
            .entry(ns)
            .or_default()
            .push(format!("AuthorizationPolicy {name}"));
    }
    for (ns, name) in index.peer_authentications.keys() {
        policies
            .entry(ns)
            .or_default()
            .push(format!("PeerAuthentication {name}"));
    }
    for (ns, name) in index.request_authentications.keys() {
        policies
            .entry(ns)
            .or_default()
            .push(format!("RequestAuthentication {name}"));
    }
    for (ns, list) in policies {
        if ns == cfg.root_namespace || meshed.contains(ns) || !has_pods.contains(ns) {
            continue;
        }
        out.push(finding(
            "AMB0001",
            Severity::Warning,
            ("Namespace", "", ns),
            format!(
                "no pod of the namespace is in the mesh, so its policies have no effect: {}",
                list.join(", ")
            ),
            format!("kubectl label namespace {ns} istio.io/dataplane-mode=ambient"),
        ));
    }
}

/// Services behind a waypoint whose pods' L4 policies refuse the waypoint's identity (spec 2.3's two-layer trap):
/// every request through the waypoint fails at the destination ztunnel.
fn waypoint_identity(index: &Index, res: &Resources, cfg: &ComputeConfig, out: &mut Vec<Finding>) {
    let all: Vec<Arc<rbac::Authorization>> = res
        .authorizations
        .values()
        .filter_map(|a| rbac::Authorization::try_from(a.clone()).ok())
        .map(Arc::new)
        .collect();
    let by_key: BTreeMap<String, &Arc<rbac::Authorization>> =
        all.iter().map(|p| (p.key(), p)).collect();
    // Workloads that are endpoints of each service key.
    let mut endpoints: BTreeMap<&str, Vec<&ambit_proto::workload::Workload>> = BTreeMap::new();
    for a in res.addresses.values() {
        if let Some(address::Type::Workload(w)) = &a.r#type {
            for svc in w.services.keys() {
                endpoints.entry(svc.as_str()).or_default().push(w);
            }
        }
    }
    // The same bindings and waypoint identities the compute used.
    let bindings = crate::compute::waypoint::bindings(index, cfg);
    for ((ns, name), b) in &bindings.services {
        if b.outcome.is_err() {
            continue;
        }
        let wp = &b.waypoint;
        let Some(w) = bindings
            .waypoints
            .get(wp)
            .and_then(|w| w.identities.first())
        else {
            continue;
        };
        let svc_key = format!("{ns}/{}", crate::compute::service_hostname(name, ns, cfg));
        for wl in endpoints.get(svc_key.as_str()).into_iter().flatten() {
            let Some(ip) = wl.addresses.first().and_then(|a| ip_from_bytes(a)) else {
                continue;
            };
            let policies = rbac::select(
                &all,
                |n| by_key.get(n).copied(),
                &wl.namespace,
                &wl.authorization_policies,
                |_| {},
            );
            let ports = wl.services[&svc_key].ports.iter().map(|p| p.target_port);
            for port in ports.filter(|p| *p != 0) {
                let conn = Connection {
                    src: SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0),
                    src_identity: Some(Identity {
                        trust_domain: cfg.trust_domain.clone(),
                        namespace: wp.0.clone(),
                        service_account: w.clone(),
                    }),
                    dst: SocketAddr::new(ip, u16::try_from(port).unwrap_or(0)),
                };
                if let Err(e) = rbac::evaluate(&policies, &conn) {
                    out.push(finding(
                        "AMB0006",
                        Severity::Error,
                        ("Service", ns, name),
                        format!(
                            "traffic through waypoint {}/{} reaches pod {}/{} port {port} as {}/ns/{}/sa/{w}, which its L4 policies refuse ({e})",
                            wp.0, wp.1, wl.namespace, wl.name, cfg.trust_domain, wp.0
                        ),
                        format!(
                            "allow principal {}/ns/{}/sa/{w} in the pod's AuthorizationPolicy, move client rules to the \
                             waypoint (targetRefs), or set PILOT_AUTO_ALLOW_WAYPOINT_POLICY=true",
                            cfg.trust_domain, wp.0
                        ),
                    ));
                    break;
                }
            }
        }
    }
}

/// STRICT PeerAuthentication while pods outside the mesh (in namespaces that are not excluded) exist: they
/// cannot call the workloads it covers.
fn strict_with_uncaptured(
    index: &Index,
    res: &Resources,
    cfg: &ComputeConfig,
    out: &mut Vec<Finding>,
) {
    let strict: Vec<&String> = index
        .peer_authentications
        .iter()
        .filter(|(_, pa)| {
            pa.spec
                .mtls
                .as_ref()
                .and_then(|m| m.mode.as_deref())
                .is_some_and(|m| m == "STRICT")
        })
        .map(|((ns, _), _)| ns)
        .collect();
    if strict.is_empty() {
        return;
    }
    let uncaptured: Vec<String> = res
        .addresses
        .values()
        .filter_map(|a| match &a.r#type {
            Some(address::Type::Workload(w))
                if w.tunnel_protocol == 0
                    && w.uid.contains("//Pod/")
                    && !cfg.excluded_namespaces.contains(&w.namespace)
                    && !w.native_tunnel =>
            {
                Some(format!("{}/{}", w.namespace, w.name))
            }
            _ => None,
        })
        .collect();
    if uncaptured.is_empty() {
        return;
    }
    for (ns, name) in index.peer_authentications.keys() {
        if !strict.contains(&ns) {
            continue;
        }
        let scope = if *ns == cfg.root_namespace {
            "every workload in the mesh".to_owned()
        } else {
            format!("the workloads of namespace {ns}")
        };
        let mut sample = uncaptured.clone();
        sample.truncate(5);
        out.push(finding(
            "AMB0009",
            Severity::Warning,
            ("PeerAuthentication", ns, name),
            format!(
                "STRICT mTLS for {scope} refuses plaintext, and {} pod(s) outside the mesh cannot call them: {}",
                uncaptured.len(),
                sample.join(", ")
            ),
            "enroll the callers (istio.io/dataplane-mode=ambient) or use PERMISSIVE for the ports they call",
        ));
    }
}

/// `ambit.dev/waypoint-required` where nothing is bound to a waypoint: it guards nothing.
fn required_without_waypoint(index: &Index, res: &Resources, out: &mut Vec<Finding>) {
    let required =
        |l: &BTreeMap<String, String>| l.get(WAYPOINT_REQUIRED).is_some_and(|v| v == "true");
    let bound =
        |kind: &str, ns: &str, name: &str| res.status.contains_key(&format!("{kind}/{ns}/{name}"));
    for ((ns, name), s) in &index.services {
        if required(&labels_of(&s.metadata)) && !bound("service", ns, name) {
            out.push(finding(
                "AMB0012",
                Severity::Warning,
                ("Service", ns, name),
                "ambit.dev/waypoint-required is set but the Service does not use a waypoint",
                "add istio.io/use-waypoint (or remove the label)",
            ));
        }
    }
    for (ns, n) in &index.namespaces {
        let labels = labels_of(&n.metadata);
        if required(&labels) && !labels.contains_key(USE_WAYPOINT) {
            let any_bound = res.status.keys().any(|k| {
                k.starts_with(&format!("service/{ns}/")) || k.starts_with(&format!("pod/{ns}/"))
            });
            if !any_bound {
                out.push(finding(
                    "AMB0012",
                    Severity::Warning,
                    ("Namespace", "", ns),
                    "ambit.dev/waypoint-required is set but nothing in the namespace uses a waypoint",
                    "add istio.io/use-waypoint (or remove the label)",
                ));
            }
        }
    }
}

/// A finding as one line in istioctl's style, and the fix under it.
pub fn render_text(f: &Finding) -> String {
    format!(
        "{:?} [{}] ({}) {}\n    fix: {}",
        f.severity, f.code, f.object, f.message, f.fix
    )
}

/// For `-o json`: the findings as a JSON array.
pub fn to_json(findings: &[Finding]) -> Value {
    serde_json::to_value(findings).unwrap_or(Value::Null)
}
