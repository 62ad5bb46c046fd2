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
    proxy_on(STATE, upstreams)
}

/// A proxy on the proxy state `yaml` (which must have the workload `demo/client`).
fn proxy_on(yaml: &str, upstreams: Vec<SocketAddr>) -> DnsProxy {
    let state = ProxyState::new();
    state.replace_all(localconfig::parse(yaml).unwrap());
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

/// The answer to a raw packet over UDP, parsed.
async fn answer(p: &DnsProxy, packet: &[u8]) -> Message {
    Message::from_vec(&p.handle(packet).await.expect("an answer")).unwrap()
}

#[tokio::test]
async fn opcodes_other_than_query_get_notimp() {
    let p = proxy(vec![]);
    let server = Query::query(Name::from_ascii("server.").unwrap(), RecordType::A);
    // IQUERY (obsolete), STATUS, an unassigned one, NOTIFY, DSO (RFC 8490) and the highest: each with a question
    // that would be answered locally in a QUERY.
    for op in [1, 2, 3, 4, 6, 15] {
        let mut m = Message::query();
        m.metadata.id = 300 + u16::from(op);
        m.metadata.op_code = OpCode::from_u8(op);
        m.add_query(server.clone());
        let r = answer(&p, &m.to_vec().unwrap()).await;
        assert_eq!(r.metadata.id, 300 + u16::from(op));
        assert_eq!(
            r.metadata.response_code,
            ResponseCode::NotImp,
            "opcode {op}"
        );
        assert_eq!(r.metadata.op_code, OpCode::from_u8(op), "opcode is echoed");
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert!(r.answers.is_empty(), "opcode {op}");
    }
    // A real RFC 2136 UPDATE (zone, update section with a class-ANY record without data).
    let rec = Record::from_rdata(
        Name::from_ascii("server.demo.svc.cluster.local.").unwrap(),
        0,
        RData::A(A(Ipv4Addr::new(10, 96, 0, 11))),
    );
    let mut m = hickory_proto::op::update_message::delete_rrset(
        rec,
        Name::from_ascii("cluster.local.").unwrap(),
        true,
    );
    m.metadata.id = 305;
    let r = answer(&p, &m.to_vec().unwrap()).await;
    assert_eq!(
        (r.metadata.id, r.metadata.op_code, r.metadata.response_code),
        (305, OpCode::Update, ResponseCode::NotImp)
    );
    // A DSO message: zero counts, then a TLV the DNS message format does not describe.
    let mut dso = vec![0x01, 0x36, 6 << 3, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    dso.extend_from_slice(&[0, 1, 0, 8, 0, 0, 0x75, 0x30, 0, 0, 0x75, 0x30]);
    let r = answer(&p, &dso).await;
    assert_eq!(
        (r.metadata.id, r.metadata.op_code, r.metadata.response_code),
        (0x0136, OpCode::Unknown(6), ResponseCode::NotImp)
    );
    // A header with an unimplemented opcode and a body that does not parse as a QUERY's (one question claimed, junk
    // follows): the opcode decides, not the body (RFC 8906 section 3.1.4).
    let r = answer(
        &p,
        &[0x01, 0x37, 5 << 3, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
    )
    .await;
    assert_eq!(
        (r.metadata.id, r.metadata.op_code, r.metadata.response_code),
        (0x0137, OpCode::Update, ResponseCode::NotImp)
    );
    // The same junk as a QUERY is a format error.
    let r = answer(&p, &[0x01, 0x38, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff, 0xff]).await;
    assert_eq!(
        (r.metadata.id, r.metadata.op_code, r.metadata.response_code),
        (0x0138, OpCode::Query, ResponseCode::FormErr)
    );
}

#[tokio::test]
async fn a_query_needs_exactly_one_question() {
    // A silent upstream: whatever reaches it waits there, so it shows whether the proxy forwarded.
    let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let p = proxy(vec![up.local_addr().unwrap()]);
    // No question.
    let mut m = Message::query();
    m.metadata.id = 500;
    let r = answer(&p, &m.to_vec().unwrap()).await;
    assert_eq!(
        (r.metadata.id, r.metadata.response_code),
        (500, ResponseCode::FormErr)
    );
    // Two questions (a mesh name and an outside one, in either order, or a mesh name twice): FORMERR, neither
    // answered locally nor forwarded.
    for (id, first, second) in [
        (501, "server.", "www.example.org."),
        (502, "www.example.org.", "server."),
        (503, "server.", "server."),
    ] {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(Query::query(
            Name::from_ascii(first).unwrap(),
            RecordType::A,
        ));
        m.add_query(Query::query(
            Name::from_ascii(second).unwrap(),
            RecordType::A,
        ));
        let r = answer(&p, &m.to_vec().unwrap()).await;
        assert_eq!(r.metadata.id, id);
        assert_eq!(
            r.metadata.response_code,
            ResponseCode::FormErr,
            "{first} {second}"
        );
        assert!(r.answers.is_empty());
    }
    let mut buf = [0u8; 512];
    assert_eq!(
        up.try_recv_from(&mut buf).map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::WouldBlock),
        "nothing was forwarded"
    );
    // One question still works.
    assert_eq!(
        ips(&ask(&p, "server.", RecordType::A).await),
        set(&["10.96.0.11"])
    );
}

/// A running proxy (UDP and TCP on one port): its address, and the trigger that keeps it running.
async fn serving(p: DnsProxy) -> (SocketAddr, ambit_core::drain::DrainTrigger) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let udp = UdpSocket::bind(addr).await.unwrap();
    let (trigger, drain) = ambit_core::drain::new();
    tokio::spawn(p.serve(udp, tcp, drain));
    (addr, trigger)
}

/// The answer to an A query for `name` with id `id` on a new TCP connection.
async fn tcp_ask(addr: SocketAddr, id: u16, name: &str) -> Message {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut q = query(name, RecordType::A);
    q[..2].copy_from_slice(&id.to_be_bytes());
    s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
    s.write_all(&q).await.unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_tcp_frame_cut_short_is_dropped_after_the_idle_timeout_and_others_are_served() {
    let (addr, _trigger) = serving(proxy(vec![])).await;
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    let started = tokio::time::Instant::now();
    // The prefix announces 40 bytes, 10 come, then silence.
    stalled.write_all(&[0, 40]).await.unwrap();
    stalled.write_all(&[0xab; 10]).await.unwrap();
    // Meanwhile other connections are served.
    let m = tcp_ask(addr, 600, "server.").await;
    assert_eq!(m.metadata.id, 600);
    assert_eq!(ips(&m), set(&["10.96.0.11"]));
    let mut buf = [0u8; 64];
    assert_eq!(
        stalled.try_read(&mut buf).map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::WouldBlock),
        "the stalled connection is still open, with nothing sent on it"
    );
    // Then the server gives up on it: closed with no answer, after TCP_IDLE and not much later.
    assert_eq!(stalled.read(&mut buf).await.unwrap(), 0);
    let waited = started.elapsed();
    assert!(waited >= TCP_IDLE && waited < TCP_IDLE * 2, "{waited:?}");
    let m = tcp_ask(addr, 601, "server.").await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
}

/// The client and a headless service `big.demo` with `n` endpoints (4 KB answers for 250).
fn big_state(n: usize) -> String {
    let mut y = String::from(
        "workloads:\n- uid: c//Pod/demo/client\n  name: client\n  namespace: demo\n  serviceAccount: client\n  \
         workloadIps: [\"10.244.1.2\"]\n  protocol: HBONE\n",
    );
    for i in 0..n {
        y.push_str(&format!(
            "- uid: c//Pod/demo/big-{i}\n  name: big-{i}\n  namespace: demo\n  serviceAccount: big\n  \
             workloadIps: [\"10.245.{}.{}\"]\n  protocol: HBONE\n  \
             services: {{\"demo/big.demo.svc.cluster.local\": {{80: 80}}}}\n",
            i / 200,
            i % 200
        ));
    }
    y.push_str(
        "services:\n- name: big\n  namespace: demo\n  hostname: big.demo.svc.cluster.local\n  ports: {80: 80}\n",
    );
    y
}

#[tokio::test(start_paused = true)]
async fn a_tcp_client_that_never_reads_is_dropped() {
    let (addr, _trigger) = serving(proxy_on(&big_state(250), vec![])).await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    // Queries, never reading the answers: once the socket buffers are full the server cannot write. It must give
    // up after a while (closing the connection, which fails our writes), not hold the task forever.
    let q = query("big.demo.", RecordType::A);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    let framed = framed.repeat(64);
    let started = tokio::time::Instant::now();
    let flood = async {
        loop {
            if s.write_all(&framed).await.is_err() {
                return;
            }
        }
    };
    assert!(
        tokio::time::timeout(TCP_IDLE * 6, flood).await.is_ok(),
        "the server still holds the connection after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() >= TCP_IDLE, "{:?}", started.elapsed());
    // Others are served (all 250 addresses, over TCP).
    let m = tcp_ask(addr, 602, "big.demo.").await;
    assert_eq!((m.metadata.id, ips(&m).len()), (602, 250));
}
