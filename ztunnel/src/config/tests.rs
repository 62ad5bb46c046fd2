#![allow(clippy::unwrap_used)]

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn cfg(pairs: &[(&str, &str)]) -> Config {
    Config::from_env_with_cpus(&env(pairs), 8).unwrap()
}

fn err(pairs: &[(&str, &str)]) -> String {
    Config::from_env_with_cpus(&env(pairs), 8)
        .unwrap_err()
        .to_string()
}

#[test]
fn defaults() {
    let c = cfg(&[]);
    assert_eq!(c.proxy_mode, ProxyMode::Shared);
    assert_eq!(c.proxy_workload_info, None);
    assert_eq!(c.xds_address.as_deref(), Some("https://localhost:15012"));
    assert_eq!(c.ca_address.as_deref(), Some("https://localhost:15012"));
    assert_eq!(c.xds_root_ca, DEFAULT_ROOT_CA);
    assert_eq!(c.ca_root_ca, DEFAULT_ROOT_CA);
    assert_eq!(c.cluster_id, "Kubernetes");
    assert_eq!(c.cluster_domain, "cluster.local");
    assert_eq!(c.trust_domain, "cluster.local");
    assert_eq!(c.network, "");
    assert_eq!(c.node_name, None);
    assert_eq!(c.auth_token, None);
    assert_eq!(c.local_xds, None);
    assert!(!c.fake_ca);
    assert_eq!(c.secret_ttl, Duration::from_secs(86400));
    assert_eq!(c.packet_mark, Some(1337));
    assert_eq!(c.enable_orig_src, None);
    assert_eq!(c.worker_threads, 2);
    assert_eq!(c.pool_max_streams_per_conn, 100);
    assert_eq!(c.pool_unused_release_timeout, Duration::from_secs(300));
    assert_eq!(c.http2_stream_window, 4 << 20);
    assert_eq!(c.http2_connection_window, 16 << 20);
    assert_eq!(c.http2_frame_size, 1 << 20);
    assert!(c.keepalive_enabled);
    assert_eq!(c.keepalive_time, Duration::from_secs(180));
    assert_eq!(c.keepalive_interval, Duration::from_secs(180));
    assert_eq!(c.keepalive_retries, 9);
    assert!(!c.user_timeout_enabled);
    assert_eq!(c.tcp_user_timeout(), None);
    assert_eq!(c.termination_deadline, Duration::from_secs(5));
    assert!(
        c.ipv6_enabled && !c.socks5_enabled && c.enable_response_baggage && c.localhost_app_tunnel
    );
    assert_eq!(c.inpod_uds, PathBuf::from("/var/run/ztunnel/ztunnel.sock"));
    assert!(c.inpod_port_reuse);
    assert_eq!(c.tls_backend, "rustls");
    assert_eq!(c.outbound_addr, "[::]:15001".parse().unwrap());
    assert_eq!(c.inbound_addr, "[::]:15006".parse().unwrap());
    assert_eq!(c.hbone_addr, "[::]:15008".parse().unwrap());
    assert_eq!(c.socks5_addr, "127.0.0.1:15080".parse().unwrap());
    assert_eq!(c.admin_addr, "127.0.0.1:15000".parse().unwrap());
    assert_eq!(c.stats_addr, "[::]:15020".parse().unwrap());
    assert_eq!(c.readiness_addr, "[::]:15021".parse().unwrap());
}

#[test]
fn in_cluster_default_address() {
    let c = cfg(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")]);
    assert_eq!(
        c.xds_address.as_deref(),
        Some("https://istiod.istio-system.svc:15012")
    );
    assert_eq!(
        c.ca_address.as_deref(),
        Some("https://istiod.istio-system.svc:15012")
    );
}

#[test]
fn control_plane_addresses() {
    let c = cfg(&[
        ("XDS_ADDRESS", "istiod.x:15012"),
        ("CA_ADDRESS", "https://ca:15012"),
    ]);
    assert_eq!(c.xds_address.as_deref(), Some("https://istiod.x:15012"));
    assert_eq!(c.ca_address.as_deref(), Some("https://ca:15012"));
    let c = cfg(&[("XDS_ADDRESS", ""), ("CA_ADDRESS", ""), ("FAKE_CA", "true")]);
    assert_eq!(c.xds_address, None);
    assert_eq!(c.ca_address, None);
    assert!(c.fake_ca);
    let c = cfg(&[("CA_ADDRESS", ""), ("LOCAL_CA_DIR", "/tmp/ca")]);
    assert_eq!(c.local_ca_dir, Some(PathBuf::from("/tmp/ca")));
    assert!(err(&[("CA_ADDRESS", "")]).contains("CA_ADDRESS"));
}

#[test]
fn strings_and_identity() {
    let c = cfg(&[
        ("XDS_ROOT_CA", "SYSTEM"),
        ("CA_ROOT_CA", "/etc/ca.pem"),
        ("ALT_XDS_HOSTNAME", "istiod.istio-system.svc"),
        ("ALT_CA_HOSTNAME", "ca.svc"),
        ("AUTH_TOKEN", "/var/token"),
        ("CLUSTER_ID", "c1"),
        ("CLUSTER_DOMAIN", "example.org"),
        ("NETWORK", "net1"),
        ("NODE_NAME", "node-a"),
        ("TRUST_DOMAIN", "td.example"),
        ("POD_NAME", "ztunnel-x"),
        ("POD_NAMESPACE", "istio-system"),
        ("SERVICE_ACCOUNT", "ztunnel"),
        ("INSTANCE_IP", "10.0.0.9"),
        ("TLS_BACKEND", "boring"),
        ("TLS12_ENABLED", "false"),
        ("XDS_ON_DEMAND", "false"),
    ]);
    assert_eq!(c.xds_root_ca, "SYSTEM");
    assert_eq!(c.ca_root_ca, "/etc/ca.pem");
    assert_eq!(
        c.alt_xds_hostname.as_deref(),
        Some("istiod.istio-system.svc")
    );
    assert_eq!(c.alt_ca_hostname.as_deref(), Some("ca.svc"));
    assert_eq!(c.auth_token.as_deref(), Some("/var/token"));
    assert_eq!(c.cluster_id, "c1");
    assert_eq!(c.cluster_domain, "example.org");
    assert_eq!(c.network, "net1");
    assert_eq!(c.node_name.as_deref(), Some("node-a"));
    assert_eq!(c.trust_domain, "td.example");
    assert_eq!(c.pod_name.as_deref(), Some("ztunnel-x"));
    assert_eq!(c.pod_namespace.as_deref(), Some("istio-system"));
    assert_eq!(c.service_account.as_deref(), Some("ztunnel"));
    assert_eq!(c.instance_ip.as_deref(), Some("10.0.0.9"));
    assert_eq!(c.tls_backend, "boring");
    assert_eq!(c.crl_path, None);
    assert!(c.is_local_node("node-a") && !c.is_local_node("node-b"));
    assert!(cfg(&[]).is_local_node("anything"));
    assert!(err(&[("TLS_BACKEND", "openssl")]).contains("TLS_BACKEND=\"openssl\""));
}

#[test]
fn crl_path_and_compliance_policy() {
    let c = cfg(&[]);
    assert_eq!(c.crl_path, None);
    assert_eq!(c.compliance_policy, "");
    let c = cfg(&[("CRL_PATH", "/etc/crl.pem"), ("COMPLIANCE_POLICY", "pqc")]);
    assert_eq!(c.crl_path, Some(PathBuf::from("/etc/crl.pem")));
    assert_eq!(c.compliance_policy, "pqc");
    assert_eq!(
        cfg(&[("COMPLIANCE_POLICY", " PQC ")]).compliance_policy,
        "pqc"
    );
    assert_eq!(cfg(&[("COMPLIANCE_POLICY", "")]).compliance_policy, "");
    assert!(err(&[("COMPLIANCE_POLICY", "fips")]).contains("COMPLIANCE_POLICY=\"fips\""));
    // BoringSSL has no CRL support here: refused at start instead of silently not checking.
    let e = err(&[("TLS_BACKEND", "boring"), ("CRL_PATH", "/etc/crl.pem")]);
    assert!(e.contains("CRL_PATH") && e.contains("rustls"), "{e}");
    // pqc works with both backends.
    assert_eq!(
        cfg(&[("TLS_BACKEND", "boring"), ("COMPLIANCE_POLICY", "pqc")]).compliance_policy,
        "pqc"
    );
}

#[test]
fn cluster_id_from_meta_wins() {
    let c = cfg(&[("CLUSTER_ID", "c1"), ("ISTIO_META_CLUSTER_ID", "c2")]);
    assert_eq!(c.cluster_id, "c2");
}

#[test]
fn metadata_and_headers() {
    let c = cfg(&[
        ("ISTIO_META_DNS_CAPTURE", "true"),
        ("ISTIO_META_CLUSTER_ID", "c9"),
        ("ISTIO_METAJSON_LABELS", r#"{"a":"b"}"#),
        ("XDS_HEADER_x-tenant", "t1"),
        ("CA_HEADER_x-ca", "v"),
        ("CA_HEADER_", "ignored"),
        ("POD_NAME", "zt"),
    ]);
    assert_eq!(
        c.proxy_metadata.get("DNS_CAPTURE").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        c.proxy_metadata_json.get("LABELS").map(String::as_str),
        Some(r#"{"a":"b"}"#)
    );
    assert_eq!(
        c.xds_headers,
        vec![("x-tenant".to_owned(), "t1".to_owned())]
    );
    assert_eq!(c.ca_headers, vec![("x-ca".to_owned(), "v".to_owned())]);
    let node = c.node_env();
    assert_eq!(node.get("POD_NAME").map(String::as_str), Some("zt"));
    assert_eq!(
        node.get("ISTIO_META_DNS_CAPTURE").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        node.get("ISTIO_META_CLUSTER_ID").map(String::as_str),
        Some("c9")
    );
    assert_eq!(
        node.get("ISTIO_METAJSON_LABELS").map(String::as_str),
        Some(r#"{"a":"b"}"#)
    );
    assert!(!node.contains_key("INSTANCE_IP"));
    // The cluster id is always part of the node metadata.
    assert_eq!(
        cfg(&[])
            .node_env()
            .get("ISTIO_META_CLUSTER_ID")
            .map(String::as_str),
        Some("Kubernetes")
    );
}

#[test]
fn proxy_mode_and_workload_info() {
    let c = cfg(&[
        ("PROXY_MODE", "dedicated"),
        ("PROXY_WORKLOAD_INFO", "ns1/pod1/sa1"),
    ]);
    assert_eq!(c.proxy_mode, ProxyMode::Dedicated);
    assert_eq!(
        c.proxy_workload_info,
        Some(WorkloadInfo {
            namespace: "ns1".into(),
            name: "pod1".into(),
            service_account: "sa1".into()
        })
    );
    assert_eq!(c.packet_mark, None, "no mark by default in dedicated mode");
    assert!(err(&[("PROXY_MODE", "dedicated")]).contains("PROXY_WORKLOAD_INFO"));
    assert!(err(&[("PROXY_MODE", "sidecar")]).contains("PROXY_MODE=\"sidecar\""));
    for bad in ["ns/pod", "ns/pod/sa/x", "ns//sa"] {
        assert!(
            err(&[("PROXY_WORKLOAD_INFO", bad)]).contains("PROXY_WORKLOAD_INFO"),
            "{bad}"
        );
    }
}

#[test]
fn local_xds() {
    let c = cfg(&[("LOCAL_XDS_PATH", "/etc/zt.yaml")]);
    assert_eq!(
        c.local_xds,
        Some(LocalXds::Path(PathBuf::from("/etc/zt.yaml")))
    );
    let c = cfg(&[("LOCAL_XDS", "workloads: []")]);
    assert_eq!(c.local_xds, Some(LocalXds::Inline("workloads: []".into())));
    assert!(err(&[("LOCAL_XDS_PATH", "/a"), ("LOCAL_XDS", "b")]).contains("mutually exclusive"));
}

#[test]
fn numbers_durations_bools() {
    let c = cfg(&[
        ("SECRET_TTL", "1h30m"),
        ("PACKET_MARK", "7"),
        ("ENABLE_ORIG_SRC", "false"),
        ("POOL_MAX_STREAMS_PER_CONNECTION", "50"),
        ("POOL_UNUSED_RELEASE_TIMEOUT", "30s"),
        ("HTTP2_STREAM_WINDOW_SIZE", "1024"),
        ("HTTP2_CONNECTION_WINDOW_SIZE", "2048"),
        ("HTTP2_FRAME_SIZE", "16384"),
        ("KEEPALIVE_ENABLED", "false"),
        ("KEEPALIVE_TIME", "60s"),
        ("KEEPALIVE_INTERVAL", "10s"),
        ("KEEPALIVE_RETRIES", "3"),
        ("USER_TIMEOUT_ENABLED", "true"),
        ("UNSTABLE_ENABLE_SOCKS5", "true"),
        ("ENABLE_RESPONSE_BAGGAGE", "false"),
        ("LOCALHOST_APP_TUNNEL", "false"),
        ("INPOD_UDS", "/tmp/zt.sock"),
        ("INPOD_PORT_REUSE", "false"),
        ("ENABLE_PROXY", "true"),
    ]);
    assert_eq!(c.secret_ttl, Duration::from_secs(5400));
    assert_eq!(c.packet_mark, Some(7));
    assert_eq!(c.enable_orig_src, Some(false));
    assert_eq!(c.pool_max_streams_per_conn, 50);
    assert_eq!(c.pool_unused_release_timeout, Duration::from_secs(30));
    assert_eq!(
        (
            c.http2_stream_window,
            c.http2_connection_window,
            c.http2_frame_size
        ),
        (1024, 2048, 16384)
    );
    assert!(!c.keepalive_enabled);
    assert_eq!(
        (c.keepalive_time, c.keepalive_interval),
        (Duration::from_secs(60), Duration::from_secs(10))
    );
    assert_eq!(c.keepalive_retries, 3);
    assert!(c.user_timeout_enabled && c.socks5_enabled);
    // keepalive time + retries * interval, as upstream (used even with keepalive itself off).
    assert_eq!(c.tcp_user_timeout(), Some(Duration::from_secs(60 + 3 * 10)));
    assert!(!c.enable_response_baggage && !c.localhost_app_tunnel && !c.inpod_port_reuse);
    assert_eq!(c.inpod_uds, PathBuf::from("/tmp/zt.sock"));
}

/// Upstream settings Ambit does not implement are refused at start with the reason, not accepted and ignored;
/// their supported value (the default) is accepted, and a malformed value is the usual parse error.
#[test]
fn unsupported_settings_are_refused() {
    for (var, bad, good) in [
        ("TLS12_ENABLED", "true", "false"),
        ("XDS_ON_DEMAND", "true", "false"),
        ("ENABLE_PROXY", "false", "true"),
    ] {
        let e = err(&[(var, bad)]);
        assert!(
            e.starts_with(&format!("{var}=\"{bad}\": not supported by Ambit: ")),
            "{e}"
        );
        assert!(e.ends_with(&format!("unset it or set {good}")), "{e}");
        cfg(&[(var, good)]);
        assert!(
            err(&[(var, "perhaps")]).contains("expected true or false"),
            "{var}"
        );
    }
    // `1` is `true` for these as for every boolean.
    assert!(err(&[("TLS12_ENABLED", "1")]).contains("not supported by Ambit"));
}

#[test]
fn bad_values_name_variable_and_value() {
    for (var, value) in [
        ("SECRET_TTL", "forever"),
        ("PACKET_MARK", "-1"),
        ("PACKET_MARK", "mark"),
        ("ENABLE_ORIG_SRC", "maybe"),
        ("POOL_MAX_STREAMS_PER_CONNECTION", "many"),
        ("HTTP2_FRAME_SIZE", "99999999999"),
        ("KEEPALIVE_ENABLED", "yes please"),
        ("IPV6_ENABLED", "nope"),
        ("TERMINATION_GRACE_PERIOD_SECONDS", "30s"),
        ("CONNECTION_TERMINATION_DEADLINE", "soon"),
        ("ZTUNNEL_WORKER_THREADS", "lots"),
        ("ZTUNNEL_WORKER_THREADS", "150%"),
        ("ZTUNNEL_CPU_LIMIT", "x"),
        ("FAKE_CA", "sure"),
    ] {
        let e = err(&[(var, value)]);
        assert!(e.contains(&format!("{var}={value:?}")), "{var}: {e}");
    }
}

#[test]
fn termination_deadline() {
    let d = |pairs: &[(&str, &str)]| cfg(pairs).termination_deadline;
    assert_eq!(
        d(&[("CONNECTION_TERMINATION_DEADLINE", "20s")]),
        Duration::from_secs(20)
    );
    assert_eq!(
        d(&[("TERMINATION_GRACE_PERIOD_SECONDS", "30")]),
        Duration::from_secs(25)
    );
    assert_eq!(
        d(&[("TERMINATION_GRACE_PERIOD_SECONDS", "10")]),
        Duration::from_secs(9)
    );
    assert_eq!(
        d(&[("TERMINATION_GRACE_PERIOD_SECONDS", "1")]),
        Duration::from_secs(1)
    );
    assert_eq!(
        d(&[("TERMINATION_GRACE_PERIOD_SECONDS", "0")]),
        Duration::from_secs(1)
    );
    // The explicit deadline wins.
    assert_eq!(
        d(&[
            ("CONNECTION_TERMINATION_DEADLINE", "3s"),
            ("TERMINATION_GRACE_PERIOD_SECONDS", "30")
        ]),
        Duration::from_secs(3)
    );
}

#[test]
fn worker_threads() {
    let t = |pairs: &[(&str, &str)], cpus| {
        Config::from_env_with_cpus(&env(pairs), cpus)
            .unwrap()
            .worker_threads
    };
    assert_eq!(t(&[], 1), 2);
    assert_eq!(t(&[], 8), 2);
    assert_eq!(t(&[], 16), 4);
    assert_eq!(t(&[], 17), 5);
    assert_eq!(t(&[("ZTUNNEL_WORKER_THREADS", "3")], 16), 3);
    assert_eq!(t(&[("ZTUNNEL_WORKER_THREADS", "0")], 16), 16);
    assert_eq!(t(&[("ZTUNNEL_WORKER_THREADS", "50%")], 16), 8);
    assert_eq!(t(&[("ZTUNNEL_WORKER_THREADS", "10%")], 4), 1);
    assert_eq!(t(&[("ZTUNNEL_CPU_LIMIT", "3")], 16), 3);
    assert_eq!(
        t(
            &[("ZTUNNEL_WORKER_THREADS", "6"), ("ZTUNNEL_CPU_LIMIT", "3")],
            16
        ),
        6
    );
    assert_eq!(t(&[("ZTUNNEL_RESOURCE_CPU_LIMIT", "1500m")], 16), 2);
    assert_eq!(t(&[("ZTUNNEL_RESOURCE_CPU_REQUEST", "6")], 16), 6);
}

#[test]
fn worker_spill_percent() {
    let spill = |v: &str| {
        Config::from_env_with_cpus(&env(&[("AMBIT_WORKER_SPILL_PERCENT", v)]), 2)
            .map(|c| c.worker_spill_percent)
    };
    assert_eq!(cfg(&[]).worker_spill_percent, Some(70));
    assert_eq!(spill("50").unwrap(), Some(50));
    assert_eq!(spill(" off ").unwrap(), None);
    for bad in ["0", "101", "-1", "half"] {
        let e = spill(bad).unwrap_err().to_string();
        assert!(e.contains("AMBIT_WORKER_SPILL_PERCENT"), "{bad:?}: {e}");
    }
}

#[test]
fn ipv6_disabled_uses_ipv4_wildcard() {
    let c = cfg(&[("IPV6_ENABLED", "false")]);
    assert!(!c.ipv6_enabled);
    assert_eq!(c.outbound_addr, "0.0.0.0:15001".parse().unwrap());
    assert_eq!(c.hbone_addr, "0.0.0.0:15008".parse().unwrap());
    assert_eq!(c.stats_addr, "0.0.0.0:15020".parse().unwrap());
    assert_eq!(c.admin_addr, "127.0.0.1:15000".parse().unwrap());
}

#[test]
fn for_tests_and_dump() {
    let c = Config::for_tests();
    assert_eq!(c.proxy_mode, ProxyMode::Dedicated);
    assert!(c.fake_ca && c.xds_address.is_none());
    let mut c = cfg(&[
        ("AUTH_TOKEN", "secret-token"),
        ("LOCAL_XDS_PATH", "/x.yaml"),
    ]);
    c.proxy_workload_info = Some(WorkloadInfo {
        namespace: "a".into(),
        name: "b".into(),
        service_account: "c".into(),
    });
    let v = serde_json::to_value(&c).unwrap();
    assert_eq!(v["proxyMode"], "Shared");
    assert_eq!(v["clusterId"], "Kubernetes");
    assert_eq!(v["proxyWorkloadInfo"]["serviceAccount"], "c");
    assert_eq!(v["localXds"]["Path"], "/x.yaml");
    assert_eq!(v["hboneAddr"], "[::]:15008");
    assert!(v.get("authToken").is_none());
    assert!(!v.to_string().contains("secret-token"));
}
