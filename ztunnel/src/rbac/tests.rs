#![allow(clippy::unwrap_used)]
//! The policy engine's own tests are in `ambit_core::rbac`; these check how ztunnel selects the policies of a
//! destination workload.

use std::net::SocketAddr;

use ambit_core::Identity;

use super::*;
use crate::state::{ProxyState, Workload};

fn mtls() -> Connection {
    Connection {
        src: "10.0.0.1:40000".parse::<SocketAddr>().unwrap(),
        src_identity: Some(
            "spiffe://cluster.local/ns/client-ns/sa/client-sa"
                .parse::<Identity>()
                .unwrap(),
        ),
        dst: "10.0.1.5:8080".parse::<SocketAddr>().unwrap(),
    }
}

fn dst_workload(ns: &str, policies: &[&str]) -> Workload {
    Workload {
        uid: "dst".into(),
        name: "dst".into(),
        namespace: ns.into(),
        workload_ips: vec!["10.0.1.5".parse().unwrap()],
        hostname: String::new(),
        network: String::new(),
        protocol: Default::default(),
        network_mode: Default::default(),
        trust_domain: "cluster.local".into(),
        service_account: "default".into(),
        waypoint: None,
        network_gateway: None,
        node: String::new(),
        canonical_name: String::new(),
        canonical_revision: String::new(),
        workload_type: Default::default(),
        workload_name: String::new(),
        native_tunnel: false,
        application_tunnel: None,
        services: Default::default(),
        authorization_policies: policies.iter().map(|s| (*s).to_owned()).collect(),
        status: Default::default(),
        cluster_id: "Kubernetes".into(),
        locality: Default::default(),
        capacity: 1,
    }
}

#[test]
fn scopes_select_policies() {
    let st = ProxyState::new();
    let deny = |name: &str, ns: &str, scope| Authorization {
        name: name.into(),
        namespace: ns.into(),
        scope,
        action: PolicyAction::Deny,
        rules: vec![vec![]],
        dry_run: false,
    };
    let c = mtls();
    st.insert_policy(deny("sel", "ns", PolicyScope::WorkloadSelector));
    assert_eq!(
        st.assert_rbac(&dst_workload("ns", &[]), &c),
        Ok(()),
        "selector policies apply only by name"
    );
    assert_eq!(
        st.assert_rbac(&dst_workload("ns", &["ns/sel", "ns/missing"]), &c),
        Err(RbacDenied::ExplicitDeny("ns/sel".into())),
        "named (missing names skipped)"
    );
    st.insert_policy(deny("nsp", "other", PolicyScope::Namespace));
    assert_eq!(
        st.assert_rbac(&dst_workload("ns", &[]), &c),
        Ok(()),
        "namespace scope of another namespace"
    );
    assert_eq!(
        st.assert_rbac(&dst_workload("other", &[]), &c),
        Err(RbacDenied::ExplicitDeny("other/nsp".into()))
    );
    st.insert_policy(deny("glob", "istio-system", PolicyScope::Global));
    assert_eq!(
        st.assert_rbac(&dst_workload("ns", &[]), &c),
        Err(RbacDenied::ExplicitDeny("istio-system/glob".into()))
    );
    assert_eq!(
        st.policies_for(&dst_workload("other", &["other/nsp"]))
            .len(),
        2,
        "no duplicates"
    );
}
