use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Query};

use super::*;
use crate::localconfig;

const STATE: &str = r#"
workloads:
- uid: c//Pod/demo/client
  name: client
  namespace: demo
  serviceAccount: client
  workloadIps: ["10.244.1.2"]
  protocol: HBONE
- uid: c//Pod/demo/server-0
  name: server-0
  namespace: demo
  serviceAccount: server
  workloadIps: ["10.244.1.3"]
  protocol: HBONE
  services: {"demo/server-headless.demo.svc.cluster.local": {8080: 8080}}
- uid: c//Pod/demo/server-1
  name: server-1
  namespace: demo
  serviceAccount: server
  workloadIps: ["10.244.2.2"]
  protocol: HBONE
  services: {"demo/server-headless.demo.svc.cluster.local": {8080: 8080}}
services:
- name: server
  namespace: demo
  hostname: server.demo.svc.cluster.local
  vips: ["/10.96.0.11", "/fd00::11"]
  ports: {80: 8080}
- name: server-headless
  namespace: demo
  hostname: server-headless.demo.svc.cluster.local
  ports: {8080: 8080}
- name: v4only
  namespace: demo
  hostname: v4only.demo.svc.cluster.local
  vips: ["/10.96.0.12"]
  ipFamilies: IPv4
  ports: {80: 80}
- name: external
  namespace: demo
  hostname: "*.example.com"
  vips: ["/240.240.0.1"]
  ports: {443: 443}
- name: other
  namespace: other
  hostname: other.other.svc.cluster.local
  vips: ["/10.96.0.13"]
  ports: {80: 80}
"#;

fn proxy(upstreams: Vec<SocketAddr>) -> DnsProxy {
    let state = ProxyState::new();
    state.replace_all(localconfig::parse(STATE).unwrap());
    let lookup = state.clone();
    DnsProxy::new(
        state,
        Arc::new(DnsConfig {
            cluster_domain: "cluster.local".into(),
            search_domains: None,
            upstreams,
            prefered_service_namespace: None,
            ipv6_enabled: true,
            forward_timeout: Duration::from_millis(200),
        }),
        Arc::new(move || lookup.find_workload("demo", "client", "client")),
    )
}

fn query(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

async fn ask(p: &DnsProxy, name: &str, t: RecordType) -> Message {
    let out = p.handle(&query(name, t)).await.unwrap();
    Message::from_vec(&out).unwrap()
}

fn ips(m: &Message) -> BTreeSet<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn service_names_resolve_to_vips() {
    let p = proxy(vec![]);
    for name in [
        "server.",
        "server.demo.",
        "server.demo.svc.",
        "server.demo.svc.cluster.local.",
    ] {
        let m = ask(&p, name, RecordType::A).await;
        assert_eq!(m.metadata.id, 4242);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(m.metadata.authoritative && m.metadata.recursion_available);
        assert_eq!(ips(&m), set(&["10.96.0.11"]), "{name}");
        assert!(m.answers.iter().all(|r| r.ttl == TTL));
    }
    let m = ask(&p, "server.demo.svc.cluster.local.", RecordType::AAAA).await;
    assert_eq!(ips(&m), set(&["fd00::11"]));
    // Another namespace's service by `name.namespace`.
    let m = ask(&p, "other.other.", RecordType::A).await;
    assert_eq!(ips(&m), set(&["10.96.0.13"]));
}

#[tokio::test]
async fn headless_wildcard_family_and_search_domains() {
    let p = proxy(vec![]);
    let m = ask(&p, "server-headless.demo.", RecordType::A).await;
    assert_eq!(ips(&m), set(&["10.244.1.3", "10.244.2.2"]));
    let m = ask(&p, "api.example.com.", RecordType::A).await;
    assert_eq!(ips(&m), set(&["240.240.0.1"]));
    // Excluded family: the name exists, no addresses.
    let m = ask(&p, "v4only.demo.svc.cluster.local.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    // A name the resolver extended with a search domain: CNAME to the real name, then its address.
    let m = ask(
        &p,
        "server.demo.svc.cluster.local.demo.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert!(
        matches!(&m.answers[0].data, RData::CNAME(c) if c.0.to_ascii() == "server.demo.svc.cluster.local.")
    );
    assert_eq!(ips(&m), set(&["10.96.0.11"]));
    assert_eq!(
        m.answers[1].name.to_ascii(),
        "server.demo.svc.cluster.local."
    );
}

#[tokio::test]
async fn bad_requests_get_errors() {
    let p = proxy(vec![]);
    let mut m = Message::query();
    m.metadata.id = 9;
    m.metadata.op_code = OpCode::Status;
    let r = Message::from_vec(&p.handle(&m.to_vec().unwrap()).await.unwrap()).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
    let mut m = Message::query();
    m.metadata.id = 10;
    m.metadata.message_type = MessageType::Response;
    let r = Message::from_vec(&p.handle(&m.to_vec().unwrap()).await.unwrap()).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    let r = Message::from_vec(&p.handle(&[0, 11, 0xff]).await.unwrap()).unwrap();
    assert_eq!(
        (r.metadata.id, r.metadata.response_code),
        (11, ResponseCode::FormErr)
    );
    assert!(p.handle(&[1]).await.is_none());
}

#[tokio::test]
async fn unknown_client_is_servfail() {
    let state = ProxyState::new();
    let p = DnsProxy::new(
        state,
        Arc::new(DnsConfig::from_resolv_conf(Path::new("/dev/null"), "cluster.local").unwrap()),
        Arc::new(|| None),
    );
    let m = ask(&p, "server.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn other_names_are_forwarded() {
    let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = up.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        for _ in 0..2 {
            let (n, peer) = up.recv_from(&mut buf).await.unwrap();
            let req = Message::from_vec(&buf[..n]).unwrap();
            let mut resp = Message::response(req.metadata.id, OpCode::Query);
            resp.add_query(req.queries[0].clone());
            if req.queries[0].name().to_ascii() == "www.example.org." {
                resp.add_answer(Record::from_rdata(
                    req.queries[0].name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
                ));
            } else {
                resp.metadata.response_code = ResponseCode::NXDomain;
            }
            up.send_to(&resp.to_vec().unwrap(), peer).await.unwrap();
        }
    });
    let p = proxy(vec![addr]);
    let m = ask(&p, "www.example.org.", RecordType::A).await;
    assert_eq!(ips(&m), set(&["192.0.2.1"]));
    assert!(!m.metadata.authoritative);
    let m = ask(&p, "nope.example.org.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // Nobody answers: SERVFAIL after the timeout.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let p = proxy(vec![silent.local_addr().unwrap()]);
    let m = ask(&p, "www.example.org.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn edns_is_echoed_and_tcp_works() {
    let p = proxy(vec![]);
    let mut m = Message::query();
    m.metadata.id = 77;
    m.add_query(Query::query(
        Name::from_ascii("server.").unwrap(),
        RecordType::A,
    ));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.set_edns(e);
    let r = Message::from_vec(&p.handle(&m.to_vec().unwrap()).await.unwrap()).unwrap();
    assert_eq!(r.edns.as_ref().map(|e| e.max_payload()), Some(1232));

    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let (_trigger, drain) = ambit_core::drain::new();
    tokio::spawn(p.serve(udp, tcp, drain));
    let mut s = TcpStream::connect(addr).await.unwrap();
    let q = query("server.", RecordType::A);
    s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
    s.write_all(&q).await.unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(ips(&Message::from_vec(&buf).unwrap()), set(&["10.96.0.11"]));
}

#[tokio::test(start_paused = true)]
async fn idle_tcp_connections_are_closed() {
    let p = proxy(vec![]);
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let (_trigger, drain) = ambit_core::drain::new();
    tokio::spawn(p.serve(udp, tcp, drain));
    let mut s = TcpStream::connect(addr).await.unwrap();
    // Half a length prefix, then silence: the server gives up after TCP_IDLE and closes.
    s.write_all(&[0]).await.unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).await.unwrap(), 0);
}
