//! `istio.security.Authorization` → [`Authorization`] (spec 2.6). Invalid IP entries, ports out of range and
//! string matches without a value are dropped, as upstream does; unknown scope or action numbers reject the policy.

use std::net::IpAddr;

use ambit_proto::security as pb;
use ipnet::IpNet;

use super::{Authorization, Match, PolicyAction, PolicyScope, ServiceAccountMatch, StringMatch};

/// Why an Authorization resource was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown scope value {0}")]
    UnknownScope(i32),
    #[error("unknown action value {0}")]
    UnknownAction(i32),
}

fn string_matches(list: Vec<pb::StringMatch>, bad: &mut bool) -> Vec<StringMatch> {
    use pb::string_match::MatchType;
    let n = list.len();
    let out: Vec<StringMatch> = list
        .into_iter()
        .filter_map(|m| match m.match_type? {
            MatchType::Exact(s) => Some(StringMatch::Exact(s)),
            MatchType::Prefix(s) => Some(StringMatch::Prefix(s)),
            MatchType::Suffix(s) => Some(StringMatch::Suffix(s)),
            MatchType::Presence(_) => Some(StringMatch::Presence()),
        })
        .collect();
    *bad |= out.len() != n;
    out
}

fn cidrs(list: Vec<pb::Address>, bad: &mut bool) -> Vec<IpNet> {
    let n = list.len();
    let out: Vec<IpNet> = list
        .into_iter()
        .filter_map(|a| {
            let ip = ip_from_bytes(&a.address)?;
            let len = u8::try_from(a.length).ok()?;
            IpNet::new(ip, len).ok().map(|n| n.trunc())
        })
        .collect();
    *bad |= out.len() != n;
    out
}

/// A 4- or 16-byte address; anything else is no address.
fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(b) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(b).ok().map(IpAddr::from)
}

fn ports(list: Vec<u32>, bad: &mut bool) -> Vec<u16> {
    let n = list.len();
    let out: Vec<u16> = list
        .into_iter()
        .filter_map(|p| u16::try_from(p).ok())
        .collect();
    *bad |= out.len() != n;
    out
}

fn service_accounts(list: Vec<pb::ServiceAccountMatch>) -> Vec<ServiceAccountMatch> {
    list.into_iter()
        .map(|s| ServiceAccountMatch {
            namespace: s.namespace,
            service_account: s.service_account,
        })
        .collect()
}

impl From<pb::Match> for Match {
    fn from(m: pb::Match) -> Self {
        convert_match(m, &mut false)
    }
}

/// Sets `bad` when an entry could not be read and was dropped.
fn convert_match(m: pb::Match, bad: &mut bool) -> Match {
    Match {
        namespaces: string_matches(m.namespaces, bad),
        not_namespaces: string_matches(m.not_namespaces, bad),
        principals: string_matches(m.principals, bad),
        not_principals: string_matches(m.not_principals, bad),
        source_ips: cidrs(m.source_ips, bad),
        not_source_ips: cidrs(m.not_source_ips, bad),
        destination_ips: cidrs(m.destination_ips, bad),
        not_destination_ips: cidrs(m.not_destination_ips, bad),
        destination_ports: ports(m.destination_ports, bad),
        not_destination_ports: ports(m.not_destination_ports, bad),
        service_accounts: service_accounts(m.service_accounts),
        not_service_accounts: service_accounts(m.not_service_accounts),
    }
}

impl TryFrom<pb::Authorization> for Authorization {
    type Error = PolicyError;
    fn try_from(p: pb::Authorization) -> Result<Self, Self::Error> {
        let scope = match pb::Scope::try_from(p.scope) {
            Ok(pb::Scope::Global) => PolicyScope::Global,
            Ok(pb::Scope::Namespace) => PolicyScope::Namespace,
            Ok(pb::Scope::WorkloadSelector) => PolicyScope::WorkloadSelector,
            Err(_) => return Err(PolicyError::UnknownScope(p.scope)),
        };
        let action = match pb::Action::try_from(p.action) {
            Ok(pb::Action::Allow) => PolicyAction::Allow,
            Ok(pb::Action::Deny) => PolicyAction::Deny,
            Err(_) => return Err(PolicyError::UnknownAction(p.action)),
        };
        // Fail closed: an ALLOW rule holding an entry that cannot be read is dropped (it allows less); a DENY rule
        // keeps its other entries (it denies more).
        let rules = p
            .rules
            .into_iter()
            .enumerate()
            .filter_map(|(i, rule)| {
                let mut bad = false;
                let clauses: Vec<Vec<Match>> = rule
                    .clauses
                    .into_iter()
                    .map(|c| {
                        c.matches
                            .into_iter()
                            .map(|m| convert_match(m, &mut bad))
                            .collect()
                    })
                    .collect();
                if !bad {
                    return Some(clauses);
                }
                let policy = format!("{}/{}", p.namespace, p.name);
                match action {
                    PolicyAction::Allow => {
                        tracing::warn!(%policy, rule = i, "ALLOW rule with an entry that cannot be read: rule dropped");
                        None
                    }
                    PolicyAction::Deny => {
                        tracing::warn!(%policy, rule = i, "DENY rule with an entry that cannot be read: kept without it");
                        Some(clauses)
                    }
                }
            })
            .collect();
        Ok(Authorization {
            name: p.name,
            namespace: p.namespace,
            scope,
            action,
            rules,
            dry_run: p.dry_run,
        })
    }
}
