//! `explain` reports the decision `evaluate` makes and why each rule did not match.

use super::*;

fn explained(policies: Vec<Authorization>, c: &Connection) -> L4Explanation {
    let ps: Vec<Arc<Authorization>> = policies.into_iter().map(Arc::new).collect();
    let e = explain(&ps, c);
    assert_eq!(
        e.allowed,
        evaluate(&ps, c).is_ok(),
        "explain agrees with evaluate"
    );
    e
}

#[test]
fn names_the_deciding_rule_and_why_others_failed() {
    let c = mtls();
    let other_ns = Match {
        namespaces: vec![exact("other")],
        ..Match::default()
    };
    let e = explained(
        vec![
            policy(
                "allow-other",
                PolicyAction::Allow,
                vec![vec![vec![other_ns]]],
            ),
            policy(
                "allow-port",
                PolicyAction::Allow,
                vec![vec![vec![port(1)]], vec![vec![port(8080)]]],
            ),
        ],
        &c,
    );
    assert!(e.allowed);
    assert_eq!((e.by.as_deref(), e.rule), (Some("ns/allow-port"), Some(1)));
    assert_eq!(
        e.policies[0].rules[0].reason.as_deref(),
        Some(r#"clause[0]: match[0].namespaces: "client-ns" not in ["other"]"#)
    );
    assert_eq!(
        e.policies[1].rules[0].reason.as_deref(),
        Some("clause[0]: match[0].destinationPorts: 8080 not in [1]")
    );
    let text = e.to_string();
    assert!(
        text.starts_with("decision: ALLOW: ns/allow-port rule 1\n"),
        "{text}"
    );
}

#[test]
fn denials_and_plaintext() {
    let e = explained(
        vec![policy("deny-all", PolicyAction::Deny, vec![vec![]])],
        &mtls(),
    );
    assert_eq!(
        (e.allowed, e.by.as_deref(), e.rule),
        (false, Some("ns/deny-all"), Some(0))
    );
    let sa_only = Match {
        service_accounts: vec![sa("client-ns", "client-sa")],
        ..Match::default()
    };
    let e = explained(
        vec![policy(
            "allow-sa",
            PolicyAction::Allow,
            vec![vec![vec![sa_only]]],
        )],
        &plain(),
    );
    assert!(!e.allowed);
    assert_eq!(e.by, None);
    assert_eq!(
        e.denied.as_deref(),
        Some("allow policies exist, but none allowed")
    );
    assert_eq!(
        e.policies[0].rules[0].reason.as_deref(),
        Some("clause[0]: match[0].serviceAccounts: no identity not in [client-ns/client-sa]")
    );
    let e = explained(vec![], &v6());
    assert!(e.allowed && e.policies.is_empty());
    assert!(e.to_string().contains("no ALLOW policy applies"));
}
