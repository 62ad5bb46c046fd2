//! Bad xDS resources through ztunnel's real handler, [`StateHandler`]: the type the xDS client hands every
//! response to. Its rejections are what the client NACKs (`name: reason`, joined with `; `; that step is tested in
//! `core/tests/xds_client.rs`), so each test asserts the rejection it returns, and what the proxy then finds when
//! it looks the state up as the data path does (`find_workload` + `assert_rbac` inbound, `workload_by_ip`
//! outbound), and that nothing else moved (`/config_dump`'s state, the policy-change signal).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use ambit_core::Identity;
use ambit_core::xds::{Rejection, XdsHandler, XdsUpdate};
use ambit_proto::security as sec;
use ambit_proto::type_url::{ADDRESS, AUTHORIZATION};
use ambit_proto::workload as pb;
use prost::Message;
use tracing::Level;

use super::StateHandler;
use crate::rbac::{Connection, RbacDenied};
use crate::state::ProxyState;

const DST_UID: &str = "Kubernetes//Pod/ns/dst";
const DST_IP: &str = "10.0.1.5";
const ALLOW: &str = "ns/allow";

/// Bytes no protobuf message decodes from: a varint cut short, a length running past the end, an end-group tag.
const GARBAGE: [&[u8]; 3] = [&[0xff], &[0x0a, 0x05, 0x01], &[0x0c]];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn octets(s: &str) -> Vec<u8> {
    match ip(s) {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn any(type_url: &str, value: Vec<u8>) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.to_owned(),
        value,
    }
}

fn upsert(name: &str, resource: prost_types::Any) -> XdsUpdate {
    XdsUpdate::Upsert {
        name: name.to_owned(),
        version: "v1".to_owned(),
        resource,
    }
}

fn address(name: &str, w: pb::Workload) -> XdsUpdate {
    let a = pb::Address {
        r#type: Some(pb::address::Type::Workload(w)),
    };
    upsert(name, any(ADDRESS, a.encode_to_vec()))
}

fn authorization(name: &str, p: sec::Authorization) -> XdsUpdate {
    upsert(name, any(AUTHORIZATION, p.encode_to_vec()))
}

/// The destination pod `ns/dst` (service account `dst`) at `ips`, selecting the policies `policies`.
fn dst(ips: &[&str], policies: &[&str]) -> pb::Workload {
    pb::Workload {
        uid: DST_UID.into(),
        name: "dst".into(),
        namespace: "ns".into(),
        service_account: "dst".into(),
        addresses: ips.iter().map(|i| octets(i)).collect(),
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        authorization_policies: policies.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    }
}

fn exact(s: &str) -> sec::StringMatch {
    sec::StringMatch {
        match_type: Some(sec::string_match::MatchType::Exact(s.to_owned())),
    }
}

/// A WORKLOAD_SELECTOR policy `ns/<name>` with one rule of one clause holding `m`.
fn policy(name: &str, action: sec::Action, m: sec::Match) -> sec::Authorization {
    sec::Authorization {
        name: name.into(),
        namespace: "ns".into(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: action as i32,
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause { matches: vec![m] }],
        }],
        ..Default::default()
    }
}

/// From namespace `ns` to port `port`.
fn from_ns_to_port(ns: &str, port: u32) -> sec::Match {
    sec::Match {
        namespaces: vec![exact(ns)],
        destination_ports: vec![port],
        ..Default::default()
    }
}

fn handler() -> (StateHandler, ProxyState) {
    let state = ProxyState::new();
    (StateHandler(state.clone()), state)
}

fn apply_ok(h: &StateHandler, type_url: &str, updates: Vec<XdsUpdate>) {
    assert_eq!(h.apply(type_url, updates), vec![], "rejected a good update");
}

/// Inbound authorization as the proxy does it: find the local workload `ns/dst`, then check a connection from a
/// client of namespace `src_ns` to `port` against its policies.
fn authorize(state: &ProxyState, src_ns: &str, port: u16) -> Result<(), RbacDenied> {
    let w = state
        .find_workload("ns", "dst", "dst")
        .expect("the destination workload is known");
    let conn = Connection {
        src: "10.0.0.1:40000".parse::<SocketAddr>().unwrap(),
        src_identity: Some(Identity::new("cluster.local", src_ns, "client")),
        dst: SocketAddr::new(w.workload_ips[0], port),
    };
    state.assert_rbac(&w, &conn)
}

/// A good mesh: `ns/dst` selecting `ns/allow`, which lets `client-ns` reach port 8080 only.
fn good_mesh() -> (StateHandler, ProxyState) {
    let (h, state) = handler();
    apply_ok(
        &h,
        ADDRESS,
        vec![address(DST_UID, dst(&[DST_IP], &[ALLOW]))],
    );
    apply_ok(
        &h,
        AUTHORIZATION,
        vec![authorization(
            ALLOW,
            policy(
                "allow",
                sec::Action::Allow,
                from_ns_to_port("client-ns", 8080),
            ),
        )],
    );
    assert_eq!(authorize(&state, "client-ns", 8080), Ok(()));
    assert_eq!(
        authorize(&state, "client-ns", 9090),
        Err(RbacDenied::NotAllowed)
    );
    assert_eq!(
        authorize(&state, "other-ns", 8080),
        Err(RbacDenied::NotAllowed)
    );
    (h, state)
}

/// One recorded event: its level and its fields (the message under `message`), values in `Debug` form.
#[derive(Debug)]
struct Logged {
    level: Level,
    fields: BTreeMap<String, String>,
}

/// A subscriber that records every event, for `tracing::subscriber::with_default`.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Logged>>>);

impl tracing::Subscriber for Recorder {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut |f: &tracing::field::Field, v: &dyn std::fmt::Debug| {
            fields.insert(f.name().to_owned(), format!("{v:?}"));
        });
        self.0.lock().unwrap().push(Logged {
            level: *event.metadata().level(),
            fields,
        });
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Recorder {
    fn take(&self) -> Vec<Logged> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

// ----- 1. undecodable bytes -----

#[test]
fn undecodable_address_and_authorization_bytes_are_rejected_by_name_and_change_nothing() {
    let (h, state) = good_mesh();
    let mut changes = state.policy_changes();
    changes.mark_unchanged();
    let before = state.snapshot_for_dump();
    for type_url in [ADDRESS, AUTHORIZATION] {
        for (i, bytes) in GARBAGE.iter().enumerate() {
            let name = format!("ns/garbage-{i}");
            let rejected = h.apply(type_url, vec![upsert(&name, any(type_url, bytes.to_vec()))]);
            assert_eq!(rejected.len(), 1, "{type_url} {bytes:?}: {rejected:?}");
            assert_eq!(rejected[0].name, name, "the NACK names the resource");
            assert!(
                rejected[0]
                    .reason
                    .starts_with("decode: failed to decode Protobuf message"),
                "{type_url} {bytes:?}: {}",
                rejected[0].reason
            );
        }
    }
    assert_eq!(state.snapshot_for_dump(), before, "the state moved");
    assert!(
        !changes.has_changed().unwrap(),
        "live connections were told to re-check their authorization"
    );
    assert_eq!(authorize(&state, "client-ns", 8080), Ok(()));
    assert_eq!(
        authorize(&state, "other-ns", 8080),
        Err(RbacDenied::NotAllowed)
    );

    // In one response with good resources, only the bad one is rejected; the good ones apply.
    let mut other = dst(&["10.0.1.9"], &[]);
    other.uid = "Kubernetes//Pod/ns/other".into();
    other.name = "other".into();
    let rejected = h.apply(
        ADDRESS,
        vec![
            upsert("ns/garbage", any(ADDRESS, GARBAGE[0].to_vec())),
            address("Kubernetes//Pod/ns/other", other),
        ],
    );
    assert_eq!(
        rejected.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["ns/garbage"]
    );
    let w = state.workload_by_ip("", ip("10.0.1.9")).unwrap();
    assert_eq!(w.uid, "Kubernetes//Pod/ns/other");
    let rejected = h.apply(
        AUTHORIZATION,
        vec![
            authorization(
                "ns/deny",
                policy(
                    "deny",
                    sec::Action::Deny,
                    from_ns_to_port("client-ns", 8080),
                ),
            ),
            upsert("ns/garbage", any(AUTHORIZATION, GARBAGE[1].to_vec())),
        ],
    );
    assert_eq!(
        rejected.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["ns/garbage"]
    );
    assert!(state.policy("ns/deny").is_some());
}

// ----- 2. unknown type URLs -----

#[test]
fn a_response_of_an_unknown_type_is_accepted_logged_and_not_applied() {
    let (h, state) = good_mesh();
    let before = state.snapshot_for_dump();
    let unknown = "type.googleapis.com/example.Unknown";
    // A perfectly good Address, but under a type the handler does not know: not applied, not rejected (ACK). (The
    // client does not even pass on responses of types it did not subscribe to: `core/tests/xds_client.rs`.)
    let mut moved = dst(&["10.0.1.77"], &[]);
    moved.uid = "Kubernetes//Pod/ns/new".into();
    let logs = Recorder::default();
    let rejected = tracing::subscriber::with_default(logs.clone(), || {
        h.apply(
            unknown,
            vec![
                address("Kubernetes//Pod/ns/new", moved),
                upsert("ns/garbage", any(unknown, GARBAGE[0].to_vec())),
            ],
        )
    });
    assert_eq!(
        rejected,
        Vec::<Rejection>::new(),
        "an unknown type is ACKed"
    );
    assert_eq!(state.snapshot_for_dump(), before, "the state moved");
    assert!(state.workload_by_ip("", ip("10.0.1.77")).is_none());
    let warnings: Vec<Logged> = logs
        .take()
        .into_iter()
        .filter(|e| e.level == Level::WARN)
        .collect();
    assert_eq!(warnings.len(), 2, "one WARN per resource: {warnings:?}");
    for w in &warnings {
        assert_eq!(w.fields["message"], "ignoring resource of an unknown type");
        assert_eq!(w.fields["type_url"], format!("{unknown:?}"));
    }

    // A removal under an unknown type removes nothing either (before the fix it removed the workload by name).
    let rejected = tracing::subscriber::with_default(logs.clone(), || {
        h.apply(
            unknown,
            vec![XdsUpdate::Remove {
                name: DST_UID.to_owned(),
            }],
        )
    });
    assert_eq!(rejected, vec![]);
    let warnings = logs.take();
    assert!(
        warnings.iter().any(|e| e.level == Level::WARN
            && e.fields["message"] == "ignoring resource of an unknown type"),
        "{warnings:?}"
    );
    assert!(
        state.workload_by_uid(DST_UID).is_some(),
        "a removal of an unknown type deleted a workload"
    );
    assert_eq!(state.snapshot_for_dump(), before);
}

#[test]
fn the_type_inside_the_any_is_not_checked_the_response_type_decides() {
    // The resource's own `Any.type_url` is not compared with the response's: the bytes are read as the response's
    // type. An Address labelled as something else is applied as an Address; Authorization bytes in an Address
    // response are read as an Address, and here that is a decode error naming the resource.
    let (h, state) = handler();
    let w = pb::Address {
        r#type: Some(pb::address::Type::Workload(dst(&[DST_IP], &[]))),
    };
    let labelled = any("type.googleapis.com/example.Unknown", w.encode_to_vec());
    apply_ok(&h, ADDRESS, vec![upsert(DST_UID, labelled)]);
    assert_eq!(
        state.workload_by_ip("", ip(DST_IP)).unwrap().uid,
        DST_UID,
        "applied as the response's type"
    );
    let p = policy(
        "allow",
        sec::Action::Allow,
        from_ns_to_port("client-ns", 8080),
    );
    let rejected = h.apply(
        ADDRESS,
        vec![upsert("ns/allow", any(AUTHORIZATION, p.encode_to_vec()))],
    );
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].name, "ns/allow");
    assert!(
        rejected[0].reason.starts_with("decode: "),
        "{}",
        rejected[0].reason
    );
    assert!(state.policy("ns/allow").is_none());
}

// ----- 3. the last good resource is kept -----

#[test]
fn a_rejected_update_keeps_the_last_good_resource_and_a_good_one_replaces_it() {
    let (h, state) = good_mesh();
    let good_workload = state.workload_by_uid(DST_UID).unwrap();
    let good_policy = state.policy(ALLOW).unwrap();
    let before = state.snapshot_for_dump();
    let mut changes = state.policy_changes();
    changes.mark_unchanged();

    // Bad updates of the same Address: undecodable, a 3-byte IP beside a new good one, an unknown tunnel protocol,
    // no workload or service at all.
    let mut three_byte_ip = dst(&["10.0.1.6"], &[]);
    three_byte_ip.addresses.push(vec![10, 0, 1]);
    let mut bad_tunnel = dst(&["10.0.1.6"], &[]);
    bad_tunnel.tunnel_protocol = 9;
    let empty = pb::Address { r#type: None };
    let bad_addresses = [
        (
            upsert(DST_UID, any(ADDRESS, GARBAGE[1].to_vec())),
            "decode: ",
        ),
        (
            address(DST_UID, three_byte_ip),
            "invalid IP address: 3 bytes (want 4 or 16)",
        ),
        (
            address(DST_UID, bad_tunnel),
            "unknown tunnel_protocol value 9",
        ),
        (
            upsert(DST_UID, any(ADDRESS, empty.encode_to_vec())),
            "address has neither a workload nor a service",
        ),
    ];
    for (update, reason) in bad_addresses {
        let rejected = h.apply(ADDRESS, vec![update]);
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0].name, DST_UID);
        assert!(
            rejected[0].reason.starts_with(reason),
            "{} (want {reason})",
            rejected[0].reason
        );
    }
    // Bad updates of the same Authorization: undecodable, an unknown action, an unknown scope.
    let mut bad_action = policy(
        "allow",
        sec::Action::Allow,
        from_ns_to_port("other-ns", 8080),
    );
    bad_action.action = 5;
    let mut bad_scope = policy(
        "allow",
        sec::Action::Allow,
        from_ns_to_port("other-ns", 8080),
    );
    bad_scope.scope = 7;
    let bad_policies = [
        (
            upsert(ALLOW, any(AUTHORIZATION, GARBAGE[2].to_vec())),
            "decode: ",
        ),
        (authorization(ALLOW, bad_action), "unknown action value 5"),
        (authorization(ALLOW, bad_scope), "unknown scope value 7"),
    ];
    for (update, reason) in bad_policies {
        let rejected = h.apply(AUTHORIZATION, vec![update]);
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0].name, ALLOW);
        assert!(
            rejected[0].reason.starts_with(reason),
            "{} (want {reason})",
            rejected[0].reason
        );
    }

    // The last good ones are what the proxy finds: the same workload at the same IP, the same policy deciding.
    let w = state.workload_by_ip("", ip(DST_IP)).unwrap();
    assert!(Arc::ptr_eq(&w, &good_workload), "the workload was replaced");
    assert!(
        state.workload_by_ip("", ip("10.0.1.6")).is_none(),
        "an IP of a rejected update was indexed"
    );
    let w = state.find_workload("ns", "dst", "dst").unwrap();
    assert!(Arc::ptr_eq(&state.policies_for(&w)[0], &good_policy));
    assert_eq!(authorize(&state, "client-ns", 8080), Ok(()));
    assert_eq!(
        authorize(&state, "other-ns", 8080),
        Err(RbacDenied::NotAllowed)
    );
    assert_eq!(state.snapshot_for_dump(), before, "the state moved");
    assert!(!changes.has_changed().unwrap(), "authorization re-checked");

    // A later good update of each does replace it.
    apply_ok(
        &h,
        ADDRESS,
        vec![address(DST_UID, dst(&["10.0.1.7"], &[ALLOW]))],
    );
    assert!(state.workload_by_ip("", ip(DST_IP)).is_none());
    assert_eq!(
        state.workload_by_ip("", ip("10.0.1.7")).unwrap().uid,
        DST_UID
    );
    apply_ok(
        &h,
        AUTHORIZATION,
        vec![authorization(
            ALLOW,
            policy(
                "allow",
                sec::Action::Allow,
                from_ns_to_port("other-ns", 9090),
            ),
        )],
    );
    assert!(changes.has_changed().unwrap());
    assert_eq!(authorize(&state, "other-ns", 9090), Ok(()));
    assert_eq!(
        authorize(&state, "client-ns", 8080),
        Err(RbacDenied::NotAllowed)
    );
}

// ----- 4. invalid entries inside an L4 Authorization -----

/// Matches from `client-ns` that also carry one entry the converter cannot read. As written, each matches no
/// connection to port 8080 or 9090 (an address of 3 bytes or a /40 matches no IP, port 70000 is no port, a string
/// match without a value matches nothing). The name says which entry.
fn invalid_entries() -> Vec<(&'static str, sec::Match)> {
    let client = |m: sec::Match| sec::Match {
        namespaces: vec![exact("client-ns")],
        ..m
    };
    vec![
        (
            "destination port 70000",
            client(sec::Match {
                destination_ports: vec![70000],
                ..Default::default()
            }),
        ),
        (
            "3-byte source IP",
            client(sec::Match {
                source_ips: vec![sec::Address {
                    address: vec![10, 0, 0],
                    length: 24,
                }],
                ..Default::default()
            }),
        ),
        (
            "destination CIDR /40",
            client(sec::Match {
                destination_ips: vec![sec::Address {
                    address: octets(DST_IP),
                    length: 40,
                }],
                ..Default::default()
            }),
        ),
        (
            "principal without a value",
            client(sec::Match {
                principals: vec![sec::StringMatch { match_type: None }],
                ..Default::default()
            }),
        ),
    ]
}

#[test]
fn a_deny_with_an_invalid_entry_is_accepted_and_denies_more_not_less() {
    // The invalid entry is dropped and the rest of the match kept, so a DENY denies more than written, never less
    // (fail-closed). Nothing is rejected, and no log exists to assert (the converter logs nothing).
    for (what, m) in invalid_entries() {
        let (h, state) = good_mesh();
        apply_ok(
            &h,
            ADDRESS,
            vec![address(DST_UID, dst(&[DST_IP], &[ALLOW, "ns/deny"]))],
        );
        let rejected = h.apply(
            AUTHORIZATION,
            vec![authorization(
                "ns/deny",
                policy("deny", sec::Action::Deny, m),
            )],
        );
        assert_eq!(rejected, vec![], "{what}: rejected");
        assert_eq!(
            authorize(&state, "client-ns", 8080),
            Err(RbacDenied::ExplicitDeny("ns/deny".into())),
            "{what}: the DENY does not apply to client-ns:8080"
        );
        assert_eq!(
            authorize(&state, "other-ns", 8080),
            Err(RbacDenied::NotAllowed),
            "{what}"
        );
    }
}

#[test]
fn an_allow_update_with_an_invalid_entry_does_not_widen_access() {
    // The good ALLOW lets client-ns reach 8080 only. Each update keeps that rule and adds a second one holding an
    // entry the converter cannot read: as written the second rule allows nothing, so client-ns:8080 stays allowed
    // and client-ns:9090 refused, whether the update is rejected (NACK, the last good policy kept) or applied
    // fail-closed (the unreadable rule dropped).
    let mut widened = Vec::new();
    for (what, m) in invalid_entries() {
        let (h, state) = good_mesh();
        let mut p = policy(
            "allow",
            sec::Action::Allow,
            from_ns_to_port("client-ns", 8080),
        );
        p.rules.push(sec::Rule {
            clauses: vec![sec::Clause { matches: vec![m] }],
        });
        let rejected = h.apply(AUTHORIZATION, vec![authorization(ALLOW, p)]);
        if let Some(r) = rejected.first() {
            assert_eq!(r.name, ALLOW, "{what}");
        }
        assert_eq!(authorize(&state, "client-ns", 8080), Ok(()), "{what}");
        if authorize(&state, "client-ns", 9090).is_ok() {
            widened.push(format!("{what} (rejected: {rejected:?})"));
        }
    }
    assert_eq!(
        widened,
        Vec::<String>::new(),
        "client-ns may now reach every port"
    );
}

#[test]
fn a_new_allow_policy_with_an_invalid_entry_does_not_open_access() {
    // A workload whose only ALLOW policy, as written, allows nothing: every connection must be refused. Rejecting
    // the policy (NACK) is not enough here: with no ALLOW policy at all everything is allowed.
    let mut opened = Vec::new();
    for (what, m) in invalid_entries() {
        let (h, state) = handler();
        apply_ok(
            &h,
            ADDRESS,
            vec![address(DST_UID, dst(&[DST_IP], &["ns/new"]))],
        );
        let rejected = h.apply(
            AUTHORIZATION,
            vec![authorization(
                "ns/new",
                policy("new", sec::Action::Allow, m),
            )],
        );
        for (ns, port) in [("client-ns", 8080), ("client-ns", 9090), ("other-ns", 8080)] {
            if authorize(&state, ns, port).is_ok() {
                opened.push(format!(
                    "{what}: {ns} reaches {port} (rejected: {rejected:?})"
                ));
            }
        }
    }
    assert_eq!(opened, Vec::<String>::new());
}

#[test]
fn a_resource_of_one_type_does_not_replace_or_remove_one_of_another() {
    // An Authorization's name is `namespace/name`, a Service's Address is `namespace/hostname`, and a policy's name
    // may contain dots: `ns/svc.ns.svc.cluster.local` can name both. Each type's names are its own (as in
    // upstream, which keeps one table per type).
    let (h, state) = good_mesh();
    let key = "ns/svc.ns.svc.cluster.local";
    let svc = pb::Service {
        name: "svc".into(),
        namespace: "ns".into(),
        hostname: "svc.ns.svc.cluster.local".into(),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: octets("10.96.0.10"),
            length: None,
        }],
        ports: vec![pb::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: 0,
        }],
        ..Default::default()
    };
    let a = pb::Address {
        r#type: Some(pb::address::Type::Service(svc)),
    };
    apply_ok(
        &h,
        ADDRESS,
        vec![upsert(key, any(ADDRESS, a.encode_to_vec()))],
    );
    assert!(state.service_by_key(key).is_some());
    let p = policy(
        "svc.ns.svc.cluster.local",
        sec::Action::Deny,
        from_ns_to_port("other-ns", 22),
    );
    apply_ok(&h, AUTHORIZATION, vec![authorization(key, p)]);
    let mut lost = Vec::new();
    if state.service_by_key(key).is_none() {
        lost.push("an Authorization upsert removed the Service of the same name");
    }
    // A removal in the Authorization type, of a name only an Address has.
    apply_ok(
        &h,
        AUTHORIZATION,
        vec![XdsUpdate::Remove {
            name: DST_UID.to_owned(),
        }],
    );
    if state.workload_by_uid(DST_UID).is_none() {
        lost.push("an Authorization removal removed a workload");
    }
    assert_eq!(lost, Vec::<&str>::new());
}
