//! Why a connection was allowed or denied at L4: the decision of [`super::decide`] itself, and for every applicable
//! policy and rule whether it matched and, if not, the first field that failed ([`Match::first_failure`], the
//! matching code the decision uses).

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::{
    Authorization, Connection, Field, Match, PolicyAction, PolicyScope, RbacDenied, StringMatch,
    decide,
};

/// [`explain`]'s result; JSON with serde, text with `Display`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L4Explanation {
    pub allowed: bool,
    /// `RbacDenied`'s message when denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denied: Option<String>,
    /// The deciding policy (`namespace/name`) and its first matching rule.
    pub by: Option<String>,
    pub rule: Option<usize>,
    pub policies: Vec<L4PolicyExplanation>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L4PolicyExplanation {
    /// `namespace/name`.
    pub name: String,
    pub action: PolicyAction,
    pub scope: PolicyScope,
    pub dry_run: bool,
    pub matched_rule: Option<usize>,
    pub rules: Vec<L4RuleExplanation>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L4RuleExplanation {
    pub index: usize,
    pub matched: bool,
    /// Why not: `clause[0]: match[0].namespaces: "foo" not in [Exact("bar")]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Explains [`super::evaluate`] for `conn` against the policies that apply to its destination workload.
pub fn explain(policies: &[Arc<Authorization>], conn: &Connection) -> L4Explanation {
    let (result, by) = decide(policies, conn);
    let policies: Vec<L4PolicyExplanation> = policies.iter().map(|p| of(p, conn)).collect();
    let rule = by.and_then(|b| {
        policies
            .iter()
            .find(|e| e.name == b.key())
            .and_then(|e| e.matched_rule)
    });
    L4Explanation {
        allowed: result.is_ok(),
        denied: result.as_ref().err().map(RbacDenied::to_string),
        by: by.map(Authorization::key),
        rule,
        policies,
    }
}

fn of(p: &Authorization, conn: &Connection) -> L4PolicyExplanation {
    let rules: Vec<L4RuleExplanation> = p
        .rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            let reason = rule.iter().enumerate().find_map(|(ci, clause)| {
                if clause.is_empty() || clause.iter().any(|m| m.matches(conn)) {
                    return None;
                }
                let why: Vec<String> = clause
                    .iter()
                    .enumerate()
                    .filter_map(|(mi, m)| {
                        let f = m.first_failure(conn)?;
                        Some(format!("match[{mi}].{}", describe(m, f, conn)))
                    })
                    .collect();
                Some(format!("clause[{ci}]: {}", why.join("; ")))
            });
            L4RuleExplanation {
                index,
                matched: reason.is_none(),
                reason,
            }
        })
        .collect();
    L4PolicyExplanation {
        name: p.key(),
        action: p.action,
        scope: p.scope,
        dry_run: p.dry_run,
        matched_rule: rules.iter().find(|r| r.matched).map(|r| r.index),
        rules,
    }
}

fn strings(list: &[StringMatch]) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|m| match m {
            StringMatch::Exact(s) => format!("{s:?}"),
            StringMatch::Prefix(s) => format!("{s:?}*"),
            StringMatch::Suffix(s) => format!("*{s:?}"),
            StringMatch::Presence() => "*".to_owned(),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// `<field>: <the connection's value> <why> <the policy's values>`.
fn describe(m: &Match, f: Field, conn: &Connection) -> String {
    let id = conn.src_identity.as_ref();
    let ns = id.map(|i| format!("{:?}", i.namespace));
    let ns = ns.as_deref().unwrap_or("no identity");
    let principal = id.map(|i| format!("{:?}", i.principal()));
    let principal = principal.as_deref().unwrap_or("no identity");
    let sa = id.map(|i| format!("{}/{}", i.namespace, i.service_account));
    let sa = sa.as_deref().unwrap_or("no identity");
    let sas = |l: &[super::ServiceAccountMatch]| {
        let v: Vec<String> = l
            .iter()
            .map(|s| format!("{}/{}", s.namespace, s.service_account))
            .collect();
        format!("[{}]", v.join(", "))
    };
    let (src, dst, port) = (conn.src.ip(), conn.dst.ip(), conn.dst.port());
    match f {
        Field::Empty => "(empty match, skipped)".to_owned(),
        Field::Namespaces => format!("namespaces: {ns} not in {}", strings(&m.namespaces)),
        Field::NotNamespaces => format!("notNamespaces: {ns} in {}", strings(&m.not_namespaces)),
        Field::Principals => format!("principals: {principal} not in {}", strings(&m.principals)),
        Field::NotPrincipals => {
            format!(
                "notPrincipals: {principal} in {}",
                strings(&m.not_principals)
            )
        }
        Field::SourceIps => format!("sourceIps: {src} not in {}", list(&m.source_ips)),
        Field::NotSourceIps => format!("notSourceIps: {src} in {}", list(&m.not_source_ips)),
        Field::DestinationIps => {
            format!("destinationIps: {dst} not in {}", list(&m.destination_ips))
        }
        Field::NotDestinationIps => {
            format!(
                "notDestinationIps: {dst} in {}",
                list(&m.not_destination_ips)
            )
        }
        Field::DestinationPorts => {
            format!(
                "destinationPorts: {port} not in {}",
                list(&m.destination_ports)
            )
        }
        Field::NotDestinationPorts => {
            format!(
                "notDestinationPorts: {port} in {}",
                list(&m.not_destination_ports)
            )
        }
        Field::ServiceAccounts => {
            format!("serviceAccounts: {sa} not in {}", sas(&m.service_accounts))
        }
        Field::NotServiceAccounts => {
            format!(
                "notServiceAccounts: {sa} in {}",
                sas(&m.not_service_accounts)
            )
        }
    }
}

impl fmt::Display for PolicyAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyAction::Allow => "ALLOW",
            PolicyAction::Deny => "DENY",
        })
    }
}

impl fmt::Display for L4Explanation {
    /// ```text
    /// decision: DENY: explicitly denied by: ns/deny-client rule 0
    /// ns/deny-client (DENY): rule 0 matched
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("decision: ")?;
        f.write_str(if self.allowed { "ALLOW" } else { "DENY" })?;
        match (&self.by, self.rule, &self.denied) {
            (Some(by), Some(r), _) => write!(f, ": {by} rule {r}")?,
            (Some(by), None, _) => write!(f, ": {by}")?,
            (None, _, Some(why)) => write!(f, ": {why}")?,
            (None, _, None) => f.write_str(": no ALLOW policy applies")?,
        }
        writeln!(f)?;
        if self.policies.is_empty() {
            writeln!(f, "no policy applies")?;
        }
        for p in &self.policies {
            let dry = if p.dry_run { ", dry-run" } else { "" };
            match (p.matched_rule, p.rules.is_empty()) {
                (_, true) => writeln!(
                    f,
                    "{} ({}{dry}): no rules, matches nothing",
                    p.name, p.action
                )?,
                (Some(r), false) => {
                    writeln!(f, "{} ({}{dry}): rule {r} matched", p.name, p.action)?
                }
                (None, false) => writeln!(f, "{} ({}{dry}): no rule matched", p.name, p.action)?,
            }
            for r in &p.rules {
                match &r.reason {
                    Some(why) => writeln!(f, "  rule {}: {why}", r.index)?,
                    None => writeln!(f, "  rule {}: matched", r.index)?,
                }
            }
        }
        Ok(())
    }
}
