//! `istio.security.Authorization` from AuthorizationPolicy and PeerAuthentication, with istiod's conversion rules
//! (`pilot/pkg/serviceregistry/ambient/authorization.go`):
//!
//! * scope: `WORKLOAD_SELECTOR` with a selector, `GLOBAL` in the root namespace, `NAMESPACE` otherwise;
//!   `targetRef(s)` policies belong to waypoints and are not sent; `AUDIT`/`CUSTOM` are not sent; `istio.io/dry-run`
//!   policies are sent as dry-run only when enabled, otherwise not at all.
//! * each rule becomes one Rule with up to three clause kinds: all `to` operations (one Match each), all `from`
//!   sources (one Match each), and one clause per `when` condition;
//! * L7-only attributes fail closed: an ALLOW rule containing any is dropped (a policy left without rules allows
//!   nothing); a DENY rule is enforced without them, and dropped (a no-op) when nothing enforceable remains.
//! * PeerAuthentication: an effective STRICT workload references `<root>/istio_converted_static_strict`
//!   (DENY anything without a peer identity); a selector policy with port-level modes becomes
//!   `<ns>/converted_peer_authentication_<name>` denying plaintext on exactly the strict ports.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_proto::security::{
    Action, Address, Authorization, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
    string_match,
};
use ipnet::IpNet;

use super::{ComputeConfig, ip_bytes};
use crate::index::Index;
use crate::sources::types::{AuthzRule, PeerAuthentication, WorkloadSelector};

pub const STATIC_STRICT: &str = "istio_converted_static_strict";
pub const CONVERTED_PA_PREFIX: &str = "converted_peer_authentication_";
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// The converted policies plus what is needed to attach WORKLOAD_SELECTOR ones to workloads.
#[derive(Clone, Debug, Default)]
pub struct Policies {
    pub resources: BTreeMap<String, Authorization>,
    /// Why a policy was not sent or was changed (like istiod's `ZtunnelAccepted` condition), by `ns/name`.
    pub status: BTreeMap<String, String>,
    selectors: Vec<(String, WorkloadSelector, String)>,
    peer: PeerPolicies,
}

/// A workload-selecting PeerAuthentication: selector, own effective mode (None = inherit), converted policy name.
#[derive(Clone, Debug)]
struct WorkloadPeerPolicy {
    selector: WorkloadSelector,
    mode: Option<String>,
    converted: Option<String>,
}

#[derive(Clone, Debug, Default)]
struct PeerPolicies {
    root_ns: String,
    /// Namespace → (selector, mode, converted policy name if any), first by name wins.
    workload: BTreeMap<String, Vec<WorkloadPeerPolicy>>,
    /// Namespace-wide mode by namespace (the root namespace's is mesh-wide).
    namespace: BTreeMap<String, String>,
}

impl Policies {
    /// Names of the WORKLOAD_SELECTOR policies (incl. PeerAuthentication conversions) that apply to a workload.
    pub fn for_workload(&self, ns: &str, labels: &BTreeMap<String, String>) -> Vec<String> {
        let mut out: Vec<String> = self
            .selectors
            .iter()
            .filter(|(pns, sel, _)| (pns == ns || *pns == self.peer.root_ns) && sel.matches(labels))
            .map(|(_, _, name)| name.clone())
            .collect();
        let wl = self
            .peer
            .workload
            .get(ns)
            .and_then(|v| v.iter().find(|p| p.selector.matches(labels)));
        let inherited = || {
            self.peer
                .namespace
                .get(ns)
                .or_else(|| self.peer.namespace.get(&self.peer.root_ns))
                .cloned()
        };
        match wl {
            Some(WorkloadPeerPolicy {
                converted: Some(converted),
                ..
            }) => out.push(converted.clone()),
            Some(WorkloadPeerPolicy {
                mode,
                converted: None,
                ..
            }) => {
                if mode.clone().or_else(inherited).as_deref() == Some("STRICT") {
                    out.push(format!("{}/{STATIC_STRICT}", self.peer.root_ns));
                }
            }
            None => {
                if inherited().as_deref() == Some("STRICT") {
                    out.push(format!("{}/{STATIC_STRICT}", self.peer.root_ns));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Converts every AuthorizationPolicy and PeerAuthentication of the index.
pub fn convert_all(index: &Index, cfg: &ComputeConfig) -> Policies {
    let mut out = Policies::default();
    for ((ns, name), ap) in &index.authorization_policies {
        let key = format!("{ns}/{name}");
        let spec = &ap.spec;
        if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
            out.status.insert(
                key,
                "targetRefs: enforced by a waypoint, not sent to ztunnel".to_owned(),
            );
            continue;
        }
        let action = match spec.action.as_deref().unwrap_or("ALLOW") {
            "ALLOW" => Action::Allow,
            "DENY" => Action::Deny,
            other => {
                out.status
                    .insert(key, format!("ztunnel does not support the {other} action"));
                continue;
            }
        };
        let dry_run = labels_of_annotations(ap)
            .get(DRY_RUN_ANNOTATION)
            .is_some_and(|v| v == "true");
        if dry_run && !cfg.enable_dry_run {
            out.status.insert(
                key,
                "dry-run is not enabled for ztunnel; policy not sent".to_owned(),
            );
            continue;
        }
        let selector = spec.selector.clone().filter(|s| !s.match_labels.is_empty());
        let scope = if selector.is_some() {
            Scope::WorkloadSelector
        } else if *ns == cfg.root_namespace {
            Scope::Global
        } else {
            Scope::Namespace
        };
        let mut rules = Vec::new();
        let mut notes = Vec::new();
        for rule in &spec.rules {
            let (converted, unsupported) = convert_rule(rule, ns);
            if !unsupported.is_empty() {
                notes.push(format!(
                    "ztunnel does not support HTTP attributes (found: {})",
                    unsupported.join(", ")
                ));
            }
            match (action, unsupported.is_empty(), converted) {
                (_, true, Some(r)) => rules.push(r),
                (Action::Allow, false, _) => {
                    notes.push("an ALLOW rule with them was dropped".to_owned())
                }
                (Action::Deny, false, Some(r)) => rules.push(r),
                (Action::Deny, false, None) => {
                    notes.push("a DENY rule with nothing enforceable left is a no-op".to_owned())
                }
                (_, true, None) => {}
            }
        }
        if !notes.is_empty() {
            notes.dedup();
            out.status.insert(key.clone(), notes.join("; "));
        }
        if let Some(sel) = selector {
            out.selectors.push((ns.clone(), sel, key.clone()));
        }
        out.resources.insert(
            key,
            Authorization {
                name: name.clone(),
                namespace: ns.clone(),
                scope: scope as i32,
                action: action as i32,
                rules,
                dry_run,
                extensions: Vec::new(),
            },
        );
    }
    convert_peer_authentications(index, cfg, &mut out);
    out
}

fn labels_of_annotations(ap: &crate::sources::AuthorizationPolicy) -> BTreeMap<String, String> {
    ap.metadata.annotations.clone().unwrap_or_default()
}

/// One AuthorizationPolicy rule. Returns the rule (or `None` when every clause was lost) and the names of the
/// L7-only or unparseable attributes that were left out.
fn convert_rule(rule: &AuthzRule, ns: &str) -> (Option<Rule>, Vec<String>) {
    let mut lost: Vec<String> = Vec::new();
    let mut clauses = Vec::new();
    let note = |cond: bool, what: &str, lost: &mut Vec<String>| {
        if cond && !lost.iter().any(|l| l == what) {
            lost.push(what.to_owned());
        }
    };
    let mut to = Vec::new();
    for t in &rule.to {
        let op = &t.operation;
        for (v, what) in [
            (&op.hosts, "hosts"),
            (&op.not_hosts, "notHosts"),
            (&op.methods, "methods"),
            (&op.not_methods, "notMethods"),
            (&op.paths, "paths"),
            (&op.not_paths, "notPaths"),
        ] {
            note(!v.is_empty(), what, &mut lost);
        }
        let m = Match {
            destination_ports: ports(&op.ports, &mut lost),
            not_destination_ports: ports(&op.not_ports, &mut lost),
            ..Default::default()
        };
        if m != Match::default() {
            to.push(m);
        }
    }
    let mut from = Vec::new();
    for f in &rule.from {
        let s = &f.source;
        for (v, what) in [
            (&s.request_principals, "requestPrincipals"),
            (&s.not_request_principals, "notRequestPrincipals"),
            (&s.remote_ip_blocks, "remoteIpBlocks"),
            (&s.not_remote_ip_blocks, "notRemoteIpBlocks"),
        ] {
            note(!v.is_empty(), what, &mut lost);
        }
        let m = Match {
            principals: s.principals.iter().map(|p| string_match(p)).collect(),
            not_principals: s.not_principals.iter().map(|p| string_match(p)).collect(),
            namespaces: s.namespaces.iter().map(|p| string_match(p)).collect(),
            not_namespaces: s.not_namespaces.iter().map(|p| string_match(p)).collect(),
            source_ips: addresses(&s.ip_blocks, &mut lost),
            not_source_ips: addresses(&s.not_ip_blocks, &mut lost),
            service_accounts: s
                .service_accounts
                .iter()
                .map(|sa| sa_match(sa, ns))
                .collect(),
            not_service_accounts: s
                .not_service_accounts
                .iter()
                .map(|sa| sa_match(sa, ns))
                .collect(),
            ..Default::default()
        };
        if m != Match::default() {
            from.push(m);
        }
    }
    for (group, had) in [(to, !rule.to.is_empty()), (from, !rule.from.is_empty())] {
        if had && !group.is_empty() {
            clauses.push(Clause { matches: group });
        }
    }
    for cond in &rule.when {
        let sm =
            |v: &Vec<String>| -> Vec<StringMatch> { v.iter().map(|s| string_match(s)).collect() };
        let m = match cond.key.as_str() {
            "source.ip" => Match {
                source_ips: addresses(&cond.values, &mut lost),
                not_source_ips: addresses(&cond.not_values, &mut lost),
                ..Default::default()
            },
            "source.namespace" => Match {
                namespaces: sm(&cond.values),
                not_namespaces: sm(&cond.not_values),
                ..Default::default()
            },
            "source.principal" => Match {
                principals: sm(&cond.values),
                not_principals: sm(&cond.not_values),
                ..Default::default()
            },
            "destination.ip" => Match {
                destination_ips: addresses(&cond.values, &mut lost),
                not_destination_ips: addresses(&cond.not_values, &mut lost),
                ..Default::default()
            },
            "destination.port" => Match {
                destination_ports: ports(&cond.values, &mut lost),
                not_destination_ports: ports(&cond.not_values, &mut lost),
                ..Default::default()
            },
            other => {
                note(true, other, &mut lost);
                continue;
            }
        };
        if m != Match::default() {
            clauses.push(Clause { matches: vec![m] });
        }
    }
    let was_empty = rule.to.is_empty() && rule.from.is_empty() && rule.when.is_empty();
    if clauses.is_empty() && !was_empty {
        return (None, lost);
    }
    (Some(Rule { clauses }), lost)
}

/// istiod's string conversion: `*` ⇒ presence, `*x` ⇒ suffix, `x*` ⇒ prefix, else exact.
pub fn string_match(s: &str) -> StringMatch {
    use string_match::MatchType;
    let t = if s == "*" {
        MatchType::Presence(())
    } else if let Some(x) = s.strip_prefix('*') {
        MatchType::Suffix(x.to_owned())
    } else if let Some(x) = s.strip_suffix('*') {
        MatchType::Prefix(x.to_owned())
    } else {
        MatchType::Exact(s.to_owned())
    };
    StringMatch {
        match_type: Some(t),
    }
}

/// `ns/name`, or a bare name scoped to the policy's namespace.
fn sa_match(s: &str, ns: &str) -> ServiceAccountMatch {
    match s.split_once('/') {
        Some((n, sa)) => ServiceAccountMatch {
            namespace: n.to_owned(),
            service_account: sa.to_owned(),
        },
        None => ServiceAccountMatch {
            namespace: ns.to_owned(),
            service_account: s.to_owned(),
        },
    }
}

fn addresses(v: &[String], lost: &mut Vec<String>) -> Vec<Address> {
    v.iter()
        .filter_map(|s| {
            let net = s
                .parse::<IpNet>()
                .ok()
                .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from));
            match net {
                Some(n) => Some(Address {
                    address: ip_bytes(n.network()),
                    length: u32::from(n.prefix_len()),
                }),
                None => {
                    lost.push(format!("invalid address {s:?}"));
                    None
                }
            }
        })
        .collect()
}

fn ports(v: &[String], lost: &mut Vec<String>) -> Vec<u32> {
    v.iter()
        .filter_map(|s| match s.parse::<u16>() {
            Ok(p) => Some(u32::from(p)),
            Err(_) => {
                lost.push(format!("invalid port {s:?}"));
                None
            }
        })
        .collect()
}

/// DENY anything that has no peer identity (plaintext), with an optional port condition.
fn deny_plaintext(name: String, ns: String, ports: Match) -> Authorization {
    let presence = StringMatch {
        match_type: Some(string_match::MatchType::Presence(())),
    };
    Authorization {
        name,
        namespace: ns,
        scope: Scope::WorkloadSelector as i32,
        action: Action::Deny as i32,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![Match {
                    not_principals: vec![presence],
                    ..ports
                }],
            }],
        }],
        dry_run: false,
        extensions: Vec::new(),
    }
}

/// `UNSET` and unknown modes inherit (None); `DISABLE` behaves as `PERMISSIVE` in ambient.
fn mode(pa: &PeerAuthentication) -> Option<String> {
    normalize(pa.spec.mtls.as_ref().and_then(|m| m.mode.as_deref()))
}

fn normalize(m: Option<&str>) -> Option<String> {
    match m? {
        "STRICT" => Some("STRICT".to_owned()),
        "PERMISSIVE" | "DISABLE" => Some("PERMISSIVE".to_owned()),
        _ => None,
    }
}

fn convert_peer_authentications(index: &Index, cfg: &ComputeConfig, out: &mut Policies) {
    let root = cfg.root_namespace.clone();
    out.peer.root_ns = root.clone();
    out.resources.insert(
        format!("{root}/{STATIC_STRICT}"),
        deny_plaintext(STATIC_STRICT.to_owned(), root.clone(), Match::default()),
    );
    // Namespace-wide (and, in the root namespace, mesh-wide) modes first; the first by name wins.
    for ((ns, _), pa) in &index.peer_authentications {
        let has_selector = pa
            .spec
            .selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty());
        if !has_selector
            && !out.peer.namespace.contains_key(ns)
            && let Some(m) = mode(pa)
        {
            out.peer.namespace.insert(ns.clone(), m);
        }
    }
    let base_of = |ns: &str, own: Option<String>| -> String {
        own.or_else(|| out.peer.namespace.get(ns).cloned())
            .or_else(|| out.peer.namespace.get(&root).cloned())
            .unwrap_or_else(|| "PERMISSIVE".to_owned())
    };
    let mut workload: BTreeMap<String, Vec<WorkloadPeerPolicy>> = BTreeMap::new();
    let mut converted = Vec::new();
    for ((ns, name), pa) in &index.peer_authentications {
        let Some(sel) = pa
            .spec
            .selector
            .clone()
            .filter(|s| !s.match_labels.is_empty())
        else {
            continue;
        };
        let own = mode(pa);
        let base = base_of(ns, own.clone());
        let port_modes: Vec<(u32, String)> = pa
            .spec
            .port_modes()
            .into_iter()
            .filter_map(|(p, m)| Some((p, normalize(Some(&m))?)))
            .collect();
        let mut conv_name = None;
        if !port_modes.is_empty() {
            let pname = format!("{CONVERTED_PA_PREFIX}{name}");
            let policy = if base == "STRICT" {
                let open: Vec<u32> = port_modes
                    .iter()
                    .filter(|(_, m)| m != "STRICT")
                    .map(|(p, _)| *p)
                    .collect();
                Some(Match {
                    not_destination_ports: open,
                    ..Default::default()
                })
            } else {
                let strict: Vec<u32> = port_modes
                    .iter()
                    .filter(|(_, m)| m == "STRICT")
                    .map(|(p, _)| *p)
                    .collect();
                (!strict.is_empty()).then(|| Match {
                    destination_ports: strict,
                    ..Default::default()
                })
            };
            if let Some(ports) = policy {
                conv_name = Some(format!("{ns}/{pname}"));
                converted.push(deny_plaintext(pname, ns.clone(), ports));
            }
        }
        let own_effective = if port_modes.is_empty() {
            Some(base)
        } else {
            own
        };
        workload
            .entry(ns.clone())
            .or_default()
            .push(WorkloadPeerPolicy {
                selector: sel,
                mode: own_effective,
                converted: conv_name,
            });
    }
    for a in converted {
        out.resources
            .insert(format!("{}/{}", a.namespace, a.name), a);
    }
    out.peer.workload = workload;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn string_matches_follow_istiod() {
        use string_match::MatchType as M;
        let t = |s: &str| string_match(s).match_type.unwrap();
        assert_eq!(t("*"), M::Presence(()));
        assert_eq!(t("*.local"), M::Suffix(".local".into()));
        assert_eq!(t("ns-*"), M::Prefix("ns-".into()));
        assert_eq!(t("x"), M::Exact("x".into()));
    }

    #[test]
    fn allow_rule_with_l7_is_dropped_deny_keeps_l4() {
        let rule: AuthzRule = serde_yaml::from_str(
            "to: [{operation: {methods: [GET], ports: ['80']}}]\nfrom: [{source: {namespaces: [a]}}]\n",
        )
        .unwrap();
        let (r, lost) = convert_rule(&rule, "ns");
        assert_eq!(lost, vec!["methods".to_owned()]);
        let r = r.unwrap();
        assert_eq!(r.clauses.len(), 2);
        assert_eq!(r.clauses[0].matches[0].destination_ports, vec![80]);
        let only_l7: AuthzRule =
            serde_yaml::from_str("to: [{operation: {paths: [/x]}}]\n").unwrap();
        assert_eq!(convert_rule(&only_l7, "ns").0, None);
        let empty: AuthzRule = serde_yaml::from_str("{}").unwrap();
        assert_eq!(
            convert_rule(&empty, "ns"),
            (Some(Rule { clauses: vec![] }), vec![])
        );
    }
}
