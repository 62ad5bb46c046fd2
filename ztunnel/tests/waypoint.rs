//! In-process: a client ztunnel sends service traffic to a waypoint (spec 1.6, 1.9), here a test HBONE server
//! standing in for the L7 waypoint (native HBONE, its own identity), which carries it on with its own HBONE to the
//! destination ztunnel. Pods are 127.0.71.x; certificates come from one local CA directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::ca::LocalCa;
use ambit_core::hbone::{self, H2Config, HboneClient, HboneError, PoolKey};
use ambit_core::tls::{TlsAcceptor, TlsBackend, WorkloadCert};
use ambit_ztunnel::config::{Config, LocalXds};
use http::StatusCode;
use support::{http_get, round_trip, wait_ready};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

const CLIENT: &str = "127.0.71.2";
const SERVER: &str = "127.0.71.3";
const WAYPOINT: &str = "127.0.71.5";
/// The `echo` Service: port 80 → 18080, port 81 → 18081 (the DENY policy covers the waypoint on 18081).
const ECHO_VIP: &str = "127.0.71.100";
/// A Service whose waypoint does not exist.
const BROKEN_VIP: &str = "127.0.71.101";

/// The world; `echo_waypoint` is the `waypoint:` line of the `echo` Service (or nothing).
fn world(echo_waypoint: &str) -> String {
    format!(
        r#"
workloads:
- {{name: client, namespace: default, serviceAccount: client, clusterId: cluster1, workloadIps: [{CLIENT}], protocol: HBONE}}
- name: server
  namespace: default
  serviceAccount: server
  clusterId: cluster1
  workloadIps: [{SERVER}]
  protocol: HBONE
  services: {{default/echo.default.svc.cluster.local: {{}}}}
- name: waypoint
  namespace: default
  serviceAccount: waypoint
  clusterId: cluster1
  workloadIps: [{WAYPOINT}]
  protocol: HBONE
  nativeTunnel: true
  services: {{default/waypoint.default.svc.cluster.local: {{}}}}
services:
- name: echo
  namespace: default
  hostname: echo.default.svc.cluster.local
  vips: [/{ECHO_VIP}]
  ports: {{80: 18080, 81: 18081}}
  {echo_waypoint}
- name: waypoint
  namespace: default
  hostname: waypoint.default.svc.cluster.local
  vips: [/127.0.71.50]
  ports: {{15008: 15008}}
- name: broken
  namespace: default
  hostname: broken.default.svc.cluster.local
  vips: [/{BROKEN_VIP}]
  ports: {{80: 18080}}
  waypoint: {{destination: default/missing.default.svc.cluster.local}}
policies:
- name: deny-waypoint-on-18081
  namespace: default
  scope: Global
  action: Deny
  rules:
  - - - principals: [{{Exact: "cluster.local/ns/default/sa/waypoint"}}]
        destinationPorts: [18081]
"#
    )
}

const USE_WAYPOINT: &str = "waypoint: {destination: default/waypoint.default.svc.cluster.local}";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn config(pod: &str, name: &str, xds: LocalXds, ca_dir: &Path) -> Config {
    support::pod_config(ip(pod), name, xds, ca_dir)
}

/// A connection "from the client pod" (bound to its IP) to `dst` through the ztunnel's SOCKS5 listener.
async fn socks_connect(socks: SocketAddr, dst: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(ip(CLIENT), 0)).unwrap();
    let mut s = sock.connect(socks).await.unwrap();
    support::socks5_handshake(&mut s, dst).await.unwrap();
    s
}

/// The connection is closed by the other side (EOF or reset) instead of hanging.
async fn assert_closed(s: &mut TcpStream) {
    let _ = s.write_all(b"anyone?").await;
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("got {n} bytes from a connection that should be closed"),
        Err(_) => panic!("the connection hangs instead of being closed"),
    }
}

// ----- the fake waypoint -----

/// What the waypoint saw of one CONNECT, and what the destination answered its own CONNECT.
#[derive(Debug)]
struct Seen {
    peer: Option<Identity>,
    authority: String,
    headers: http::HeaderMap,
    upstream: Result<StatusCode, String>,
}

/// A waypoint at `WAYPOINT:15008` with identity `sa/waypoint`: it reports every CONNECT on the channel and, as an
/// L7 waypoint does, sends it on with its own HBONE to `podIP:15008`, authority `podIP:targetPort` (from
/// `routes`, keyed by the authority it got). A refused upstream CONNECT is answered 503.
async fn fake_waypoint(
    cert: Arc<WorkloadCert>,
    routes: HashMap<String, SocketAddr>,
) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    let acceptor = TlsAcceptor::new(cert.clone(), TlsBackend::default()).unwrap();
    let client = Arc::new(HboneClient::new(
        Arc::new(H2Config::default()),
        support::DirectConnector {
            cert: cert.clone(),
            src: Some(ip(WAYPOINT)),
        },
    ));
    let routes = Arc::new(routes);
    let l = TcpListener::bind(SocketAddr::new(ip(WAYPOINT), 15008))
        .await
        .unwrap();
    let (trigger, drain) = ambit_core::drain::new();
    tokio::spawn(async move {
        let _trigger = trigger;
        while let Ok((tcp, _)) = l.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let peer = tls.peer_identity();
            let (tx, client, routes, me) =
                (tx.clone(), client.clone(), routes.clone(), cert.clone());
            tokio::spawn(hbone::serve(
                tls,
                Arc::new(H2Config::default()),
                drain.clone(),
                move |parts, responder| {
                    let (tx, client, routes, peer, me) = (
                        tx.clone(),
                        client.clone(),
                        routes.clone(),
                        peer.clone(),
                        me.clone(),
                    );
                    async move {
                        let authority = parts.uri.to_string();
                        let Some(target) = routes.get(&authority).copied() else {
                            responder.reject(StatusCode::SERVICE_UNAVAILABLE);
                            let upstream = Err(format!("no route for {authority}"));
                            let _ = tx.send(Seen {
                                peer,
                                authority,
                                headers: parts.headers,
                                upstream,
                            });
                            return;
                        };
                        let key = PoolKey {
                            src_identity: me.identity().clone(),
                            dst_identities: vec![Identity::new(
                                "cluster.local",
                                "default",
                                "server",
                            )],
                            dst: SocketAddr::new(target.ip(), 15008),
                            src_ip: ip(WAYPOINT),
                        };
                        let req = http::Request::builder()
                            .method(http::Method::CONNECT)
                            .uri(target.to_string())
                            .body(())
                            .unwrap();
                        match client.connect(key, req).await {
                            Ok((up, resp)) => {
                                let _ = tx.send(Seen {
                                    peer,
                                    authority,
                                    headers: parts.headers,
                                    upstream: Ok(resp.status),
                                });
                                let Ok(mut down) = responder.accept(http::HeaderMap::new()) else {
                                    return;
                                };
                                let _ = hbone::copy_bidirectional(up, &mut down).await;
                            }
                            Err(e) => {
                                responder.reject(StatusCode::SERVICE_UNAVAILABLE);
                                let upstream = match e {
                                    HboneError::Status(s) => Ok(s),
                                    other => Err(other.to_string()),
                                };
                                let _ = tx.send(Seen {
                                    peer,
                                    authority,
                                    headers: parts.headers,
                                    upstream,
                                });
                            }
                        }
                    }
                },
            ));
        }
    });
    rx
}

async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no CONNECT reached the waypoint")
        .unwrap()
}

fn header<'a>(s: &'a Seen, name: &str) -> &'a str {
    s.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header in {s:?}"))
        .to_str()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_traffic_goes_through_the_waypoint() {
    let ca_dir = tempfile::tempdir().unwrap();
    let xds_dir = tempfile::tempdir().unwrap();
    let xds_file = xds_dir.path().join("xds.yaml");
    std::fs::write(&xds_file, world(USE_WAYPOINT)).unwrap();
    let server = support::start(config(
        SERVER,
        "server",
        LocalXds::Inline(world(USE_WAYPOINT)),
        ca_dir.path(),
    ))
    .await;
    let client = support::start(config(
        CLIENT,
        "client",
        LocalXds::Path(xds_file.clone()),
        ca_dir.path(),
    ))
    .await;
    wait_ready(&server).await;
    wait_ready(&client).await;
    support::echo(SocketAddr::new(ip(SERVER), 18080)).await;
    support::echo(SocketAddr::new(ip(SERVER), 18081)).await;
    let ca = LocalCa::load_or_create(ca_dir.path(), "cluster.local").unwrap();
    let waypoint_id = Identity::new("cluster.local", "default", "waypoint");
    let cert = Arc::new(
        ca.issue_workload(&waypoint_id, Duration::from_secs(3600))
            .unwrap(),
    );
    let routes = HashMap::from([
        (format!("{ECHO_VIP}:80"), SocketAddr::new(ip(SERVER), 18080)),
        (format!("{ECHO_VIP}:81"), SocketAddr::new(ip(SERVER), 18081)),
    ]);
    let mut seen = fake_waypoint(cert, routes).await;
    let socks = client.addresses.socks5.unwrap();
    let vip = |port| SocketAddr::new(ip(ECHO_VIP), port);

    // 1. Service-addressed traffic arrives at the waypoint as the client's CONNECT for the VIP, and the
    // destination ztunnel lets the waypoint's own CONNECT in.
    let mut conn = socks_connect(socks, vip(80)).await;
    round_trip(&mut conn, b"through the waypoint").await;
    let s = next_seen(&mut seen).await;
    assert_eq!(
        s.authority,
        format!("{ECHO_VIP}:80"),
        "authority = VIP:service port"
    );
    assert_eq!(
        s.peer,
        Some(Identity::new("cluster.local", "default", "client")),
        "mTLS as the client"
    );
    let from = conn.local_addr().unwrap();
    assert_eq!(
        header(&s, "forwarded"),
        format!("for=\"{from}\";host=echo.default.svc.cluster.local")
    );
    let baggage = header(&s, "baggage");
    assert!(
        baggage.contains("k8s.cluster.name=cluster1")
            && baggage.contains("k8s.namespace.name=default"),
        "{baggage}"
    );
    assert!(header(&s, "traceparent").starts_with("00-"));
    assert_eq!(
        s.upstream,
        Ok(StatusCode::OK),
        "destination accepted the waypoint"
    );
    drop(conn);
    // The destination reports the waypoint as the source.
    let mut m = String::new();
    for _ in 0..50 {
        m = http_get(server.addresses.stats, "/metrics").await;
        if m.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/waypoint\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        m.lines().any(|l| l
            .starts_with("istio_tcp_connections_opened_total{reporter=\"destination\"")
            && l.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/waypoint\"")),
        "{m}"
    );

    // 2. L4 policy at the destination applies to the waypoint's identity: DENY names it on 18081 ⇒ 401 to the
    // waypoint, and the client's connection is closed.
    let mut conn = socks_connect(socks, vip(81)).await;
    assert_closed(&mut conn).await;
    let s = next_seen(&mut seen).await;
    assert_eq!(s.authority, format!("{ECHO_VIP}:81"));
    assert_eq!(s.upstream, Ok(StatusCode::UNAUTHORIZED), "{s:?}");
    // The client itself, to the pod (no waypoint for pod-addressed traffic to it), is not denied there.
    let mut conn = socks_connect(socks, SocketAddr::new(ip(SERVER), 18081)).await;
    round_trip(&mut conn, b"direct, as the client").await;
    drop(conn);

    // 3. A waypoint that cannot be resolved: the connection is closed, not left hanging.
    let mut conn = socks_connect(socks, SocketAddr::new(ip(BROKEN_VIP), 80)).await;
    assert_closed(&mut conn).await;

    // 4. The waypoint is removed from the Service (the local config file is rewritten and re-read): traffic to the
    // VIP goes straight to the endpoint.
    std::fs::write(&xds_file, world("")).unwrap();
    let mut reloaded = false;
    for _ in 0..100 {
        let svc = client
            .state
            .service_by_key("default/echo.default.svc.cluster.local");
        if svc.is_some_and(|s| s.waypoint.is_none()) {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "local config not re-read");
    let mut conn = socks_connect(socks, vip(80)).await;
    round_trip(&mut conn, b"straight to the pod").await;
    drop(conn);
    assert!(
        seen.try_recv().is_err(),
        "the waypoint saw a CONNECT after it was removed"
    );

    client.drain().await;
    server.drain().await;
}
