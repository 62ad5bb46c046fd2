//! The DNS proxy over real sockets (spec 7): local answers over UDP and TCP, truncation of large UDP answers,
//! forwarding to a fake upstream (UDP, TCP, TC retry, NXDOMAIN, AA cleared), garbage packets, drain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ambit_ztunnel::dns::metrics::DnsMetrics;
use ambit_ztunnel::dns::{DnsConfig, DnsProxy};
use ambit_ztunnel::localconfig;
use ambit_ztunnel::state::ProxyState;
use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A client, one VIP service, and a headless service with 60 endpoints (too many for 512 bytes).
fn state_yaml() -> String {
    let mut y = String::from(
        r#"
workloads:
- uid: c//Pod/demo/client
  name: client
  namespace: demo
  serviceAccount: client
  workloadIps: ["10.244.1.2"]
  protocol: HBONE
"#,
    );
    for i in 0..60 {
        let _ = write!(
            y,
            r#"- uid: c//Pod/demo/big-{i}
  name: big-{i}
  namespace: demo
  serviceAccount: big
  workloadIps: ["10.245.0.{i}"]
  protocol: HBONE
  services: {{"demo/big.demo.svc.cluster.local": {{80: 80}}}}
"#
        );
    }
    y.push_str(
        r#"services:
- name: server
  namespace: demo
  hostname: server.demo.svc.cluster.local
  vips: ["/10.96.0.11"]
  ports: {80: 8080}
- name: big
  namespace: demo
  hostname: big.demo.svc.cluster.local
  ports: {80: 80}
"#,
    );
    y
}

struct Running {
    addr: SocketAddr,
    trigger: ambit_core::drain::DrainTrigger,
    task: tokio::task::JoinHandle<()>,
}

async fn start(upstreams: Vec<SocketAddr>) -> Running {
    start_with(upstreams, None).await
}

async fn start_with(upstreams: Vec<SocketAddr>, metrics: Option<Arc<DnsMetrics>>) -> Running {
    let state = ProxyState::new();
    state.replace_all(localconfig::parse(&state_yaml()).unwrap());
    let lookup = state.clone();
    let proxy = DnsProxy::new(
        state,
        Arc::new(DnsConfig {
            cluster_domain: "cluster.local".into(),
            search_domains: None,
            upstreams,
            prefered_service_namespace: None,
            ipv6_enabled: true,
            forward_timeout: Duration::from_millis(300),
        }),
        Arc::new(move || lookup.find_workload("demo", "client", "client")),
    );
    let proxy = match metrics {
        Some(m) => proxy.with_metrics(m),
        None => proxy,
    };
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let udp = UdpSocket::bind(addr).await.unwrap();
    let (trigger, watcher) = ambit_core::drain::new();
    let task = tokio::spawn(proxy.serve(udp, tcp, watcher));
    Running {
        addr,
        trigger,
        task,
    }
}

fn query(id: u16, name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if let Some(p) = edns {
        let mut e = Edns::new();
        e.set_max_payload(p);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

async fn udp_raw(server: SocketAddr, packet: &[u8]) -> Option<Message> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(packet, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(Message::from_vec(&buf[..n]).unwrap())
}

async fn udp(server: SocketAddr, name: &str, t: RecordType, edns: Option<u16>) -> Message {
    udp_raw(server, &query(7, name, t, edns))
        .await
        .expect("an answer")
}

async fn tcp_write(s: &mut TcpStream, packet: &[u8]) {
    s.write_all(&(packet.len() as u16).to_be_bytes())
        .await
        .unwrap();
    s.write_all(packet).await.unwrap();
}

async fn tcp_read(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await.unwrap();
    buf
}

async fn tcp(server: SocketAddr, name: &str, t: RecordType) -> Message {
    let mut s = TcpStream::connect(server).await.unwrap();
    tcp_write(&mut s, &query(8, name, t, None)).await;
    Message::from_vec(&tcp_read(&mut s).await).unwrap()
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

#[tokio::test]
async fn local_answers_over_udp_and_tcp_and_truncation() {
    let r = start(vec![]).await;
    let m = udp(r.addr, "server.", RecordType::A, None).await;
    assert_eq!(m.metadata.id, 7);
    assert!(m.metadata.authoritative);
    assert_eq!(ips(&m), BTreeSet::from(["10.96.0.11".to_owned()]));

    // 60 endpoint addresses do not fit in 512 bytes: empty and TC over UDP…
    let m = udp(r.addr, "big.demo.", RecordType::A, None).await;
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    // …all of them with a large enough EDNS payload, and over TCP.
    let m = udp(r.addr, "big.demo.", RecordType::A, Some(4096)).await;
    assert!(!m.metadata.truncation);
    assert_eq!(ips(&m).len(), 60);
    let m = tcp(r.addr, "big", RecordType::A).await;
    assert!(!m.metadata.truncation);
    assert_eq!(ips(&m).len(), 60);
    assert!(ips(&m).contains("10.245.0.59"));
}

#[tokio::test]
async fn garbage_does_not_stop_the_server_and_drain_does() {
    let r = start(vec![]).await;
    // No header at all: no answer (the next datagram on this socket is the answer to the real query sent after).
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(&[0x42], r.addr).await.unwrap();
    s.send_to(&query(99, "server.", RecordType::A, None), r.addr)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.recv(&mut buf).await.unwrap();
    assert_eq!(Message::from_vec(&buf[..n]).unwrap().metadata.id, 99);
    // A header with junk after it: FORMERR with the same id.
    let m = udp_raw(r.addr, &[0x12, 0x34, 0xff, 0xff, 0xff, 0x00, 0x01])
        .await
        .unwrap();
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // Garbage on TCP too.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    tcp_write(&mut s, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]).await;
    let m = Message::from_vec(&tcp_read(&mut s).await).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // Still serving.
    let m = udp(
        r.addr,
        "server.demo.svc.cluster.local.",
        RecordType::A,
        None,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(ips(&m).len(), 1);

    assert!(r.trigger.drain(Duration::from_secs(5)).await);
    r.task.await.unwrap();
}

/// A fake upstream on UDP and TCP at the same address. Over UDP it answers `big.example.org` truncated; it sets AA
/// on every answer and NXDOMAIN for `nope.example.org`. Counts TCP queries.
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    fn answer(req: &Message, truncate: bool) -> Vec<u8> {
        let q = req.queries[0].clone();
        let mut resp = Message::response(req.metadata.id, OpCode::Query);
        resp.metadata.authoritative = true;
        resp.add_query(q.clone());
        match q.name().to_ascii().as_str() {
            "nope.example.org." => resp.metadata.response_code = ResponseCode::NXDomain,
            "big.example.org." if truncate => resp.metadata.truncation = true,
            _ => {
                resp.add_answer(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
                ));
            }
        }
        resp.to_vec().unwrap()
    }
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let udp = UdpSocket::bind(addr).await.unwrap();
    let tcp_hits = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
            let req = Message::from_vec(&buf[..n]).unwrap();
            udp.send_to(&answer(&req, true), peer).await.unwrap();
        }
    });
    let hits = tcp_hits.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tcp.accept().await.unwrap();
            hits.fetch_add(1, Ordering::SeqCst);
            let req = Message::from_vec(&tcp_read(&mut s).await).unwrap();
            tcp_write(&mut s, &answer(&req, false)).await;
        }
    });
    (addr, tcp_hits)
}

#[tokio::test]
async fn forwarding_udp_tcp_truncation_and_errors() {
    let (up, tcp_hits) = upstream().await;
    let r = start(vec![up]).await;

    let m = udp(r.addr, "www.example.org.", RecordType::A, None).await;
    assert_eq!(m.metadata.id, 7);
    assert_eq!(ips(&m), BTreeSet::from(["192.0.2.1".to_owned()]));
    assert!(
        !m.metadata.authoritative,
        "AA is cleared on forwarded answers"
    );
    assert_eq!(tcp_hits.load(Ordering::SeqCst), 0);

    // Other types go upstream too, even for mesh names.
    let m = udp(
        r.addr,
        "server.demo.svc.cluster.local.",
        RecordType::TXT,
        None,
    )
    .await;
    assert_eq!(ips(&m), BTreeSet::from(["192.0.2.1".to_owned()]));

    let m = udp(r.addr, "nope.example.org.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    // Truncated over UDP: the proxy retries upstream over TCP.
    let m = udp(r.addr, "big.example.org.", RecordType::A, None).await;
    assert!(!m.metadata.truncation);
    assert_eq!(ips(&m), BTreeSet::from(["192.0.2.1".to_owned()]));
    assert_eq!(tcp_hits.load(Ordering::SeqCst), 1);

    // A TCP query is forwarded over TCP.
    let m = tcp(r.addr, "www.example.org.", RecordType::A).await;
    assert_eq!(m.metadata.id, 8);
    assert_eq!(ips(&m), BTreeSet::from(["192.0.2.1".to_owned()]));
    assert_eq!(tcp_hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn dead_upstreams_give_servfail_and_the_next_one_is_tried() {
    // A silent UDP upstream, a closed port (connection refused on TCP), then a working one.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let r = start(vec![silent.local_addr().unwrap()]).await;
    let m = udp(r.addr, "www.example.org.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let m = tcp(r.addr, "www.example.org.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);

    let (up, _) = upstream().await;
    let r = start(vec![silent.local_addr().unwrap(), closed, up]).await;
    let m = udp(r.addr, "www.example.org.", RecordType::A, None).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(ips(&m), BTreeSet::from(["192.0.2.1".to_owned()]));
}

#[tokio::test]
async fn metrics_count_requests_and_upstream_exchanges() {
    let (up, _) = upstream().await;
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(DnsMetrics::new(&mut registry));
    let r = start_with(vec![silent.local_addr().unwrap(), up], Some(metrics)).await;
    udp(r.addr, "server.", RecordType::A, None).await;
    udp(r.addr, "www.example.org.", RecordType::A, None).await;
    tcp(r.addr, "www.example.org.", RecordType::AAAA).await;

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let value = |series: &str, labels: &str| -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(&format!("{series}{{")) && l.contains(labels))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    };
    let udp_a = r#"request_query_type="a",request_protocol="udp""#;
    let tcp_aaaa = r#"request_query_type="aaaa",request_protocol="tcp""#;
    assert_eq!(
        value("istio_dns_requests_total", udp_a).as_deref(),
        Some("2")
    );
    assert_eq!(
        value("istio_dns_requests_total", tcp_aaaa).as_deref(),
        Some("1")
    );
    assert!(text.contains(r#"source_canonical_service="unknown""#));
    // The UDP query tried the silent upstream (a failure) and then the working one.
    assert_eq!(
        value("istio_dns_upstream_requests_total", udp_a).as_deref(),
        Some("2")
    );
    assert_eq!(
        value("istio_dns_upstream_failures_total", udp_a).as_deref(),
        Some("1")
    );
    // Over TCP too (the silent upstream refuses TCP connections).
    assert_eq!(
        value("istio_dns_upstream_failures_total", tcp_aaaa).as_deref(),
        Some("1")
    );
    assert_eq!(
        value(
            "istio_dns_upstream_request_duration_seconds_count",
            tcp_aaaa
        )
        .as_deref(),
        Some("2")
    );
}

/// Reads what the server sends until it closes the connection (at most 5 s).
async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("the server closes the connection")
        .unwrap();
    got
}

#[tokio::test]
async fn tcp_frames_cut_short_close_only_their_connection() {
    let r = start(vec![]).await;
    // A length prefix announcing more than follows, then the client finishes sending: closed, no answer.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(&[0, 40]).await.unwrap();
    s.write_all(&query(20, "server.", RecordType::A, None)[..10])
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    assert!(until_closed(&mut s).await.is_empty());
    // Half a length prefix, then the end.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(&[0]).await.unwrap();
    s.shutdown().await.unwrap();
    assert!(until_closed(&mut s).await.is_empty());
    // An empty frame has not even a header: no answer, and the connection is closed.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(&[0, 0]).await.unwrap();
    assert!(until_closed(&mut s).await.is_empty());

    // A well-framed query cut short (20 of its bytes, framed as 20): FORMERR with its id, and the connection
    // serves the next query.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    tcp_write(&mut s, &query(21, "server.", RecordType::A, None)[..20]).await;
    let m = Message::from_vec(&tcp_read(&mut s).await).unwrap();
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (21, ResponseCode::FormErr)
    );
    tcp_write(&mut s, &query(22, "server.", RecordType::A, None)).await;
    let m = Message::from_vec(&tcp_read(&mut s).await).unwrap();
    assert_eq!(m.metadata.id, 22);
    assert_eq!(ips(&m), BTreeSet::from(["10.96.0.11".to_owned()]));

    // New connections and UDP are served.
    let m = tcp(r.addr, "server.", RecordType::A).await;
    assert_eq!(ips(&m), BTreeSet::from(["10.96.0.11".to_owned()]));
    let m = udp(r.addr, "server.", RecordType::A, None).await;
    assert_eq!(ips(&m), BTreeSet::from(["10.96.0.11".to_owned()]));
    assert!(!r.task.is_finished());
}

/// How a broken upstream answers.
#[derive(Clone, Copy, Debug)]
enum Broken {
    /// The query's id, then a header claiming one question and junk (does not parse).
    Garbage,
    /// A well-formed answer with another id.
    WrongId,
    /// One byte (not even an id).
    OneByte,
    /// Over UDP a truncated answer (TC, so the proxy asks again over TCP); over TCP a length prefix 100 bytes
    /// longer than the answer that follows, then the connection is closed.
    ShortFrame,
    /// A well-formed answer with the query's id for another name (`evil.example.org.`, 192.0.2.66).
    OtherQuestion,
}

/// A fake upstream on UDP and TCP at one address that answers every query as `how` says.
async fn broken_upstream(how: Broken) -> SocketAddr {
    fn reply(how: Broken, req: &[u8], tcp: bool) -> Vec<u8> {
        let req = Message::from_vec(req).unwrap();
        let id = req.metadata.id;
        let good = |id| {
            let mut resp = Message::response(id, OpCode::Query);
            resp.metadata.truncation = !tcp && matches!(how, Broken::ShortFrame);
            let mut q = req.queries[0].clone();
            if let Broken::OtherQuestion = how {
                q.name = Name::from_ascii("evil.example.org.").unwrap();
            }
            resp.add_query(q.clone());
            resp.add_answer(Record::from_rdata(
                q.name().clone(),
                60,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 66))),
            ));
            resp.to_vec().unwrap()
        };
        match how {
            Broken::Garbage => {
                let mut b = id.to_be_bytes().to_vec();
                b.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff]);
                b
            }
            Broken::WrongId => good(id.wrapping_add(1)),
            Broken::OneByte => vec![id.to_be_bytes()[0]],
            Broken::ShortFrame | Broken::OtherQuestion => good(id),
        }
    }
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let udp = UdpSocket::bind(addr).await.unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
            udp.send_to(&reply(how, &buf[..n], false), peer)
                .await
                .unwrap();
        }
    });
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tcp.accept().await.unwrap();
            let req = tcp_read(&mut s).await;
            let resp = reply(how, &req, true);
            if let Broken::ShortFrame = how {
                let claimed = u16::try_from(resp.len() + 100).unwrap();
                s.write_all(&claimed.to_be_bytes()).await.unwrap();
                s.write_all(&resp).await.unwrap();
            } else {
                tcp_write(&mut s, &resp).await;
            }
            // Dropped: closed.
        }
    });
    addr
}

#[tokio::test]
async fn malformed_upstream_answers_give_servfail_and_the_next_one_is_tried() {
    let (good, _) = upstream().await;
    for how in [
        Broken::Garbage,
        Broken::WrongId,
        Broken::OneByte,
        Broken::ShortFrame,
        Broken::OtherQuestion,
    ] {
        let bad = broken_upstream(how).await;
        let r = start(vec![bad]).await;
        // UDP (a stray id or a one-byte datagram is ignored, so those end with the forward timeout) and TCP.
        let m = udp(r.addr, "www.example.org.", RecordType::A, None).await;
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (7, ResponseCode::ServFail),
            "{how:?} over UDP"
        );
        assert!(m.answers.is_empty(), "{how:?}");
        let m = tcp(r.addr, "www.example.org.", RecordType::A).await;
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (8, ResponseCode::ServFail),
            "{how:?} over TCP"
        );
        // Local names are still answered.
        let m = udp(r.addr, "server.", RecordType::A, None).await;
        assert_eq!(ips(&m), BTreeSet::from(["10.96.0.11".to_owned()]));
        assert!(!r.task.is_finished(), "{how:?}");

        // With a working upstream after it, that one answers.
        let r = start(vec![bad, good]).await;
        let m = udp(r.addr, "www.example.org.", RecordType::A, None).await;
        assert_eq!(
            ips(&m),
            BTreeSet::from(["192.0.2.1".to_owned()]),
            "{how:?} over UDP"
        );
        let m = tcp(r.addr, "www.example.org.", RecordType::A).await;
        assert_eq!(
            ips(&m),
            BTreeSet::from(["192.0.2.1".to_owned()]),
            "{how:?} over TCP"
        );
    }
}
