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

fn string_matches(list: Vec<pb::StringMatch>) -> Vec<StringMatch> {
    use pb::string_match::MatchType;
    list.into_iter()
        .filter_map(|m| match m.match_type? {
            MatchType::Exact(s) => Some(StringMatch::Exact(s)),
            MatchType::Prefix(s) => Some(StringMatch::Prefix(s)),
            MatchType::Suffix(s) => Some(StringMatch::Suffix(s)),
            MatchType::Presence(_) => Some(StringMatch::Presence()),
        })
        .collect()
}

fn cidrs(list: Vec<pb::Address>) -> Vec<IpNet> {
    list.into_iter()
        .filter_map(|a| {
            let ip = ip_from_bytes(&a.address)?;
            let len = u8::try_from(a.length).ok()?;
            IpNet::new(ip, len).ok().map(|n| n.trunc())
        })
        .collect()
}

/// A 4- or 16-byte address; anything else is no address.
fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(b) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(b).ok().map(IpAddr::from)
}

fn ports(list: Vec<u32>) -> Vec<u16> {
    list.into_iter()
        .filter_map(|p| u16::try_from(p).ok())
        .collect()
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
        Match {
            namespaces: string_matches(m.namespaces),
            not_namespaces: string_matches(m.not_namespaces),
            principals: string_matches(m.principals),
            not_principals: string_matches(m.not_principals),
            source_ips: cidrs(m.source_ips),
            not_source_ips: cidrs(m.not_source_ips),
            destination_ips: cidrs(m.destination_ips),
            not_destination_ips: cidrs(m.not_destination_ips),
            destination_ports: ports(m.destination_ports),
            not_destination_ports: ports(m.not_destination_ports),
            service_accounts: service_accounts(m.service_accounts),
            not_service_accounts: service_accounts(m.not_service_accounts),
        }
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
        let rules = p
            .rules
            .into_iter()
            .map(|rule| {
                rule.clauses
                    .into_iter()
                    .map(|c| c.matches.into_iter().map(Match::from).collect())
                    .collect()
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
