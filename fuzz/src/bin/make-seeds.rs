//! Writes the seed inputs of every target into `fuzz/corpus/<target>/seed-*`: `cargo run -p ambit-fuzz --bin
//! make-seeds`. Run it once on an empty corpus; `run.sh` then merges (and renames) them with what it finds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ambit_fuzz::encode_records;
use ambit_proto::security as sec;
use ambit_proto::workload as wl;
use ambit_proto::zds;
use anyhow::Context;
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use prost::Message as _;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let seeds: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("hbone_headers", hbone_headers()),
        ("hbone_connect", rt.block_on(hbone_connect())?),
        ("socks5", socks5()),
        ("zds_session", zds_session()),
        ("xds_address", xds_address()),
        ("xds_authorization", xds_authorization()),
        ("waypoint_xds", waypoint_xds()?),
        ("waypoint_http", waypoint_http()),
        (
            "ztunnel_localconfig",
            files(
                &repo,
                &[
                    "ztunnel/tests/fixtures/full.yaml",
                    "ztunnel/tests/fixtures/upstream-localhost.yaml",
                ],
            )?,
        ),
        (
            "waypoint_localconfig",
            vec![ambit_fuzz::MESH_YAML.as_bytes().to_vec()],
        ),
        ("controller_manifest", manifests(&repo)?),
        ("dns_query", dns_query()?),
        ("ca_csr", ca_csr()?),
    ];
    for (target, inputs) in &seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (i, input) in inputs.iter().enumerate() {
            let path = dir.join(format!("seed-{i:02}"));
            std::fs::write(&path, input).with_context(|| path.display().to_string())?;
        }
        println!("{target}: {} seeds", inputs.len());
    }
    Ok(())
}

fn files(repo: &Path, paths: &[&str]) -> anyhow::Result<Vec<Vec<u8>>> {
    paths
        .iter()
        .map(|p| std::fs::read(repo.join(p)).with_context(|| p.to_string()))
        .collect()
}

fn hbone_headers() -> Vec<Vec<u8>> {
    [
        "10.0.0.2:9080\nk8s.cluster.name=Kubernetes,k8s.namespace.name=demo,k8s.deployment.name=sleep,service.name=sleep,service.version=v1,cloud.region=r1,cloud.availability_zone=z1\nfor=\"10.0.0.1:40000\";host=reviews.demo.svc.cluster.local\n00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nspiffe://cluster.local/ns/demo/sa/sleep",
        "reviews.demo.svc.cluster.local:9080\nk8s.pod.name=x;p=1,junk,=v\nFor=\"[fd00::1]:80\", HOST=\"a.b\"\n00-00000000000000000000000000000000-00f067aa0ba902b7-00\nspiffe://example.org/ns/a/sa/b",
        "[fd00::2]:15008\n\nfor=unknown\nff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nspiffe://td/ns//sa/x",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

async fn hbone_connect() -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for (authority, data) in [
        ("10.0.0.2:9080", &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]),
        ("reviews.demo.svc.cluster.local:9080", &b""[..]),
        ("[fd00::2]:80", &b"hello"[..]),
    ] {
        out.push(
            ambit_fuzz::harness::connect_frames(authority, data)
                .await
                .map_err(anyhow::Error::msg)?,
        );
    }
    Ok(out)
}

fn socks5() -> Vec<Vec<u8>> {
    let mut v6 = vec![5, 2, 2, 0, 5, 1, 0, 4];
    v6.extend_from_slice(
        &"fd00::2"
            .parse::<std::net::Ipv6Addr>()
            .map(|a| a.octets())
            .unwrap_or_default(),
    );
    v6.extend_from_slice(&80u16.to_be_bytes());
    let mut domain = vec![5, 1, 0, 5, 1, 0, 3, 11];
    domain.extend_from_slice(b"example.com");
    domain.extend_from_slice(&443u16.to_be_bytes());
    let mut literal = vec![5, 1, 0, 5, 1, 0, 3, 8];
    literal.extend_from_slice(b"10.0.0.2");
    literal.extend_from_slice(&9080u16.to_be_bytes());
    vec![
        vec![5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 2, 0x23, 0x78],
        v6,
        domain,
        literal,
        vec![5, 1, 2],
        vec![5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 80],
    ]
}

fn zds_request(p: zds::workload_request::Payload) -> Vec<u8> {
    zds::WorkloadRequest { payload: Some(p) }.encode_to_vec()
}

fn zds_session() -> Vec<Vec<u8>> {
    use zds::workload_request::Payload;
    let add = |uid: &str| {
        Payload::Add(zds::AddWorkload {
            uid: uid.into(),
            workload_info: Some(zds::WorkloadInfo {
                name: "sleep-0".into(),
                namespace: "demo".into(),
                service_account: "sleep".into(),
            }),
        })
    };
    let with = |fd: u8, msg: Vec<u8>| {
        let mut r = vec![fd];
        r.extend_from_slice(&msg);
        r
    };
    let normal = [
        with(1, zds_request(add("pod-1"))),
        with(
            0,
            zds_request(Payload::Keep(zds::KeepWorkload {
                uid: "pod-2".into(),
            })),
        ),
        with(0, zds_request(Payload::SnapshotSent(zds::SnapshotSent {}))),
        with(1, zds_request(add("fail-3"))),
        with(
            0,
            zds_request(Payload::Del(zds::DelWorkload {
                uid: "pod-1".into(),
            })),
        ),
    ];
    let violations = [
        with(0, zds_request(Payload::SnapshotSent(zds::SnapshotSent {}))),
        with(
            0,
            zds_request(Payload::Keep(zds::KeepWorkload { uid: "late".into() })),
        ),
    ];
    let no_fd = [with(0, zds_request(add("pod-9")))];
    let refs = |v: &[Vec<u8>]| encode_records(&v.iter().map(Vec::as_slice).collect::<Vec<_>>());
    vec![refs(&normal), refs(&violations), refs(&no_fd)]
}

fn ip(s: &str) -> Vec<u8> {
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => a.octets().to_vec(),
        Ok(IpAddr::V6(a)) => a.octets().to_vec(),
        Err(_) => vec![],
    }
}

fn xds_address() -> Vec<Vec<u8>> {
    let mut services = HashMap::new();
    services.insert(
        "demo/reviews.demo.svc.cluster.local".to_owned(),
        wl::PortList {
            ports: vec![wl::Port {
                service_port: 9080,
                target_port: 9080,
                ..Default::default()
            }],
        },
    );
    let workload = wl::Workload {
        uid: "Kubernetes//Pod/demo/reviews-v1-0".into(),
        name: "reviews-v1-0".into(),
        namespace: "demo".into(),
        addresses: vec![ip("10.244.1.5"), ip("fd00::5")],
        network: "net1".into(),
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        service_account: "reviews".into(),
        node: "node-a".into(),
        canonical_name: "reviews".into(),
        canonical_revision: "v1".into(),
        workload_name: "reviews-v1".into(),
        services,
        authorization_policies: vec!["demo/allow".into()],
        status: wl::WorkloadStatus::Healthy as i32,
        cluster_id: "Kubernetes".into(),
        waypoint: Some(wl::GatewayAddress {
            destination: Some(wl::gateway_address::Destination::Hostname(
                wl::NamespacedHostname {
                    namespace: "demo".into(),
                    hostname: "waypoint.demo.svc.cluster.local".into(),
                },
            )),
            hbone_mtls_port: 15008,
        }),
        ..Default::default()
    };
    let service = wl::Service {
        name: "reviews".into(),
        namespace: "demo".into(),
        hostname: "reviews.demo.svc.cluster.local".into(),
        addresses: vec![wl::NetworkAddress {
            network: "net1".into(),
            address: ip("10.96.0.20"),
            ..Default::default()
        }],
        ports: vec![wl::Port {
            service_port: 9080,
            target_port: 9080,
            ..Default::default()
        }],
        subject_alt_names: vec!["spiffe://cluster.local/ns/demo/sa/reviews".into()],
        load_balancing: Some(wl::LoadBalancing {
            routing_preference: vec![2, 1],
            mode: 2,
            ..Default::default()
        }),
        ..Default::default()
    };
    vec![
        wl::Address {
            r#type: Some(wl::address::Type::Workload(workload)),
        }
        .encode_to_vec(),
        wl::Address {
            r#type: Some(wl::address::Type::Service(service)),
        }
        .encode_to_vec(),
    ]
}

fn xds_authorization() -> Vec<Vec<u8>> {
    let exact = |s: &str| sec::StringMatch {
        match_type: Some(sec::string_match::MatchType::Exact(s.into())),
    };
    let prefix = |s: &str| sec::StringMatch {
        match_type: Some(sec::string_match::MatchType::Prefix(s.into())),
    };
    let allow = sec::Authorization {
        name: "allow".into(),
        namespace: "demo".into(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Allow as i32,
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![sec::Match {
                    namespaces: vec![exact("demo")],
                    principals: vec![prefix("spiffe://cluster.local/ns/demo/")],
                    source_ips: vec![sec::Address {
                        address: ip("10.0.0.0"),
                        length: 8,
                    }],
                    destination_ports: vec![9080],
                    service_accounts: vec![sec::ServiceAccountMatch {
                        namespace: "demo".into(),
                        service_account: "sleep".into(),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    let deny = sec::Authorization {
        name: "deny".into(),
        namespace: "istio-system".into(),
        scope: sec::Scope::Global as i32,
        action: sec::Action::Deny as i32,
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![sec::Match {
                    not_destination_ips: vec![sec::Address {
                        address: ip("fd00::"),
                        length: 64,
                    }],
                    not_principals: vec![sec::StringMatch {
                        match_type: Some(sec::string_match::MatchType::Presence(())),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    vec![allow.encode_to_vec(), deny.encode_to_vec()]
}

/// Each resource of the fuzz mesh as its xDS encoding, one record per resource (kind byte + bytes).
fn waypoint_xds() -> anyhow::Result<Vec<Vec<u8>>> {
    use ambit_proto::waypoint as wp;
    let mesh: serde_yaml::Value = serde_yaml::from_str(ambit_fuzz::MESH_YAML)?;
    fn each<M: prost::Message + serde::de::DeserializeOwned>(
        mesh: &serde_yaml::Value,
        key: &str,
        kind: u8,
    ) -> anyhow::Result<Vec<Vec<u8>>> {
        let list = mesh
            .get(key)
            .and_then(|v| v.as_sequence())
            .cloned()
            .unwrap_or_default();
        list.into_iter()
            .map(|v| {
                let m: M = serde_yaml::from_value(v)?;
                let mut rec = vec![kind];
                rec.extend_from_slice(&m.encode_to_vec());
                Ok(rec)
            })
            .collect()
    }
    let mut records = xds_address()
        .into_iter()
        .map(|a| {
            let mut rec = vec![0u8];
            rec.extend_from_slice(&a);
            rec
        })
        .collect::<Vec<_>>();
    records.extend(each::<wp::Route>(&mesh, "routes", 1)?);
    records.extend(each::<wp::BackendPolicy>(&mesh, "backendPolicies", 2)?);
    records.extend(each::<wp::RateLimitPolicy>(&mesh, "rateLimits", 3)?);
    records.extend(each::<wp::RequestAuthentication>(
        &mesh,
        "requestAuthentications",
        4,
    )?);
    records.extend(each::<wp::AuthorizationPolicy>(
        &mesh,
        "authorizationPolicies",
        5,
    )?);
    // One seed per resource, and one with all of them plus a removal.
    let mut out: Vec<Vec<u8>> = records.iter().map(|r| encode_records(&[r])).collect();
    let mut all: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    all.push(&[7, 1]);
    out.push(encode_records(&all));
    Ok(out)
}

fn waypoint_http() -> Vec<Vec<u8>> {
    [
        "GET /api?v=12 HTTP/1.1\r\nHost: reviews.demo.svc.cluster.local:9080\r\nx-user: jason\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
        "GET /redirect HTTP/1.1\r\nHost: reviews\r\n\r\nGET /direct HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n",
        "OPTIONS /rewrite/x HTTP/1.1\r\nHost: reviews\r\nOrigin: https://a.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: x-user\r\n\r\n",
        "POST /fault HTTP/1.1\r\nHost: reviews\r\nContent-Length: 5\r\nx-request-id: abc\r\n\r\nhello",
        "DELETE /admin/x HTTP/1.1\r\nHost: reviews\r\n\r\n",
        "GET /api?token=abc.def.ghi HTTP/1.1\r\nHost: reviews\r\nx-jwt: Bearer eyJhbGciOiJFUzI1NiJ9.e30.sig\r\n\r\n",
        "GET /EXACT HTTP/1.1\r\nHost: reviews\r\nConnection: keep-alive, x-remove\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "GET /chat HTTP/1.1\r\nHost: reviews\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        "POST /demo.Reviews/Get HTTP/1.1\r\nHost: reviews:9090\r\ncontent-type: application/grpc\r\ngrpc-timeout: 10S\r\n\r\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn manifests(repo: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for dir in [
        "examples/bookinfo",
        "examples/bookinfo/networking",
        "examples/bookinfo/security",
        "examples/quickstart",
        "examples/quickstart/policies",
    ] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(repo.join(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        paths.sort();
        for p in paths {
            out.push(std::fs::read(&p)?);
        }
    }
    Ok(out)
}

fn dns_query() -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for (i, (name, ty, edns, tcp)) in [
        (
            "server.demo.svc.cluster.local.",
            RecordType::A,
            false,
            false,
        ),
        (
            "server.demo.svc.cluster.local.",
            RecordType::AAAA,
            true,
            false,
        ),
        ("server.", RecordType::A, false, true),
        ("server.demo.", RecordType::A, true, false),
        ("example.com.", RecordType::A, false, false),
        (
            "server.demo.svc.cluster.local.",
            RecordType::TXT,
            false,
            true,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = Message::query();
        m.metadata.id = 0x1000 + i as u16;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name)?, ty));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            m.set_edns(e);
        }
        let mut input = vec![u8::from(tcp)];
        input.extend_from_slice(&m.to_vec()?);
        out.push(input);
    }
    Ok(out)
}

fn ca_csr() -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for san in [
        Some("spiffe://cluster.local/ns/demo/sa/sleep"),
        None,
        Some("https://not-spiffe.example/x"),
    ] {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        if let Some(uri) = san {
            params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into()?)];
        }
        out.push(params.serialize_request(&key)?.der().to_vec());
    }
    Ok(out)
}
