//! The local config file (spec 2.7): upstream's example and a full example load into the proxy state, unknown keys
//! are rejected, and the watcher applies rewrites but keeps the previous state when a rewrite is malformed.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_core::Identity;
use ambit_ztunnel::localconfig::{self, LocalConfig, LocalConfigError};
use ambit_ztunnel::rbac::{Connection, PolicyAction, PolicyScope, RbacDenied};
use ambit_ztunnel::state::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn upstream_example_loads() {
    let cfg = localconfig::load(&fixture("upstream-localhost.yaml")).unwrap();
    assert_eq!(cfg.workloads.len(), 2);
    assert_eq!(cfg.services.len(), 2);
    assert_eq!(cfg.policies.len(), 1);
    let state = ProxyState::new();
    state.replace_all(cfg);

    let local = state.workload_by_ip("", ip("127.0.0.1")).unwrap();
    assert_eq!(local.uid, "cluster1//v1/Pod/default/local");
    assert_eq!(local.protocol, InboundProtocol::Hbone);
    assert_eq!(
        local.identity().to_string(),
        "spiffe://cluster.local/ns/default/sa/default"
    );
    assert_eq!(
        state.workload_by_ip("", ip("127.0.0.2")).unwrap().protocol,
        InboundProtocol::Tcp
    );

    let svc = state
        .service_by_vip("", ip("127.10.0.1"), "default")
        .unwrap();
    assert_eq!(svc.hostname, "example.com");
    assert_eq!(svc.endpoints.len(), 2, "both workloads are endpoints");
    let up = state
        .pick_endpoint(&svc, 80, &local, ip("127.10.0.1"))
        .unwrap();
    assert_eq!(up.port, 8080);
    assert!(
        state
            .service_by_vip("remote", ip("127.10.0.2"), "default")
            .is_some()
    );

    // Policy: allow everything but port 9999.
    let conn = |port| Connection {
        src: "127.0.0.2:5000".parse().unwrap(),
        src_identity: None,
        dst: SocketAddr::new(ip("127.0.0.1"), port),
    };
    assert_eq!(state.assert_rbac(&local, &conn(8080)), Ok(()));
    assert_eq!(
        state.assert_rbac(&local, &conn(9999)),
        Err(RbacDenied::NotAllowed)
    );
}

#[test]
fn full_example_loads_every_field() {
    let cfg = localconfig::load(&fixture("full.yaml")).unwrap();
    let w = &cfg.workloads[0];
    assert_eq!(w.workload_ips, vec![ip("10.0.0.10"), ip("fd00::10")]);
    assert_eq!(w.hostname, "server-0.demo.example");
    assert_eq!(w.network, "net1");
    assert_eq!(w.identity(), Identity::new("example.org", "demo", "server"));
    assert_eq!(
        w.waypoint.as_ref().unwrap().destination,
        GatewayDestination::Hostname(NamespacedHostname {
            namespace: "demo".into(),
            hostname: "waypoint.demo.svc.cluster.local".into()
        })
    );
    let gw = w.network_gateway.as_ref().unwrap();
    assert_eq!(
        gw.destination,
        GatewayDestination::Address(NetworkAddress::new("net1", ip("10.0.99.1")))
    );
    assert_eq!(gw.hbone_mtls_port, 15009);
    assert_eq!(
        (
            w.node.as_str(),
            w.canonical_name.as_str(),
            w.canonical_revision.as_str()
        ),
        ("node-a", "server", "v1")
    );
    assert_eq!(w.workload_type, WorkloadType::Pod);
    assert_eq!(w.workload_name, "server");
    assert_eq!(
        w.application_tunnel,
        Some(ApplicationTunnel {
            protocol: AppTunnelProtocol::Proxy,
            port: Some(15088)
        })
    );
    assert_eq!(w.services["demo/server.demo.svc.cluster.local"][&443], 0);
    assert_eq!(w.authorization_policies, vec!["demo/only-client"]);
    assert_eq!(w.cluster_id, "cluster-1");
    assert_eq!(w.locality.subzone, "s1");
    assert_eq!(w.capacity, 3);
    let host = &cfg.workloads[1];
    assert_eq!(
        host.uid, "Kubernetes//v1/Pod/kube-system/host-agent",
        "uid derived when missing"
    );
    assert_eq!(host.network_mode, NetworkMode::HostNetwork);
    assert_eq!(host.status, HealthStatus::Unhealthy);
    assert_eq!(
        (
            host.trust_domain.as_str(),
            host.service_account.as_str(),
            host.capacity
        ),
        ("cluster.local", "default", 1)
    );

    let s = &cfg.services[0];
    assert_eq!(s.vips.len(), 2);
    assert_eq!(s.cidr_vips[0].to_string(), "net1/10.200.0.0/16");
    assert_eq!(s.endpoints["Kubernetes//Pod/demo/extra"].port[&80], 9090);
    assert_eq!(s.weighted_waypoints.len(), 2);
    assert_eq!(
        s.weighted_waypoints[1].destination.hbone_mtls_port, 15008,
        "default port"
    );
    let lb = s.load_balancer.as_ref().unwrap();
    assert_eq!(lb.routing_preferences.len(), 6);
    assert_eq!(
        (lb.mode, lb.health_policy),
        (LbMode::Failover, HealthPolicy::AllowAll)
    );
    assert_eq!(s.ip_families, Some(IpFamilies::Dual));
    assert!(s.canonical);
    assert_eq!(s.visibility, Visibility::Namespace);

    let p = &cfg.policies[0];
    assert_eq!(
        (p.scope, p.action, p.dry_run),
        (PolicyScope::WorkloadSelector, PolicyAction::Allow, false)
    );
    assert_eq!(p.rules[0].len(), 2, "two clauses");
    assert_eq!(p.rules[0][0][0].destination_ips.len(), 2);
    assert!(cfg.policies[1].dry_run);

    // It round-trips through its own serialization (the config_dump shape).
    let yaml = serde_yaml::to_string(&cfg).unwrap();
    assert_eq!(localconfig::parse(&yaml).unwrap(), cfg);

    // And applies: the selector policy is enforced for the server.
    let state = ProxyState::new();
    state.replace_all(cfg);
    let server = state.workload_by_ip("net1", ip("10.0.0.10")).unwrap();
    let client = Some(Identity::new("example.org", "demo", "client"));
    let conn = |src_identity| Connection {
        src: "10.0.0.20:1".parse().unwrap(),
        src_identity,
        dst: "10.0.0.10:8080".parse().unwrap(),
    };
    assert_eq!(state.assert_rbac(&server, &conn(client)), Ok(()));
    assert_eq!(
        state.assert_rbac(&server, &conn(None)),
        Err(RbacDenied::NotAllowed)
    );
    assert!(
        state.workload_by_ip("", ip("10.0.0.2")).is_none(),
        "host network is not indexed"
    );
    let dump = state.snapshot_for_dump();
    assert_eq!(dump["workloads"].as_array().unwrap().len(), 2);
    assert_eq!(dump["policies"].as_array().unwrap().len(), 2);
}

#[test]
fn unknown_keys_are_rejected_with_location() {
    for (yaml, needle) in [
        ("workloads: []\nextras: 1\n", "extras"),
        (
            "workloads:\n- name: a\n  namespace: b\n  workloadIps: []\n  color: red\n",
            "color",
        ),
        (
            "services:\n- name: a\n  namespace: b\n  hostname: h\n  bogus: true\n",
            "bogus",
        ),
        (
            "policies:\n- name: a\n  namespace: b\n  scope: Global\n  action: Allow\n  rules: [[[{wat: 1}]]]\n",
            "wat",
        ),
    ] {
        let err = localconfig::parse(yaml).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LocalConfigError::Parse { .. }), "{msg}");
        assert!(msg.contains(needle) && msg.contains("line"), "{msg}");
    }
    // Missing required fields and bad values are errors too.
    assert!(
        localconfig::parse("workloads:\n- name: a\n  namespace: b\n").is_err(),
        "workloadIps required"
    );
    assert!(
        localconfig::parse("workloads:\n- name: a\n  namespace: b\n  workloadIps: [nope]\n")
            .is_err()
    );
    assert!(
        localconfig::parse("services:\n- {name: a, namespace: b, hostname: h, vips: [10.0.0.1]}\n")
            .is_err()
    );
    assert!(
        localconfig::parse(
            "workloads:\n- {name: a, namespace: b, workloadIps: [], protocol: QUIC}\n"
        )
        .is_err()
    );
    let dup = "workloads:\n- {uid: x, name: a, namespace: b, workloadIps: []}\n- {uid: x, name: c, namespace: b, workloadIps: []}\n";
    assert!(
        localconfig::parse(dup)
            .unwrap_err()
            .to_string()
            .contains("twice")
    );
    assert_eq!(
        localconfig::parse("# nothing\n").unwrap(),
        LocalConfig::default()
    );
    assert!(matches!(
        localconfig::load(Path::new("/nonexistent/zt.yaml")),
        Err(LocalConfigError::Read { .. })
    ));
}

const V1: &str = "workloads:\n- {uid: w1, name: w1, namespace: ns, workloadIps: [10.0.0.1]}\n";
const V2: &str = "workloads:\n- {uid: w2, name: w2, namespace: ns, workloadIps: [10.0.0.2]}\npolicies:\n- {name: p, namespace: ns, scope: Namespace, action: Deny, rules: [[]]}\n";

#[tokio::test(start_paused = true)]
async fn watcher_applies_changes_and_keeps_state_on_bad_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zt.yaml");
    std::fs::write(&path, V1).unwrap();
    let state = ProxyState::new();
    state.replace_all(localconfig::load(&path).unwrap());
    // An xDS resource: a local reload must not touch it.
    let mut xds = state.workload_by_uid("w1").unwrap().as_ref().clone();
    xds.uid = "from-xds".into();
    xds.workload_ips = vec![ip("10.0.0.99")];
    state.insert_workload(xds);

    let (trigger, drain) = ambit_core::drain::new();
    let task = tokio::spawn(localconfig::watch(path.clone(), state.clone(), drain));
    let mut policies = state.policy_changes();
    policies.mark_unchanged();

    // A malformed rewrite: the previous state stays.
    std::fs::write(&path, "workloads: [ {uid: broken\n").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(state.workload_by_ip("", ip("10.0.0.1")).is_some());
    assert!(!policies.has_changed().unwrap());

    // A valid rewrite replaces the local resources.
    std::fs::write(&path, V2).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        state.workload_by_ip("", ip("10.0.0.1")).is_none(),
        "old local workload gone"
    );
    assert_eq!(state.workload_by_ip("", ip("10.0.0.2")).unwrap().uid, "w2");
    assert!(
        state.workload_by_uid("from-xds").is_some(),
        "xDS resources kept"
    );
    assert!(state.policy("ns/p").is_some());
    assert!(policies.has_changed().unwrap(), "policy watchers told");

    // Deleting the file keeps the state too.
    std::fs::remove_file(&path).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(state.workload_by_uid("w2").is_some());

    // The watcher stops on drain.
    assert!(trigger.drain(Duration::from_secs(1)).await);
    task.await.unwrap();
}
