//! Generated wire types. Field numbers follow upstream exactly (see `proto/*.proto`); the rest of Ambit converts
//! them into domain types at one boundary and never passes them around further.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod envoy {
    pub mod service {
        pub mod discovery {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }
        pub mod auth {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.auth.v3.rs"));
            }
        }
    }
    pub mod config {
        pub mod core {
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }
    pub mod r#type {
        pub mod v3 {
            include!(concat!(env!("OUT_DIR"), "/envoy.r#type.v3.rs"));
        }
    }
}

pub mod google {
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

pub mod istio {
    pub mod workload {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));
        pub mod zds {
            include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));
        }
    }
    pub mod security {
        include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
    }
    pub mod v1 {
        pub mod auth {
            include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
        }
    }
}

pub mod ambit {
    pub mod waypoint {
        include!(concat!(env!("OUT_DIR"), "/ambit.waypoint.rs"));
    }
}

/// Enum fields of the waypoint schema as names in YAML/JSON: `EXACT`, and also Gateway API's spelling `Exact`,
/// `PathPrefix`, `RegularExpression` (compared without case and underscores). Unknown names are an error.
pub mod serde_enum {
    macro_rules! by_name {
        ($module:ident, $ty:ty) => {
            pub mod $module {
                pub fn serialize<S: serde::Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
                    match <$ty>::try_from(*v) {
                        Ok(e) => s.serialize_str(e.as_str_name()),
                        Err(_) => s.serialize_i32(*v),
                    }
                }

                pub fn deserialize<'de, D: serde::Deserializer<'de>>(
                    d: D,
                ) -> Result<i32, D::Error> {
                    let name: String = serde::Deserialize::deserialize(d)?;
                    super::lookup(&name, |i| <$ty>::try_from(i).ok().map(|e| e.as_str_name()))
                        .ok_or_else(|| serde::de::Error::custom(format!("unknown value {name:?}")))
                }
            }
        };
    }

    fn squash(s: &str) -> String {
        s.chars()
            .filter(|c| *c != '_')
            .flat_map(char::to_uppercase)
            .collect()
    }

    fn lookup(name: &str, names: impl Fn(i32) -> Option<&'static str>) -> Option<i32> {
        let wanted = squash(name);
        (0..32).find(|i| names(*i).is_some_and(|n| squash(n) == wanted))
    }

    by_name!(route_kind, crate::waypoint::RouteKind);
    by_name!(parent_kind, crate::waypoint::parent_ref::Kind);
    by_name!(match_type, crate::waypoint::MatchType);
    by_name!(path_modifier_kind, crate::waypoint::path_modifier::Kind);
    by_name!(route_origin, crate::waypoint::RouteOrigin);
    by_name!(load_balancer_kind, crate::waypoint::load_balancer::Kind);
    by_name!(hash_algorithm, crate::waypoint::consistent_hash::Algorithm);
    by_name!(policy_target_kind, crate::waypoint::policy_target::Kind);
    by_name!(authz_action, crate::waypoint::authorization_policy::Action);
    by_name!(rate_limit_key, crate::waypoint::rate_limit::Key);
}

pub use ambit::waypoint;
/// Short names for the packages.
pub use envoy::service::auth::v3 as ext_authz;
pub use envoy::service::discovery::v3 as xds;
pub use istio::security;
pub use istio::v1::auth as ca;
pub use istio::workload;
pub use istio::workload::zds;

/// xDS type URLs: ztunnel subscribes to the first two, waypoints to `ADDRESS` and the `WAYPOINT_*` types.
pub mod type_url {
    pub const ADDRESS: &str = "type.googleapis.com/istio.workload.Address";
    pub const AUTHORIZATION: &str = "type.googleapis.com/istio.security.Authorization";
    pub const WAYPOINT_ROUTE: &str = "type.googleapis.com/ambit.waypoint.Route";
    pub const WAYPOINT_BACKEND_POLICY: &str = "type.googleapis.com/ambit.waypoint.BackendPolicy";
    pub const WAYPOINT_AUTHORIZATION: &str =
        "type.googleapis.com/ambit.waypoint.AuthorizationPolicy";
    pub const WAYPOINT_REQUEST_AUTHENTICATION: &str =
        "type.googleapis.com/ambit.waypoint.RequestAuthentication";
    pub const WAYPOINT_RATE_LIMIT: &str = "type.googleapis.com/ambit.waypoint.RateLimitPolicy";
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn waypoint_route_from_yaml_by_name() {
        let r: waypoint::Route = serde_json::from_value(serde_json::json!({
            "name": "ns/httproute/r/0",
            "kind": "HTTP",
            "parents": [{"kind": "SERVICE", "name": "a.ns.svc.cluster.local", "port": 80}],
            "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}, "headers": [{"type": "Exact", "name": "x", "value": "1"}]}],
            "filters": [{"requestHeaderModifier": {"set": [{"name": "a", "value": "b"}]}}],
            "backends": [{"hostname": "a.ns.svc.cluster.local", "port": 80, "weight": 1}],
        }))
        .unwrap();
        assert_eq!(
            r.matches[0].path.as_ref().unwrap().r#type,
            waypoint::MatchType::PathPrefix as i32
        );
        assert_eq!(
            r.filters[0].request_header_modifier.as_ref().unwrap().set[0].value,
            "b"
        );
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(back["matches"][0]["path"]["type"], "PATH_PREFIX");
        let bad =
            serde_json::from_value::<waypoint::PathMatch>(serde_json::json!({"type": "Glob"}));
        assert!(bad.unwrap_err().to_string().contains("unknown value"));
    }

    #[test]
    fn policies_from_yaml_by_name() {
        let p: waypoint::BackendPolicy = serde_json::from_value(serde_json::json!({
            "hostname": "r.demo.svc.cluster.local",
            "policy": {"loadBalancer": {"kind": "ConsistentHash", "consistentHash": {"headerName": "x-user", "algorithm": "MAGLEV"}}},
            "subsets": [{"name": "v1", "labels": {"version": "v1"}, "workloads": {"uids": ["a"]}}],
        }))
        .unwrap();
        let lb = p.policy.unwrap().load_balancer.unwrap();
        assert_eq!(
            lb.kind,
            waypoint::load_balancer::Kind::ConsistentHash as i32
        );
        assert_eq!(
            lb.consistent_hash.unwrap().algorithm,
            waypoint::consistent_hash::Algorithm::Maglev as i32
        );
        let a: waypoint::AuthorizationPolicy = serde_json::from_value(serde_json::json!({
            "name": "demo/deny-post",
            "action": "DENY",
            "targets": [{"kind": "Service", "name": "r.demo.svc.cluster.local"}],
            "rules": [{"to": [{"methods": ["POST"]}]}],
        }))
        .unwrap();
        assert_eq!(
            a.action,
            waypoint::authorization_policy::Action::Deny as i32
        );
        assert_eq!(
            a.targets[0].kind,
            waypoint::policy_target::Kind::Service as i32
        );
    }

    #[test]
    fn zds_del_workload_uses_field_two() {
        let del = zds::DelWorkload { uid: "u".into() };
        // field 2, wire type 2 (length-delimited) => tag byte 0x12
        assert_eq!(del.encode_to_vec(), vec![0x12, 1, b'u']);
    }

    #[test]
    fn workload_uid_is_field_twenty() {
        let w = workload::Workload {
            uid: "x".into(),
            ..Default::default()
        };
        // field 20, wire type 2 => varint tag (20 << 3 | 2) = 162 = [0xa2, 0x01]
        assert_eq!(w.encode_to_vec(), vec![0xa2, 0x01, 1, b'x']);
    }

    #[test]
    fn network_address_length_has_presence() {
        let a = workload::NetworkAddress {
            network: String::new(),
            address: vec![],
            length: Some(0),
        };
        assert_eq!(a.encode_to_vec(), vec![0x18, 0]);
        let b = workload::NetworkAddress::default();
        assert!(b.encode_to_vec().is_empty());
    }

    #[test]
    fn service_account_match_keeps_camel_case_field_two() {
        let m = security::ServiceAccountMatch {
            namespace: "a".into(),
            service_account: "b".into(),
        };
        assert_eq!(m.encode_to_vec(), vec![0x0a, 1, b'a', 0x12, 1, b'b']);
    }

    #[test]
    fn ext_authz_is_envoys_service_with_envoys_field_numbers() {
        assert_eq!(
            ext_authz::authorization_server::SERVICE_NAME,
            "envoy.service.auth.v3.Authorization"
        );
        // CheckResponse.status = 1, google.rpc.Status.code = 1.
        let r = ext_authz::CheckResponse {
            status: Some(google::rpc::Status {
                code: 7,
                message: String::new(),
            }),
            http_response: None,
        };
        assert_eq!(r.encode_to_vec(), vec![0x0a, 2, 0x08, 7]);
        // OkHttpResponse is field 3 of the oneof; its headers_to_remove is field 5 (5<<3|2 = 0x2a).
        let ok = ext_authz::CheckResponse {
            status: None,
            http_response: Some(ext_authz::check_response::HttpResponse::OkResponse(
                ext_authz::OkHttpResponse {
                    headers: vec![],
                    headers_to_remove: vec!["a".into()],
                },
            )),
        };
        assert_eq!(ok.encode_to_vec(), vec![0x1a, 3, 0x2a, 1, b'a']);
        // HttpRequest.protocol = 10 (10<<3|2 = 0x52), Peer.principal = 4.
        let http = ext_authz::attribute_context::HttpRequest {
            protocol: "h".into(),
            ..Default::default()
        };
        assert_eq!(http.encode_to_vec(), vec![0x52, 1, b'h']);
        let peer = ext_authz::attribute_context::Peer {
            address: None,
            principal: "p".into(),
        };
        assert_eq!(peer.encode_to_vec(), vec![0x22, 1, b'p']);
        // HeaderValueOption.append is a BoolValue at 2, append_action at 3.
        let o = envoy::config::core::v3::HeaderValueOption {
            header: None,
            append: Some(false),
            append_action: 1,
        };
        assert_eq!(o.encode_to_vec(), vec![0x12, 0, 0x18, 1]);
    }

    #[test]
    fn capacity_is_wrapped_uint32_at_twenty_seven() {
        let w = workload::Workload {
            capacity: Some(3),
            ..Default::default()
        };
        // field 27, wire type 2 => (27<<3|2)=218 => [0xda, 0x01], len 2, inner field 1 varint 3
        assert_eq!(w.encode_to_vec(), vec![0xda, 0x01, 2, 0x08, 3]);
    }
}
