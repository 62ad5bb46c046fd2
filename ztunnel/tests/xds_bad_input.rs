//! In-process: ztunnel's real xDS handler behind its real delta ADS client, on a real TLS stream from a scripted
//! control plane. Bad `Address` and `Authorization` resources (bytes that do not decode, required parts missing,
//! values that do not convert, a bad version of a resource in force) are NACKed with an error detail naming each
//! and saying why; the good resources of the same response apply; what was in force stays, in `/config_dump` and,
//! for policies, on the data path (HBONE streams through the ztunnel); the next good push is ACKed and applies; and
//! the ztunnel stays ready throughout. (The handler alone: `src/app/xds_bad_input.rs`; the client alone:
//! `core/tests/xds_client.rs`.)
//!
//! The control plane is a small gRPC server on `h2` and `tokio-rustls` (this crate does not depend on tonic). Each
//! test has its own `127.0.<net>.x` block: 151, 152.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::ca::LocalCa;
use ambit_core::hbone::{HboneError, PoolKey};
use ambit_proto::security as sec;
use ambit_proto::type_url::{ADDRESS, AUTHORIZATION};
use ambit_proto::workload as wl;
use ambit_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};
use ambit_ztunnel::app::Running;
use ambit_ztunnel::config::Config;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::StatusCode;
use prost::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use support::{WAIT, echo, round_trip};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const ADS_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const SERVER_UID: &str = "Kubernetes//Pod/default/server";
const CLIENT_UID: &str = "Kubernetes//Pod/default/client";
const ECHO: &str = "echo.default.svc.cluster.local";
const ALLOW: &str = "default/allow";

/// Field 1, length-delimited, says 5 bytes and has 1: no message decodes from it.
const UNDECODABLE: [u8; 3] = [0x0a, 0x05, 0x01];
/// A varint cut short.
const TRUNCATED: [u8; 1] = [0xff];
/// `google.rpc.Code`: what a NACK's `error_detail` carries.
const INVALID_ARGUMENT: i32 = 3;

// ----- a scripted control plane: delta ADS, gRPC over HTTP/2 over TLS -----

/// One ADS stream: the requests the ztunnel sent, and where the test writes its responses.
struct AdsStream {
    requests: mpsc::UnboundedReceiver<DeltaDiscoveryRequest>,
    responses: mpsc::UnboundedSender<DeltaDiscoveryResponse>,
}

/// Serves delta ADS on `listener` with `tls`, handing each stream to the test through `streams`.
async fn serve_ads(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    streams: mpsc::UnboundedSender<AdsStream>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let (tls, streams) = (tls.clone(), streams.clone());
        tokio::spawn(async move {
            let Ok(io) = tls.accept(tcp).await else {
                return;
            };
            let Ok(mut conn) = h2::server::handshake(io).await else {
                return;
            };
            // Accepting streams is also what drives the connection.
            while let Some(Ok((req, respond))) = conn.accept().await {
                tokio::spawn(ads_call(req, respond, streams.clone()));
            }
        });
    }
}

/// One `DeltaAggregatedResources` call: the response headers at once, then one gRPC message per response the test
/// sends; the request messages go to the test as they arrive.
async fn ads_call(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    streams: mpsc::UnboundedSender<AdsStream>,
) {
    assert_eq!(req.uri().path(), ADS_PATH, "only delta ADS is served");
    let head = http::Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let Ok(mut send) = respond.send_response(head, false) else {
        return;
    };
    let (req_tx, requests) = mpsc::unbounded_channel();
    let (responses, mut resp_rx) = mpsc::unbounded_channel();
    let _ = streams.send(AdsStream {
        requests,
        responses,
    });
    let mut body = req.into_body();
    tokio::spawn(async move {
        let mut buf = BytesMut::new();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            buf.extend_from_slice(&chunk);
            while let Some(m) = next_message(&mut buf) {
                let r = DeltaDiscoveryRequest::decode(m).expect("a DeltaDiscoveryRequest");
                if req_tx.send(r).is_err() {
                    return;
                }
            }
        }
    });
    while let Some(r) = resp_rx.recv().await {
        if send.send_data(grpc_frame(&r), false).is_err() {
            return;
        }
    }
}

/// A gRPC message: not compressed, its length (big-endian), its bytes.
fn grpc_frame(m: &impl Message) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + m.encoded_len());
    b.put_u8(0);
    b.put_u32(u32::try_from(m.encoded_len()).unwrap());
    m.encode(&mut b).unwrap();
    b.freeze()
}

/// The next whole gRPC message at the front of `buf`, once all of it arrived.
fn next_message(buf: &mut BytesMut) -> Option<Bytes> {
    let len: [u8; 4] = buf.get(1..5)?.try_into().unwrap();
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap();
    if buf.len() < 5 + len {
        return None;
    }
    assert_eq!(buf[0], 0, "a compressed gRPC message");
    buf.advance(5);
    Some(buf.split_to(len).freeze())
}

// ----- resources -----

fn raw(type_url: &str, name: &str, value: &[u8]) -> Resource {
    Resource {
        name: name.to_owned(),
        version: format!("{:x}", value.len()),
        resource: Some(prost_types::Any {
            type_url: type_url.to_owned(),
            value: value.to_vec(),
        }),
        ..Default::default()
    }
}

/// A resource with a name and no body.
fn bodiless(name: &str) -> Resource {
    Resource {
        name: name.to_owned(),
        version: "1".into(),
        ..Default::default()
    }
}

fn address(name: &str, t: Option<wl::address::Type>) -> Resource {
    raw(ADDRESS, name, &wl::Address { r#type: t }.encode_to_vec())
}

/// The pod `default/<name>` (service account `name`) at `ip` (its bytes, as on the wire), reached over HBONE.
fn workload_proto(name: &str, ip: Vec<u8>) -> wl::Workload {
    wl::Workload {
        uid: format!("Kubernetes//Pod/default/{name}"),
        name: name.into(),
        namespace: "default".into(),
        service_account: name.into(),
        addresses: vec![ip],
        tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
        ..Default::default()
    }
}

/// The pod this ztunnel serves: an endpoint of `echo` (80 → 8080), selecting the policy `default/allow`.
fn server_proto(ip: Vec<u8>) -> wl::Workload {
    wl::Workload {
        authorization_policies: vec![ALLOW.into()],
        services: HashMap::from([(
            format!("default/{ECHO}"),
            wl::PortList {
                ports: vec![port(80, 8080)],
            },
        )]),
        ..workload_proto("server", ip)
    }
}

fn port(service_port: u32, target_port: u32) -> wl::Port {
    wl::Port {
        service_port,
        target_port,
        app_protocol: 0,
    }
}

fn workload(w: wl::Workload) -> Resource {
    address(&w.uid.clone(), Some(wl::address::Type::Workload(w)))
}

/// The service `<name>.default.svc.cluster.local` at the VIP `vip`, port 80 → 8080.
fn service_proto(name: &str, vip: Vec<u8>) -> wl::Service {
    wl::Service {
        name: name.into(),
        namespace: "default".into(),
        hostname: format!("{name}.default.svc.cluster.local"),
        addresses: vec![wl::NetworkAddress {
            network: String::new(),
            address: vip,
            length: None,
        }],
        ports: vec![port(80, 8080)],
        ..Default::default()
    }
}

fn service(s: wl::Service) -> Resource {
    let name = format!("{}/{}", s.namespace, s.hostname);
    address(&name, Some(wl::address::Type::Service(s)))
}

/// `default/<name>`, selected by the workloads that name it: allows connections from `default/<sa>` only.
fn allow_only(name: &str, sa: &str) -> sec::Authorization {
    let principal = sec::StringMatch {
        match_type: Some(sec::string_match::MatchType::Exact(format!(
            "cluster.local/ns/default/sa/{sa}"
        ))),
    };
    sec::Authorization {
        name: name.into(),
        namespace: "default".into(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Allow as i32,
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![sec::Match {
                    principals: vec![principal],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    }
}

fn policy(p: &sec::Authorization) -> Resource {
    let name = format!("{}/{}", p.namespace, p.name);
    raw(AUTHORIZATION, &name, &p.encode_to_vec())
}

// ----- a ztunnel configured by the scripted control plane -----

/// A dedicated-mode ztunnel for the pod `default/server` at `127.0.<net>.3`, whose state comes only from the xDS
/// server (`XDS_ADDRESS`, TLS verified against `XDS_ROOT_CA`); certificates from a local CA, the same one that
/// signed the xDS server's. Its first responses: the server workload and the `echo` service; `default/allow`
/// letting `default/client` in.
struct World {
    zt: Running,
    ads: AdsStream,
    net: u8,
    nonces: u32,
    ca_dir: tempfile::TempDir,
}

impl World {
    async fn start(net: u8) -> World {
        ambit_core::tls::install_default_provider();
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(ca_dir.path(), "cluster.local").unwrap();
        let (chain, key) = ca
            .issue_server_cert(&["localhost".to_owned()], &[], Duration::from_secs(3600))
            .unwrap();
        let chain = CertificateDer::pem_slice_iter(chain.concat().as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let xds_port = listener.local_addr().unwrap().port();
        let (streams_tx, mut streams) = mpsc::unbounded_channel();
        tokio::spawn(serve_ads(listener, Arc::new(tls).into(), streams_tx));

        let env: HashMap<String, String> = [
            ("PROXY_MODE", "dedicated".to_owned()),
            ("PROXY_WORKLOAD_INFO", "default/server/server".into()),
            ("XDS_ADDRESS", format!("localhost:{xds_port}")),
            ("XDS_ROOT_CA", ca.root_pem()),
            ("CA_ADDRESS", String::new()),
            ("LOCAL_CA_DIR", ca_dir.path().to_str().unwrap().to_owned()),
            ("POD_NAME", "server".into()),
            ("POD_NAMESPACE", "default".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let mut cfg = Config::from_env(&env).unwrap();
        assert!(cfg.local_xds.is_none());
        // The listeners are not set from the environment: free ports on the pod's address.
        let ip: IpAddr = format!("127.0.{net}.3").parse().unwrap();
        cfg.outbound_addr = SocketAddr::new(ip, 0);
        cfg.inbound_addr = SocketAddr::new(ip, 0);
        cfg.hbone_addr = SocketAddr::new(ip, 0);
        cfg.admin_addr = SocketAddr::new(ip, 0);
        cfg.stats_addr = SocketAddr::new(ip, 0);
        cfg.readiness_addr = SocketAddr::new(ip, 0);
        let zt = support::start(cfg).await;
        let ads = tokio::time::timeout(WAIT, streams.recv())
            .await
            .expect("no xDS stream")
            .unwrap();
        let mut w = World {
            zt,
            ads,
            net,
            nonces: 0,
            ca_dir,
        };
        // One wildcard subscription per type, with the node; not ready until each type is ACKed once.
        for type_url in [ADDRESS, AUTHORIZATION] {
            let r = w.next_request().await;
            assert_eq!(r.type_url, type_url);
            assert!(r.response_nonce.is_empty() && r.error_detail.is_none());
            assert!(r.resource_names_subscribe.is_empty());
            let node = r
                .node
                .expect("the first request of a type carries the node");
            assert!(node.id.starts_with("ztunnel~"), "{}", node.id);
        }
        let not_ready = w.readiness().await;
        assert!(
            not_ready.starts_with("HTTP/1.1 500") && not_ready.contains("pending: state manager"),
            "{not_ready}"
        );
        let first = vec![
            workload(server_proto(w.ip(3))),
            service(service_proto("echo", w.vip(10))),
        ];
        w.push_ok(ADDRESS, first, vec![]).await;
        w.push_ok(
            AUTHORIZATION,
            vec![policy(&allow_only("allow", "client"))],
            vec![],
        )
        .await;
        support::wait_ready(&w.zt).await;
        w.assert_ready().await;
        w
    }

    fn ip(&self, host: u8) -> Vec<u8> {
        vec![127, 0, self.net, host]
    }

    fn vip(&self, host: u8) -> Vec<u8> {
        vec![10, 96, self.net, host]
    }

    async fn next_request(&mut self) -> DeltaDiscoveryRequest {
        tokio::time::timeout(WAIT, self.ads.requests.recv())
            .await
            .expect("no request from the ztunnel")
            .expect("the xDS stream closed")
    }

    /// Sends `resources` (and `removed`) of `type_url` with a new nonce; the ztunnel's next request must answer
    /// exactly that response (type and nonce), ACK or NACK, and is returned.
    async fn push(
        &mut self,
        type_url: &str,
        resources: Vec<Resource>,
        removed: Vec<String>,
    ) -> DeltaDiscoveryRequest {
        self.nonces += 1;
        let nonce = format!("nonce-{}", self.nonces);
        self.ads
            .responses
            .send(DeltaDiscoveryResponse {
                type_url: type_url.into(),
                nonce: nonce.clone(),
                resources,
                removed_resources: removed,
                ..Default::default()
            })
            .unwrap();
        let answer = self.next_request().await;
        assert_eq!(
            (answer.type_url.as_str(), answer.response_nonce.as_str()),
            (type_url, nonce.as_str()),
            "the request after a push answers it"
        );
        answer
    }

    async fn push_ok(&mut self, type_url: &str, resources: Vec<Resource>, removed: Vec<String>) {
        let answer = self.push(type_url, resources, removed).await;
        assert!(
            answer.error_detail.is_none(),
            "a good push of {type_url} was NACKed: {:?}",
            answer.error_detail
        );
    }

    /// Pushes, expects a NACK (INVALID_ARGUMENT) and returns its message.
    async fn push_bad(&mut self, type_url: &str, resources: Vec<Resource>) -> String {
        let answer = self.push(type_url, resources, vec![]).await;
        let detail = answer
            .error_detail
            .unwrap_or_else(|| panic!("a bad push of {type_url} was ACKed"));
        assert_eq!(detail.code, INVALID_ARGUMENT);
        eprintln!("NACK {type_url}: {}", detail.message);
        detail.message
    }

    async fn dump(&self) -> Value {
        support::config_dump(self.zt.addresses.admin).await
    }

    /// `/healthz/ready` on the readiness port: the whole response.
    async fn readiness(&self) -> String {
        support::http_get(self.zt.addresses.readiness, "/healthz/ready").await
    }

    async fn assert_ready(&self) {
        let out = self.readiness().await;
        assert!(out.starts_with("HTTP/1.1 200"), "not ready: {out}");
    }

    /// Opens an HBONE stream as `default/<sa>` to `target` through the ztunnel's HBONE port: `Ok` once bytes went
    /// there and back, else the status the ztunnel refused the CONNECT with.
    async fn hbone_as(&self, sa: &str, target: SocketAddr) -> Result<(), StatusCode> {
        let key = PoolKey {
            src_identity: Identity::new("cluster.local", "default", sa),
            dst_identities: vec![Identity::new("cluster.local", "default", "server")],
            dst: self.zt.addresses.hbone,
            src_ip: "127.0.0.1".parse().unwrap(),
        };
        let (client, _) = support::hbone_client(self.ca_dir.path(), &key.src_identity);
        let req = support::connect_request(&target.to_string());
        match tokio::time::timeout(WAIT, client.connect(key, req))
            .await
            .expect("the HBONE CONNECT timed out")
        {
            Ok((mut stream, resp)) => {
                assert_eq!(resp.status, StatusCode::OK);
                round_trip(&mut stream, b"through the ztunnel").await;
                Ok(())
            }
            Err(HboneError::Status(st)) => Err(st),
            Err(e) => panic!("HBONE as {sa}: {e}"),
        }
    }
}

/// The entry of `dump[list]` whose `key` is `value`.
fn find<'a>(dump: &'a Value, list: &str, key: &str, value: &str) -> &'a Value {
    dump[list]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e[key] == value)
        .unwrap_or_else(|| panic!("no {list} entry with {key} {value}: {:#}", dump[list]))
}

/// Every `key` of `dump[list]`, sorted.
fn keys(dump: &Value, list: &str, key: &str) -> Vec<String> {
    let mut out: Vec<String> = dump[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[key].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

/// The NACK's message is exactly `want`: one `<name>: <reason>` entry per rejected resource, joined by `; ` (in any
/// order).
fn assert_nack(message: &str, mut want: Vec<String>) {
    let mut got: Vec<&str> = message.split("; ").collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "the NACK's entries");
}

// ----- the tests -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_addresses_are_nacked_by_name_and_the_last_good_ones_stay_in_config_dump() {
    let mut w = World::start(151).await;
    let net = w.net;
    // The first good push is in the dump as sent.
    let before = w.dump().await;
    let server = find(&before, "workloads", "uid", SERVER_UID).clone();
    assert_eq!(server["workloadIps"], json!([format!("127.0.{net}.3")]));
    assert_eq!(server["protocol"], "HBONE");
    assert_eq!(
        server["services"][format!("default/{ECHO}")],
        json!({"80": 8080})
    );
    let echo_svc = find(&before, "services", "hostname", ECHO).clone();
    assert_eq!(echo_svc["vips"], json!([format!("/10.96.{net}.10")]));
    assert_eq!(echo_svc["ports"], json!({"80": 8080}));
    assert_eq!(keys(&before, "workloads", "uid"), [SERVER_UID]);

    let mut five_bytes = server_proto(w.ip(3));
    five_bytes.addresses = vec![vec![127, 0, net, 5, 0]];
    let three_bytes = workload_proto("three-bytes", vec![127, 0, net]);
    let mut no_destination = workload_proto("waypointless", w.ip(6));
    no_destination.waypoint = Some(wl::GatewayAddress {
        destination: None,
        hbone_mtls_port: 15008,
    });
    let mut tunnel_9 = workload_proto("tunnel-9", w.ip(7));
    tunnel_9.tunnel_protocol = 9;
    let mut legacy = workload_proto("legacy", w.ip(8));
    legacy.tunnel_protocol = wl::TunnelProtocol::LegacyIstioMtls as i32;
    let mut bad_target_port = service_proto("echo", w.vip(10));
    bad_target_port.ports[0].target_port = 70_000;
    let mut bad_prefix = service_proto("wide", w.vip(11));
    bad_prefix.addresses[0].length = Some(40);
    let detail = w
        .push_bad(
            ADDRESS,
            vec![
                raw(ADDRESS, "default/garbage", &UNDECODABLE),
                raw(ADDRESS, "default/truncated", &TRUNCATED),
                address("default/neither", None),
                bodiless("default/bodiless"),
                // Bad versions of the two resources in force.
                workload(five_bytes),
                service(bad_target_port),
                workload(three_bytes),
                workload(no_destination),
                workload(tunnel_9),
                workload(legacy),
                service(bad_prefix),
                // Good ones beside them.
                workload(workload_proto("client", w.ip(4))),
                service(service_proto("other", w.vip(12))),
            ],
        )
        .await;
    let decode = "decode: failed to decode Protobuf message";
    assert_nack(
        &detail,
        vec![
            format!("default/garbage: {decode}: Address.r#type: buffer underflow"),
            format!("default/truncated: {decode}: invalid varint"),
            "default/neither: address has neither a workload nor a service".into(),
            "default/bodiless: resource has no body".into(),
            format!("{SERVER_UID}: invalid IP address: 5 bytes (want 4 or 16)"),
            format!("default/{ECHO}: target port 70000 is not a valid port"),
            format!(
                "Kubernetes//Pod/default/three-bytes: invalid IP address: 3 bytes (want 4 or 16)"
            ),
            "Kubernetes//Pod/default/waypointless: gateway address has no destination".into(),
            "Kubernetes//Pod/default/tunnel-9: unknown tunnel_protocol value 9".into(),
            format!(
                "Kubernetes//Pod/default/legacy: tunnel protocol LEGACY_ISTIO_MTLS is not supported"
            ),
            format!(
                "default/wide.default.svc.cluster.local: invalid prefix length 40 for 10.96.{net}.11"
            ),
        ],
    );
    // What was in force is, to the byte of its dump; the good resources of the NACKed response applied; none of
    // the rejected ones did.
    let after = w.dump().await;
    assert_eq!(find(&after, "workloads", "uid", SERVER_UID), &server);
    assert_eq!(find(&after, "services", "hostname", ECHO), &echo_svc);
    assert_eq!(
        find(&after, "workloads", "uid", CLIENT_UID)["workloadIps"],
        json!([format!("127.0.{net}.4")])
    );
    assert_eq!(keys(&after, "workloads", "uid"), [CLIENT_UID, SERVER_UID]);
    assert_eq!(
        keys(&after, "services", "hostname"),
        [ECHO, "other.default.svc.cluster.local"]
    );
    w.assert_ready().await;

    // The next good push, moving the server to .5 and removing the client, is ACKed and applies.
    w.push_ok(
        ADDRESS,
        vec![workload(server_proto(w.ip(5)))],
        vec![CLIENT_UID.into()],
    )
    .await;
    let last = w.dump().await;
    assert_eq!(
        find(&last, "workloads", "uid", SERVER_UID)["workloadIps"],
        json!([format!("127.0.{net}.5")])
    );
    assert_eq!(keys(&last, "workloads", "uid"), [SERVER_UID]);
    w.assert_ready().await;
    w.zt.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_authorizations_are_nacked_by_name_and_the_policy_in_force_keeps_deciding() {
    let mut w = World::start(152).await;
    let target = echo(SocketAddr::new(IpAddr::from([127, 0, w.net, 3]), 0)).await;
    // `default/allow` lets `client` in and no one else.
    assert_eq!(w.hbone_as("client", target).await, Ok(()));
    assert_eq!(
        w.hbone_as("other", target).await,
        Err(StatusCode::UNAUTHORIZED)
    );
    let before = w.dump().await;
    let allow = find(&before, "policies", "name", "allow").clone();
    assert_eq!(allow["action"], "Allow");
    assert!(allow["rules"].to_string().contains("sa/client"), "{allow}");

    // The policy in force, replaced by one letting `other` in with an action that does not exist.
    let mut bad_action = allow_only("allow", "other");
    bad_action.action = 5;
    let mut bad_scope = allow_only("bad-scope", "other");
    bad_scope.scope = 7;
    let mut deny = allow_only("deny-nobody", "nobody");
    deny.action = sec::Action::Deny as i32;
    let detail = w
        .push_bad(
            AUTHORIZATION,
            vec![
                raw(AUTHORIZATION, "default/garbage", &UNDECODABLE),
                raw(AUTHORIZATION, "default/truncated", &TRUNCATED),
                bodiless("default/bodiless"),
                policy(&bad_action),
                policy(&bad_scope),
                // A good one beside them.
                policy(&deny),
            ],
        )
        .await;
    let decode = "decode: failed to decode Protobuf message";
    assert_nack(
        &detail,
        vec![
            format!("default/garbage: {decode}: Authorization.name: buffer underflow"),
            format!("default/truncated: {decode}: invalid varint"),
            "default/bodiless: resource has no body".into(),
            format!("{ALLOW}: unknown action value 5"),
            "default/bad-scope: unknown scope value 7".into(),
        ],
    );
    let after = w.dump().await;
    assert_eq!(find(&after, "policies", "name", "allow"), &allow);
    assert_eq!(keys(&after, "policies", "name"), ["allow", "deny-nobody"]);
    // Still in force: `client` in, `other` out.
    assert_eq!(w.hbone_as("client", target).await, Ok(()));
    assert_eq!(
        w.hbone_as("other", target).await,
        Err(StatusCode::UNAUTHORIZED)
    );
    w.assert_ready().await;

    // A good replacement letting `other` in instead is ACKed and applies.
    w.push_ok(
        AUTHORIZATION,
        vec![policy(&allow_only("allow", "other"))],
        vec![],
    )
    .await;
    assert_eq!(w.hbone_as("other", target).await, Ok(()));
    assert_eq!(
        w.hbone_as("client", target).await,
        Err(StatusCode::UNAUTHORIZED)
    );
    let last = w.dump().await;
    let allow = find(&last, "policies", "name", "allow");
    assert!(allow["rules"].to_string().contains("sa/other"), "{allow}");
    w.assert_ready().await;
    w.zt.drain().await;
}
