#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use crate::Identity;
use ambit_proto::security as pb;

use super::*;

mod explain;
mod table;

fn conn(src: &str, id: Option<&str>, dst: &str) -> Connection {
    Connection {
        src: src.parse::<SocketAddr>().unwrap(),
        src_identity: id.map(|i| i.parse::<Identity>().unwrap()),
        dst: dst.parse::<SocketAddr>().unwrap(),
    }
}

const ID: &str = "spiffe://cluster.local/ns/client-ns/sa/client-sa";

fn mtls() -> Connection {
    conn("10.0.0.1:40000", Some(ID), "10.0.1.5:8080")
}

fn plain() -> Connection {
    conn("10.0.0.1:40000", None, "10.0.1.5:8080")
}

fn v6() -> Connection {
    conn("[fd00::1]:40000", Some(ID), "[fd00:1::5]:8080")
}

fn cidr(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.into())
}

fn sa(ns: &str, name: &str) -> ServiceAccountMatch {
    ServiceAccountMatch {
        namespace: ns.into(),
        service_account: name.into(),
    }
}

fn policy(name: &str, action: PolicyAction, rules: Vec<Vec<Vec<Match>>>) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: "ns".into(),
        scope: PolicyScope::Namespace,
        action,
        rules,
        dry_run: false,
    }
}

fn port(p: u16) -> Match {
    Match {
        destination_ports: vec![p],
        ..Match::default()
    }
}

#[test]
fn rule_and_clause_semantics() {
    let c = mtls(); // port 8080
    let matches = |rules: Vec<Vec<Vec<Match>>>| policy("p", PolicyAction::Allow, rules).matches(&c);
    assert!(!matches(vec![]), "zero rules never match");
    assert!(
        matches(vec![vec![]]),
        "a rule with zero clauses matches everything"
    );
    assert!(
        matches(vec![vec![vec![]]]),
        "a clause with zero matches matches"
    );
    assert!(
        !matches(vec![vec![vec![Match::default()]]]),
        "an empty match is skipped (never matches)"
    );
    assert!(
        matches(vec![vec![vec![port(1), port(8080)]]]),
        "clause: any match"
    );
    assert!(
        !matches(vec![vec![vec![port(8080)], vec![port(1)]]]),
        "rule: all clauses"
    );
    assert!(matches(vec![vec![
        vec![port(8080)],
        vec![Match {
            namespaces: vec![exact("client-ns")],
            ..Match::default()
        }]
    ]]));
    assert!(
        matches(vec![vec![vec![port(1)]], vec![vec![port(8080)]]]),
        "policy: any rule"
    );
}

fn eval(policies: Vec<Authorization>, c: &Connection) -> Result<(), RbacDenied> {
    let ps: Vec<Arc<Authorization>> = policies.into_iter().map(Arc::new).collect();
    evaluate(&ps, c)
}

#[test]
fn evaluation_order() {
    let c = mtls();
    let allow_all = || policy("allow-all", PolicyAction::Allow, vec![vec![]]);
    let allow_none = || policy("allow-none", PolicyAction::Allow, vec![vec![vec![port(1)]]]);
    let deny_all = || policy("deny-all", PolicyAction::Deny, vec![vec![]]);
    let deny_none = || policy("deny-none", PolicyAction::Deny, vec![]);
    assert_eq!(eval(vec![], &c), Ok(()), "no policies ⇒ allow");
    assert_eq!(
        eval(vec![deny_none()], &c),
        Ok(()),
        "only non-matching deny ⇒ allow"
    );
    assert_eq!(
        eval(vec![allow_all(), deny_all()], &c),
        Err(RbacDenied::ExplicitDeny("ns/deny-all".into()))
    );
    assert_eq!(eval(vec![allow_none()], &c), Err(RbacDenied::NotAllowed));
    assert_eq!(eval(vec![allow_none(), allow_all()], &c), Ok(()));
    // An ALLOW with no rules still counts as an allow policy that exists.
    assert_eq!(
        eval(vec![policy("empty", PolicyAction::Allow, vec![])], &c),
        Err(RbacDenied::NotAllowed)
    );
    assert_eq!(
        RbacDenied::ExplicitDeny("ns/x".into()).to_string(),
        "explicitly denied by: ns/x"
    );
    assert_eq!(
        RbacDenied::NotAllowed.to_string(),
        "allow policies exist, but none allowed"
    );
}

#[test]
fn dry_run_is_not_enforced() {
    let c = mtls();
    let mut deny = policy("deny", PolicyAction::Deny, vec![vec![]]);
    deny.dry_run = true;
    assert_eq!(eval(vec![deny.clone()], &c), Ok(()));
    let mut allow_none = policy("allow-none", PolicyAction::Allow, vec![vec![vec![port(1)]]]);
    allow_none.dry_run = true;
    assert_eq!(
        eval(vec![allow_none.clone()], &c),
        Ok(()),
        "a dry-run allow does not make allow policies exist"
    );
    assert_eq!(
        eval(
            vec![
                deny,
                allow_none,
                policy("a", PolicyAction::Allow, vec![vec![]])
            ],
            &c
        ),
        Ok(())
    );
}

#[test]
fn proto_conversion() {
    use pb::string_match::MatchType;
    let sm = |t| pb::StringMatch {
        match_type: Some(t),
    };
    let addr = |b: Vec<u8>, len| pb::Address {
        address: b,
        length: len,
    };
    let p = pb::Authorization {
        name: "p".into(),
        namespace: "ns".into(),
        scope: pb::Scope::WorkloadSelector as i32,
        action: pb::Action::Deny as i32,
        dry_run: true,
        rules: vec![pb::Rule {
            clauses: vec![pb::Clause {
                matches: vec![pb::Match {
                    namespaces: vec![
                        sm(MatchType::Exact("a".into())),
                        pb::StringMatch { match_type: None },
                    ],
                    not_namespaces: vec![sm(MatchType::Prefix("b".into()))],
                    principals: vec![sm(MatchType::Suffix("c".into()))],
                    not_principals: vec![sm(MatchType::Presence(()))],
                    source_ips: vec![
                        addr(vec![10, 0, 0, 0], 8),
                        addr(vec![1, 2, 3], 8),
                        addr(vec![10, 0, 0, 1], 40),
                    ],
                    not_source_ips: vec![addr(vec![0; 16], 0)],
                    destination_ips: vec![addr(vec![192, 168, 1, 1], 32)],
                    not_destination_ips: vec![],
                    destination_ports: vec![80, 70000],
                    not_destination_ports: vec![22],
                    service_accounts: vec![pb::ServiceAccountMatch {
                        namespace: "n".into(),
                        service_account: "s".into(),
                    }],
                    not_service_accounts: vec![],
                    extensions: vec![],
                }],
            }],
        }],
        extensions: vec![],
    };
    let a = Authorization::try_from(p).unwrap();
    assert_eq!(
        (a.scope, a.action, a.dry_run, a.key().as_str()),
        (
            PolicyScope::WorkloadSelector,
            PolicyAction::Deny,
            true,
            "ns/p"
        )
    );
    let m = &a.rules[0][0][0];
    assert_eq!(
        m.namespaces,
        vec![exact("a")],
        "match without a value dropped"
    );
    assert_eq!(m.not_namespaces, vec![StringMatch::Prefix("b".into())]);
    assert_eq!(m.principals, vec![StringMatch::Suffix("c".into())]);
    assert_eq!(m.not_principals, vec![StringMatch::Presence()]);
    assert_eq!(
        m.source_ips,
        vec![cidr("10.0.0.0/8")],
        "invalid entries dropped"
    );
    assert_eq!(m.not_source_ips, vec![cidr("::/0")]);
    assert_eq!(m.destination_ips, vec![cidr("192.168.1.1/32")]);
    assert_eq!(m.destination_ports, vec![80]);
    assert_eq!(m.not_destination_ports, vec![22]);
    assert_eq!(m.service_accounts, vec![sa("n", "s")]);
}

#[test]
fn serde_shape() {
    let yaml = r#"
name: p
namespace: ns
scope: WorkloadSelector
action: Deny
dryRun: true
rules:
- - - namespaces: [{Exact: a}, {Prefix: b}, {Suffix: c}, {Presence: []}]
      sourceIps: ["10.0.0.0/8", "10.1.1.1"]
      serviceAccounts: [{namespace: n, serviceAccount: s}]
      notDestinationPorts: [22]
"#;
    let p: Authorization = serde_yaml::from_str(yaml).unwrap();
    let m = &p.rules[0][0][0];
    assert_eq!(
        m.namespaces,
        vec![
            exact("a"),
            StringMatch::Prefix("b".into()),
            StringMatch::Suffix("c".into()),
            StringMatch::Presence()
        ]
    );
    assert_eq!(m.source_ips, vec![cidr("10.0.0.0/8"), cidr("10.1.1.1/32")]);
    let back: Authorization = serde_yaml::from_str(&serde_yaml::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(
        json["rules"][0][0][0]["namespaces"][3],
        serde_json::json!({"Presence": []})
    );
    assert!(
        serde_yaml::from_str::<Authorization>(
            "name: p\nnamespace: n\nscope: Global\naction: Allow\nbogus: 1\n"
        )
        .is_err()
    );
    assert!(
        serde_yaml::from_str::<Authorization>(
            "name: p\nnamespace: n\nscope: Global\naction: Audit\n"
        )
        .is_err()
    );
}
