#![allow(clippy::unwrap_used)]

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn inbound(src: &str, host: Option<&str>) -> InboundConnection {
    InboundConnection {
        src: addr(src),
        original_dst: host.map(Into::into),
        actual_dst: addr("10.0.0.2:8080"),
        protocol: Protocol::Hbone,
    }
}

#[test]
fn registered_while_the_guard_lives() {
    let r = ConnectionRegistry::new(2);
    let a = r.inbound(
        0,
        inbound("10.0.0.1:40000", Some("echo.default.svc.cluster.local")),
    );
    let b = r.outbound(
        1,
        OutboundConnection {
            src: addr("10.0.0.2:50000"),
            original_dst: addr("10.96.0.10:80"),
            actual_dst: addr("10.0.0.3:15008"),
            protocol: Protocol::Hbone,
        },
    );
    let d = r.dump();
    assert_eq!(d.inbound.len(), 1);
    assert_eq!(d.outbound.len(), 1);
    assert_eq!(d.outbound[0].actual_dst, addr("10.0.0.3:15008"));
    drop(a);
    let d = r.dump();
    assert!(d.inbound.is_empty());
    assert_eq!(d.outbound.len(), 1);
    drop(b);
    assert!(r.is_empty());
    assert_eq!(r.dump(), ConnectionsDump::default());
}

#[test]
fn upstream_json_shape() {
    let r = ConnectionRegistry::new(1);
    let _a = r.inbound(
        0,
        inbound("10.0.0.1:40000", Some("echo.default.svc.cluster.local")),
    );
    let _b = r.inbound(
        0,
        InboundConnection {
            src: addr("[fd00::1]:40001"),
            original_dst: None,
            actual_dst: addr("[fd00::2]:8080"),
            protocol: Protocol::Tcp,
        },
    );
    let _c = r.outbound(
        0,
        OutboundConnection {
            src: addr("10.0.0.2:50000"),
            original_dst: addr("192.0.2.1:443"),
            actual_dst: addr("192.0.2.1:443"),
            protocol: Protocol::Tcp,
        },
    );
    let json = serde_json::to_value(r.dump()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "inbound": [
                {"src": "10.0.0.1:40000", "originalDst": "echo.default.svc.cluster.local",
                 "actualDst": "10.0.0.2:8080", "protocol": "HBONE"},
                {"src": "[fd00::1]:40001", "originalDst": null, "actualDst": "[fd00::2]:8080", "protocol": "TCP"},
            ],
            "outbound": [
                {"src": "10.0.0.2:50000", "originalDst": "192.0.2.1:443", "actualDst": "192.0.2.1:443",
                 "protocol": "TCP"},
            ],
        })
    );
}

#[test]
fn identical_streams_show_once_and_stay_until_the_last_ends() {
    let r = ConnectionRegistry::new(1);
    let a = r.inbound(0, inbound("10.0.0.1:40000", None));
    let b = r.inbound(0, inbound("10.0.0.1:40000", None));
    assert_eq!(r.len(), 2);
    assert_eq!(r.dump().inbound.len(), 1);
    drop(a);
    assert_eq!(r.dump().inbound.len(), 1, "the second stream is still open");
    drop(b);
    assert!(r.dump().inbound.is_empty());
}

#[test]
fn any_worker_index_maps_to_a_shard() {
    let r = ConnectionRegistry::new(2);
    let a = r.inbound(5, inbound("10.0.0.1:1", None));
    let b = r.inbound(0, inbound("10.0.0.1:2", None));
    assert_eq!(r.dump().inbound.len(), 2);
    drop(a);
    drop(b);
    assert!(r.is_empty());
    // Zero workers still gives one shard.
    let r = ConnectionRegistry::new(0);
    let _c = r.inbound(3, inbound("10.0.0.1:3", None));
    assert_eq!(r.len(), 1);
}

#[test]
fn slots_are_reused_without_mixing_up_connections() {
    let r = ConnectionRegistry::new(1);
    let a = r.inbound(0, inbound("10.0.0.1:1", None));
    let b = r.inbound(0, inbound("10.0.0.1:2", None));
    drop(a);
    // Takes a's slot; dropping it must not remove b, and b's drop must not remove it.
    let c = r.inbound(0, inbound("10.0.0.1:3", None));
    let srcs = |r: &ConnectionRegistry| -> Vec<SocketAddr> {
        r.dump().inbound.iter().map(|c| c.src).collect()
    };
    assert_eq!(srcs(&r), [addr("10.0.0.1:2"), addr("10.0.0.1:3")]);
    drop(b);
    assert_eq!(srcs(&r), [addr("10.0.0.1:3")]);
    drop(c);
    assert!(r.is_empty());
}
