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

/// Short names for the packages.
pub use envoy::service::discovery::v3 as xds;
pub use istio::security;
pub use istio::v1::auth as ca;
pub use istio::workload;
pub use istio::workload::zds;

/// xDS type URLs ztunnel subscribes to.
pub mod type_url {
    pub const ADDRESS: &str = "type.googleapis.com/istio.workload.Address";
    pub const AUTHORIZATION: &str = "type.googleapis.com/istio.security.Authorization";
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

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
    fn capacity_is_wrapped_uint32_at_twenty_seven() {
        let w = workload::Workload {
            capacity: Some(3),
            ..Default::default()
        };
        // field 27, wire type 2 => (27<<3|2)=218 => [0xda, 0x01], len 2, inner field 1 varint 3
        assert_eq!(w.encode_to_vec(), vec![0xda, 0x01, 2, 0x08, 3]);
    }
}
