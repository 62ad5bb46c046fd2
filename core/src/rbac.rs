//! L4 authorization exactly as spec 5 (`istio.security.Authorization` as ztunnel enforces it): which policies apply
//! to a destination workload, and whether they let a connection through. Matching is a pure function of the policy
//! and the [`Connection`]; [`explain`] runs the same matching code and says field by field why a rule did not
//! match. It lives in core so that ztunnel and `ambit authz check` run the very same code.

mod convert;
mod explain;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::Identity;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};
use tracing::{debug, info};

pub use convert::PolicyError;
pub use explain::{L4Explanation, L4PolicyExplanation, L4RuleExplanation, explain};

/// Which workloads a policy applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
/// The proto names (`GLOBAL`, `WORKLOAD_SELECTOR`, as the controller's `/debug/resources` writes them) are accepted
/// too.
pub enum PolicyScope {
    /// Every workload in the mesh.
    #[serde(alias = "GLOBAL")]
    Global,
    /// Every workload in the policy's namespace.
    #[serde(alias = "NAMESPACE")]
    Namespace,
    /// Only workloads that list the policy in their `authorizationPolicies`.
    #[serde(alias = "WORKLOAD_SELECTOR")]
    WorkloadSelector,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyAction {
    #[serde(alias = "ALLOW")]
    Allow,
    #[serde(alias = "DENY")]
    Deny,
}

/// One L4 authorization policy. `rules` are ORed; a rule's clauses are ANDed; a clause's matches are ORed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Authorization {
    pub name: String,
    pub namespace: String,
    pub scope: PolicyScope,
    pub action: PolicyAction,
    #[serde(default)]
    pub rules: Vec<Vec<Vec<Match>>>,
    #[serde(default)]
    pub dry_run: bool,
}

/// A string matcher; `Presence` matches any non-empty value. Serialized as a one-key map: `{Exact: s}`,
/// `{Prefix: s}`, `{Suffix: s}`, `{Presence: []}` (upstream's shape; serde_yaml's own enum form would be tags).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence(),
}

/// The map form of a [`StringMatch`]; exactly one key must be present.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StringMatchRepr {
    #[serde(rename = "Exact", default)]
    exact: Option<String>,
    #[serde(rename = "Prefix", default)]
    prefix: Option<String>,
    #[serde(rename = "Suffix", default)]
    suffix: Option<String>,
    #[serde(rename = "Presence", default)]
    presence: Option<Vec<serde::de::IgnoredAny>>,
}

impl Serialize for StringMatch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        match self {
            StringMatch::Exact(v) => map.serialize_entry("Exact", v)?,
            StringMatch::Prefix(v) => map.serialize_entry("Prefix", v)?,
            StringMatch::Suffix(v) => map.serialize_entry("Suffix", v)?,
            StringMatch::Presence() => map.serialize_entry("Presence", &[(); 0])?,
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for StringMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = StringMatchRepr::deserialize(d)?;
        match (r.exact, r.prefix, r.suffix, r.presence) {
            (Some(v), None, None, None) => Ok(StringMatch::Exact(v)),
            (None, Some(v), None, None) => Ok(StringMatch::Prefix(v)),
            (None, None, Some(v), None) => Ok(StringMatch::Suffix(v)),
            (None, None, None, Some(_)) => Ok(StringMatch::Presence()),
            _ => Err(serde::de::Error::custom(
                "a string match needs exactly one of Exact, Prefix, Suffix, Presence",
            )),
        }
    }
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Presence() => !value.is_empty(),
        }
    }
}

/// A source service account; the trust domain is not compared.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}

/// One match: every populated category must hold (positive list: any hit; `not_` list: no hit).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Match {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<StringMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "cidrs")]
    pub source_ips: Vec<IpNet>,
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "cidrs")]
    pub not_source_ips: Vec<IpNet>,
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "cidrs")]
    pub destination_ips: Vec<IpNet>,
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "cidrs")]
    pub not_destination_ips: Vec<IpNet>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_ports: Vec<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ports: Vec<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountMatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<ServiceAccountMatch>,
}

/// CIDR strings; a bare IP means the single address.
fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a CIDR or IP address")))
        })
        .collect()
}

/// The connection being authorized: the TCP peer, its mTLS identity (none for plaintext), and the destination
/// pod IP with the final target port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub src: SocketAddr,
    pub src_identity: Option<Identity>,
    pub dst: SocketAddr,
}

/// Why a connection was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RbacDenied {
    /// A DENY policy (`namespace/name`) matched.
    #[error("explicitly denied by: {0}")]
    ExplicitDeny(String),
    /// ALLOW policies apply, none matched.
    #[error("allow policies exist, but none allowed")]
    NotAllowed,
}

/// Lists are "any hit" when non-empty, and hold trivially when empty.
fn any<T>(list: &[T], hit: impl Fn(&T) -> bool) -> bool {
    list.iter().any(hit)
}

impl Match {
    /// True when no field is set; such a match is skipped (never matches).
    pub fn is_empty(&self) -> bool {
        *self == Match::default()
    }

    pub fn matches(&self, conn: &Connection) -> bool {
        self.first_failure(conn).is_none()
    }

    /// The first field (in declaration order) that does not hold for `conn`; None: the match matches. An empty
    /// match fails with [`Field::Empty`].
    pub fn first_failure(&self, conn: &Connection) -> Option<Field> {
        if self.is_empty() {
            return Some(Field::Empty);
        }
        let id = conn.src_identity.as_ref();
        let ns = id.map(|i| i.namespace.as_str()).unwrap_or("");
        // No identity ⇒ a principal never matches, not even Presence.
        let principal = id.map(Identity::principal);
        let principal_hit = |m: &StringMatch| principal.as_deref().is_some_and(|p| m.matches(p));
        let sa_hit = |m: &ServiceAccountMatch| {
            id.is_some_and(|i| i.namespace == m.namespace && i.service_account == m.service_account)
        };
        let (src, dst, port) = (conn.src.ip(), conn.dst.ip(), conn.dst.port());
        // A positive list holds when empty or hit, a `not_` list when empty or not hit; checked in order, lazily.
        let pos = |list_empty: bool, hit: &dyn Fn() -> bool| list_empty || hit();
        let neg = |list_empty: bool, hit: &dyn Fn() -> bool| list_empty || !hit();
        if !pos(self.namespaces.is_empty(), &|| {
            any(&self.namespaces, |m| m.matches(ns))
        }) {
            return Some(Field::Namespaces);
        }
        if !neg(self.not_namespaces.is_empty(), &|| {
            any(&self.not_namespaces, |m| m.matches(ns))
        }) {
            return Some(Field::NotNamespaces);
        }
        if !pos(self.principals.is_empty(), &|| {
            any(&self.principals, principal_hit)
        }) {
            return Some(Field::Principals);
        }
        if !neg(self.not_principals.is_empty(), &|| {
            any(&self.not_principals, principal_hit)
        }) {
            return Some(Field::NotPrincipals);
        }
        if !pos(self.source_ips.is_empty(), &|| {
            any(&self.source_ips, |c| c.contains(&src))
        }) {
            return Some(Field::SourceIps);
        }
        if !neg(self.not_source_ips.is_empty(), &|| {
            any(&self.not_source_ips, |c| c.contains(&src))
        }) {
            return Some(Field::NotSourceIps);
        }
        if !pos(self.destination_ips.is_empty(), &|| {
            any(&self.destination_ips, |c| c.contains(&dst))
        }) {
            return Some(Field::DestinationIps);
        }
        if !neg(self.not_destination_ips.is_empty(), &|| {
            any(&self.not_destination_ips, |c| c.contains(&dst))
        }) {
            return Some(Field::NotDestinationIps);
        }
        if !pos(self.destination_ports.is_empty(), &|| {
            self.destination_ports.contains(&port)
        }) {
            return Some(Field::DestinationPorts);
        }
        if !neg(self.not_destination_ports.is_empty(), &|| {
            self.not_destination_ports.contains(&port)
        }) {
            return Some(Field::NotDestinationPorts);
        }
        if !pos(self.service_accounts.is_empty(), &|| {
            any(&self.service_accounts, sa_hit)
        }) {
            return Some(Field::ServiceAccounts);
        }
        if !neg(self.not_service_accounts.is_empty(), &|| {
            any(&self.not_service_accounts, sa_hit)
        }) {
            return Some(Field::NotServiceAccounts);
        }
        None
    }
}

/// A field of a [`Match`], named as the policy writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Field {
    /// The match has no field set (it is skipped).
    Empty,
    Namespaces,
    NotNamespaces,
    Principals,
    NotPrincipals,
    SourceIps,
    NotSourceIps,
    DestinationIps,
    NotDestinationIps,
    DestinationPorts,
    NotDestinationPorts,
    ServiceAccounts,
    NotServiceAccounts,
}

impl Authorization {
    /// `namespace/name`: how workloads and removals refer to the policy.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Any rule matches; a rule matches when all its clauses do (none ⇒ all); a clause matches when any of its
    /// matches does (none ⇒ matches). A policy without rules never matches.
    pub fn matches(&self, conn: &Connection) -> bool {
        self.rules.iter().any(|rule| {
            rule.iter()
                .all(|clause| clause.is_empty() || clause.iter().any(|m| m.matches(conn)))
        })
    }

    /// Whether this policy applies by scope alone to a workload of `namespace` (WORKLOAD_SELECTOR ones apply only
    /// by name, from the workload's `authorizationPolicies`).
    pub fn applies_by_scope(&self, namespace: &str) -> bool {
        match self.scope {
            PolicyScope::Global => true,
            PolicyScope::Namespace => self.namespace == namespace,
            PolicyScope::WorkloadSelector => false,
        }
    }
}

/// The policies that apply to a destination workload of `namespace` that names `named` (its
/// `authorizationPolicies`): every GLOBAL one, the NAMESPACE ones of its namespace, and the named ones (each once;
/// `unknown` hears of names `lookup` does not know), sorted by key. ztunnel and `ambit authz check` both use it.
pub fn select<'a>(
    all: impl IntoIterator<Item = &'a Arc<Authorization>>,
    lookup: impl Fn(&str) -> Option<&'a Arc<Authorization>>,
    namespace: &str,
    named: &[String],
    mut unknown: impl FnMut(&str),
) -> Vec<Arc<Authorization>> {
    let mut out: Vec<Arc<Authorization>> = all
        .into_iter()
        .filter(|p| p.applies_by_scope(namespace))
        .cloned()
        .collect();
    for name in named {
        match lookup(name) {
            Some(p) => {
                if !out.iter().any(|o| Arc::ptr_eq(o, p)) {
                    out.push(p.clone());
                }
            }
            None => unknown(name),
        }
    }
    out.sort_by_key(|p| p.key());
    out
}

struct Display<'a>(&'a Connection);

impl fmt::Display for Display<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.src_identity {
            Some(id) => write!(f, "{} ({id}) -> {}", self.0.src, self.0.dst),
            None => write!(f, "{} -> {}", self.0.src, self.0.dst),
        }
    }
}

/// Spec 5: dry-run policies are only logged; an enforced DENY match rejects; without enforced ALLOW policies the
/// connection is allowed; otherwise one enforced ALLOW must match.
pub fn evaluate(policies: &[Arc<Authorization>], conn: &Connection) -> Result<(), RbacDenied> {
    decide(policies, conn).0
}

/// [`evaluate`]'s decision and the enforced policy that made it (the matching DENY or ALLOW; none when no ALLOW
/// policy applies, or when ALLOW policies apply and none matched).
pub fn decide<'p>(
    policies: &'p [Arc<Authorization>],
    conn: &Connection,
) -> (Result<(), RbacDenied>, Option<&'p Authorization>) {
    for p in policies.iter().filter(|p| p.dry_run) {
        if p.matches(conn) {
            info!(target: "authz", policy = %p.key(), action = ?p.action, conn = %Display(conn), "dry-run policy matched");
        } else {
            debug!(target: "authz", policy = %p.key(), action = ?p.action, conn = %Display(conn), "dry-run policy did not match");
        }
    }
    let enforced = || policies.iter().filter(|p| !p.dry_run);
    if let Some(deny) = enforced()
        .filter(|p| p.action == PolicyAction::Deny)
        .find(|p| p.matches(conn))
    {
        debug!(target: "authz", policy = %deny.key(), conn = %Display(conn), "denied");
        return (Err(RbacDenied::ExplicitDeny(deny.key())), Some(deny));
    }
    let mut allows = enforced()
        .filter(|p| p.action == PolicyAction::Allow)
        .peekable();
    if allows.peek().is_none() {
        return (Ok(()), None);
    }
    match allows.find(|p| p.matches(conn)) {
        Some(p) => {
            debug!(target: "authz", policy = %p.key(), conn = %Display(conn), "allowed");
            (Ok(()), Some(p))
        }
        None => {
            debug!(target: "authz", conn = %Display(conn), "no allow policy matched");
            (Err(RbacDenied::NotAllowed), None)
        }
    }
}
