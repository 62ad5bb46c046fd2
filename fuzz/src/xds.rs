//! ztunnel's xDS resources: `istio.workload.Address` and `istio.security.Authorization`, decoded as the xDS
//! handler does and applied to a fresh `ProxyState`.

use std::net::SocketAddr;
use std::sync::Arc;

use ambit_core::Identity;
use ambit_core::rbac::{Authorization, Connection, evaluate};
use ambit_proto::security as pb_sec;
use ambit_proto::workload as pb;
use ambit_ztunnel::state::{AddressResource, ProxyState};
use prost::Message;

const NAME: &str = "fuzz/resource";

/// Input: one encoded `istio.workload.Address`.
pub fn xds_address(data: &[u8]) {
    let Ok(addr) = pb::Address::decode(data) else {
        return;
    };
    let empty = ProxyState::new().snapshot_for_dump();
    let state = ProxyState::new();
    let converted = AddressResource::try_from(addr.clone());
    let applied = state.insert_address(NAME, addr.clone());
    assert_eq!(
        converted.is_ok(),
        applied.is_ok(),
        "conversion and insert disagree"
    );
    if applied.is_err() {
        assert_eq!(
            state.snapshot_for_dump(),
            empty,
            "a rejected resource changed the state"
        );
        return;
    }
    let once = state.snapshot_for_dump();
    // Applying the same resource again changes nothing.
    if let Err(e) = state.insert_address(NAME, addr) {
        panic!("the second insert of an accepted resource failed: {e}");
    }
    assert_eq!(
        state.snapshot_for_dump(),
        once,
        "re-applying changed the state"
    );
    match converted {
        Ok(AddressResource::Workload(w)) => {
            let uid = if w.uid.is_empty() { NAME } else { &w.uid };
            assert!(
                state.workload_by_uid(uid).is_some(),
                "workload {uid} not found"
            );
            for ip in &w.workload_ips {
                let _ = state.workload_by_ip(&w.network, *ip);
            }
            let _ = state.services_for_workload(&w);
            let _ = state.policies_for(&w);
        }
        Ok(AddressResource::Service(s)) => {
            assert!(
                state.service_by_key(&s.key()).is_some(),
                "service {} not found",
                s.key()
            );
            let _ = state.service_by_hostname(&s.hostname, &s.namespace);
        }
        Err(_) => {}
    }
    // Removing it by its resource name leaves nothing behind.
    state.remove_address(NAME);
    assert_eq!(state.snapshot_for_dump(), empty, "remove left state behind");
}

/// Input: one encoded `istio.security.Authorization`.
pub fn xds_authorization(data: &[u8]) {
    let Ok(p) = pb_sec::Authorization::decode(data) else {
        return;
    };
    let converted = Authorization::try_from(p.clone());
    let state = ProxyState::new();
    let applied = state.insert_authorization(NAME, p);
    assert_eq!(
        converted.is_ok(),
        applied.is_ok(),
        "conversion and insert disagree"
    );
    let Ok(policy) = converted else { return };
    let _ = state.snapshot_for_dump();
    let policies = [Arc::new(policy)];
    for conn in connections() {
        let _ = evaluate(&policies, &conn);
    }
    state.remove_authorization(NAME);
}

fn connections() -> Vec<Connection> {
    let addr = |s: &str| {
        s.parse::<SocketAddr>()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    };
    vec![
        Connection {
            src: addr("10.0.0.1:40000"),
            src_identity: Some(Identity::new("cluster.local", "default", "sleep")),
            dst: addr("10.0.0.2:9080"),
        },
        Connection {
            src: addr("[fd00::1]:1234"),
            src_identity: None,
            dst: addr("[fd00::2]:80"),
        },
        Connection {
            src: addr("192.168.1.1:5000"),
            src_identity: Some(Identity::new("example.org", "istio-system", "ztunnel")),
            dst: addr("10.0.0.2:15008"),
        },
    ]
}
