//! Every match field and its `not_` variant, with and without a peer identity.

use super::*;

/// Table: (description, match, connection, expected).
#[test]
fn match_table() {
    let m = Match::default;
    let cases: Vec<(&str, Match, Connection, bool)> = vec![
        ("empty match never matches", m(), mtls(), false),
        // namespaces
        (
            "namespace exact",
            Match {
                namespaces: vec![exact("client-ns")],
                ..m()
            },
            mtls(),
            true,
        ),
        (
            "namespace other",
            Match {
                namespaces: vec![exact("other")],
                ..m()
            },
            mtls(),
            false,
        ),
        (
            "namespace any-of",
            Match {
                namespaces: vec![exact("x"), exact("client-ns")],
                ..m()
            },
            mtls(),
            true,
        ),
        (
            "namespace prefix",
            Match {
                namespaces: vec![StringMatch::Prefix("client".into())],
                ..m()
            },
            mtls(),
            true,
        ),
        (
            "namespace suffix",
            Match {
                namespaces: vec![StringMatch::Suffix("-ns".into())],
                ..m()
            },
            mtls(),
            true,
        ),
        (
            "namespace suffix miss",
            Match {
                namespaces: vec![StringMatch::Suffix("-x".into())],
                ..m()
            },
            mtls(),
            false,
        ),
        (
            "namespace presence",
            Match {
                namespaces: vec![StringMatch::Presence()],
                ..m()
            },
            mtls(),
            true,
        ),
        (
            "namespace presence, plaintext",
            Match {
                namespaces: vec![StringMatch::Presence()],
                ..m()
            },
            plain(),
            false,
        ),
        (
            "namespace without identity",
            Match {
                namespaces: vec![exact("client-ns")],
                ..m()
            },
            plain(),
            false,
        ),
        (
            "not_namespace hit",
            Match {
                not_namespaces: vec![exact("client-ns")],
                ..m()
            },
            mtls(),
            false,
        ),
        (
            "not_namespace miss",
            Match {
                not_namespaces: vec![exact("other")],
                ..m()
            },
            mtls(),
            true,
        ),
        (
            "not_namespace plaintext",
            Match {
                not_namespaces: vec![exact("client-ns")],
                ..m()
            },
            plain(),
            true,
        ),
        // principals
        (
            "principal exact",
            Match {
                principals: vec![exact("cluster.local/ns/client-ns/sa/client-sa")],
                ..m()
            },
            mtls(),
            true,
        ),
        (
            "principal with scheme does not match",
            Match {
                principals: vec![exact(ID)],
                ..m()
            },
            mtls(),
            false,
        ),
        (
            "principal suffix",
            Match {
                principals: vec![StringMatch::Suffix("/sa/client-sa".into())],
                ..m()
            },
            mtls(),
            true,
        ),
        (
            "principal prefix",
            Match {
                principals: vec![StringMatch::Prefix("cluster.local/".into())],
                ..m()
            },
            mtls(),
            true,
        ),
        (
            "principal presence",
            Match {
                principals: vec![StringMatch::Presence()],
                ..m()
            },
            mtls(),
            true,
        ),
        (
            "principal presence, plaintext",
            Match {
                principals: vec![StringMatch::Presence()],
                ..m()
            },
            plain(),
            false,
        ),
        (
            "principal without identity",
            Match {
                principals: vec![StringMatch::Prefix(String::new())],
                ..m()
            },
            plain(),
            false,
        ),
        (
            "not_principal presence, mTLS",
            Match {
                not_principals: vec![StringMatch::Presence()],
                ..m()
            },
            mtls(),
            false,
        ),
        (
            "not_principal presence, plaintext",
            Match {
                not_principals: vec![StringMatch::Presence()],
                ..m()
            },
            plain(),
            true,
        ),
        (
            "not_principal other",
            Match {
                not_principals: vec![exact("td/ns/x/sa/y")],
                ..m()
            },
            mtls(),
            true,
        ),
        // service accounts (trust domain ignored)
        (
            "sa exact",
            Match {
                service_accounts: vec![sa("client-ns", "client-sa")],
                ..m()
            },
            mtls(),
            true,
        ),
        (
            "sa other td",
            Match {
                service_accounts: vec![sa("client-ns", "client-sa")],
                ..m()
            },
            conn(
                "10.0.0.1:1",
                Some("spiffe://other.td/ns/client-ns/sa/client-sa"),
                "10.0.1.5:8080",
            ),
            true,
        ),
        (
            "sa wrong ns",
            Match {
                service_accounts: vec![sa("other", "client-sa")],
                ..m()
            },
            mtls(),
            false,
        ),
        (
            "sa wrong name",
            Match {
                service_accounts: vec![sa("client-ns", "x")],
                ..m()
            },
            mtls(),
            false,
        ),
        (
            "sa plaintext",
            Match {
                service_accounts: vec![sa("client-ns", "client-sa")],
                ..m()
            },
            plain(),
            false,
        ),
        (
            "not_sa hit",
            Match {
                not_service_accounts: vec![sa("client-ns", "client-sa")],
                ..m()
            },
            mtls(),
            false,
        ),
        (
            "not_sa miss",
            Match {
                not_service_accounts: vec![sa("client-ns", "x")],
                ..m()
            },
            mtls(),
            true,
        ),
        (
            "not_sa plaintext",
            Match {
                not_service_accounts: vec![sa("client-ns", "client-sa")],
                ..m()
            },
            plain(),
            true,
        ),
        // source IPs
        (
            "src /32",
            Match {
                source_ips: vec![cidr("10.0.0.1/32")],
                ..m()
            },
            mtls(),
            true,
        ),
        (
            "src /24",
            Match {
                source_ips: vec![cidr("10.0.0.0/24")],
                ..m()
            },
            mtls(),
            true,
        ),
        (
            "src miss",
            Match {
                source_ips: vec![cidr("10.0.1.0/24")],
                ..m()
            },
            mtls(),
            false,
        ),
        (
            "src /0",
            Match {
                source_ips: vec![cidr("0.0.0.0/0")],
                ..m()
            },
            mtls(),
            true,
        ),
        (
            "src v4 /0 vs v6",
            Match {
                source_ips: vec![cidr("0.0.0.0/0")],
                ..m()
            },
            v6(),
            false,
        ),
        (
            "src v6",
            Match {
                source_ips: vec![cidr("fd00::/64")],
                ..m()
            },
            v6(),
            true,
        ),
        (
            "src v6 /0",
            Match {
                source_ips: vec![cidr("::/0")],
                ..m()
            },
            v6(),
            true,
        ),
        (
            "not_src hit",
            Match {
                not_source_ips: vec![cidr("10.0.0.0/8")],
                ..m()
            },
            mtls(),
            false,
        ),
        (
            "not_src miss",
            Match {
                not_source_ips: vec![cidr("192.168.0.0/16")],
                ..m()
            },
            mtls(),
            true,
        ),
        // destination IPs
        (
            "dst hit",
            Match {
                destination_ips: vec![cidr("10.0.1.5/32")],
                ..m()
            },
            mtls(),
            true,
        ),
        (
            "dst miss",
            Match {
                destination_ips: vec![cidr("10.0.1.6/32")],
                ..m()
            },
            mtls(),
            false,
        ),
        (
            "dst v6",
            Match {
                destination_ips: vec![cidr("fd00:1::/32")],
                ..m()
            },
            v6(),
            true,
        ),
        (
            "not_dst hit",
            Match {
                not_destination_ips: vec![cidr("10.0.1.0/24")],
                ..m()
            },
            mtls(),
            false,
        ),
        (
            "not_dst miss",
            Match {
                not_destination_ips: vec![cidr("10.9.0.0/16")],
                ..m()
            },
            mtls(),
            true,
        ),
        // ports
        (
            "port hit",
            Match {
                destination_ports: vec![80, 8080],
                ..m()
            },
            mtls(),
            true,
        ),
        (
            "port miss",
            Match {
                destination_ports: vec![80],
                ..m()
            },
            mtls(),
            false,
        ),
        (
            "not_port hit",
            Match {
                not_destination_ports: vec![8080],
                ..m()
            },
            mtls(),
            false,
        ),
        (
            "not_port miss",
            Match {
                not_destination_ports: vec![9999],
                ..m()
            },
            mtls(),
            true,
        ),
        // combinations: every populated category must hold
        (
            "ns and port both hold",
            Match {
                namespaces: vec![exact("client-ns")],
                destination_ports: vec![8080],
                ..m()
            },
            mtls(),
            true,
        ),
        (
            "ns holds, port does not",
            Match {
                namespaces: vec![exact("client-ns")],
                destination_ports: vec![1],
                ..m()
            },
            mtls(),
            false,
        ),
        (
            "positive and not_ in one category",
            Match {
                source_ips: vec![cidr("10.0.0.0/8")],
                not_source_ips: vec![cidr("10.0.0.1/32")],
                ..m()
            },
            mtls(),
            false,
        ),
    ];
    for (what, m, c, want) in cases {
        assert_eq!(m.matches(&c), want, "{what}");
    }
}
