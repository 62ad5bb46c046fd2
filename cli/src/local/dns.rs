//! The local mesh's cluster DNS on 10.96.0.10:53 (UDP), for pods and nodes whose queries do not go to a ztunnel:
//! `<service>.<namespace>.svc.cluster.local` answers the Service VIP (headless: the endpoints' addresses); other
//! names under `cluster.local` are NXDOMAIN; everything else is forwarded to the host's resolvers. Short names work
//! through the search list the supervisor writes into each pod's `resolv.conf`.
//!
//! It runs on its own thread with a small runtime, which also turns SIGTERM/SIGINT into the supervisor's stop flag.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ambit_core::dns_forward;
use anyhow::{Context, Result};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType, rdata::A};
use nix::sched::{CloneFlags, setns};
use tracing::{debug, warn};

use super::net::{DNS_IP, NET_NS};

const TTL: u32 = 30;
const CLUSTER_SUFFIX: &str = ".cluster.local.";

/// Name (lower case, fully qualified with the trailing dot) → addresses.
#[derive(Default)]
pub struct Records(RwLock<BTreeMap<String, Vec<Ipv4Addr>>>);

impl Records {
    pub fn replace(&self, records: BTreeMap<String, Vec<Ipv4Addr>>) {
        if let Ok(mut r) = self.0.write() {
            *r = records;
        }
    }

    fn get(&self, name: &str) -> Option<Vec<Ipv4Addr>> {
        self.0.read().ok()?.get(name).cloned()
    }
}

/// Binds the DNS socket inside the pod network namespace and serves it until `stop` is set.
pub fn spawn(records: Arc<Records>, stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<()>> {
    let upstreams = host_resolvers();
    // The pod network namespace may not exist yet (the supervisor creates it next), so `serve` binds lazily,
    // retrying until it does. The socket is made by a short-lived thread that enters the namespace; the socket
    // stays there.
    let handle = std::thread::Builder::new()
        .name("cluster-dns".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn!(error = %e, "cluster DNS runtime");
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
            };
            rt.block_on(serve(records, upstreams, stop));
        })
        .context("start the cluster DNS thread")?;
    Ok(handle)
}

fn bind_in_net_ns() -> Result<std::net::UdpSocket> {
    std::thread::spawn(|| -> Result<std::net::UdpSocket> {
        let ns = File::open(format!("/var/run/netns/{NET_NS}"))?;
        setns(&ns, CloneFlags::CLONE_NEWNET)?;
        let s = std::net::UdpSocket::bind(SocketAddr::from((DNS_IP, 53)))?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("bind thread panicked"))?
}

async fn serve(records: Arc<Records>, upstreams: Vec<SocketAddr>, stop: Arc<AtomicBool>) {
    let signals = {
        let stop = stop.clone();
        async move {
            ambit_core::signal::shutdown().await;
            stop.store(true, Ordering::Relaxed);
        }
    };
    tokio::spawn(signals);
    let socket = loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match bind_in_net_ns().and_then(|s| Ok(tokio::net::UdpSocket::from_std(s)?)) {
            Ok(s) => break Arc::new(s),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut buf = vec![0u8; 4096];
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let (n, peer) = match tokio::time::timeout(
            Duration::from_millis(500),
            socket.recv_from(&mut buf),
        )
        .await
        {
            Err(_) => continue,
            Ok(Err(e)) => {
                debug!(error = %e, "cluster DNS receive");
                continue;
            }
            Ok(Ok(x)) => x,
        };
        let query = buf[..n].to_vec();
        let records = records.clone();
        let upstreams = upstreams.clone();
        let socket = socket.clone();
        tokio::spawn(async move {
            if let Some(answer) = answer(&records, &upstreams, &query).await {
                let _ = socket.send_to(&answer, peer).await;
            }
        });
    }
}

/// The response to one query packet, or `None` when it is not worth answering (not even a header).
pub async fn answer(records: &Records, upstreams: &[SocketAddr], packet: &[u8]) -> Option<Vec<u8>> {
    let req = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => {
            // Echo the id back with FORMERR when there is one.
            let id = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
    };
    let id = req.metadata.id;
    if req.metadata.message_type != MessageType::Query {
        return Message::error_msg(id, req.metadata.op_code, ResponseCode::FormErr)
            .to_vec()
            .ok();
    }
    if req.metadata.op_code != OpCode::Query {
        return Message::error_msg(id, req.metadata.op_code, ResponseCode::NotImp)
            .to_vec()
            .ok();
    }
    let Some(q) = req.queries.first() else {
        return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
            .to_vec()
            .ok();
    };
    let name = q.name().to_ascii().to_ascii_lowercase();
    let fqdn = if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    };
    if !fqdn.ends_with(CLUSTER_SUFFIX) {
        return Some(forward(upstreams, packet, id).await);
    }
    let mut resp = Message::response(id, OpCode::Query);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.authoritative = true;
    resp.add_query(q.clone());
    match records.get(&fqdn) {
        Some(ips) => {
            if q.query_type() == RecordType::A {
                for ip in ips {
                    resp.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(ip))));
                }
            }
        }
        None => resp.metadata.response_code = ResponseCode::NXDomain,
    }
    resp.to_vec().ok()
}

/// Relays the query to the host's resolvers in turn (`core::dns_forward`: answers only from the resolver asked, with
/// the query's id; TCP when an answer is truncated); SERVFAIL when none answers.
async fn forward(upstreams: &[SocketAddr], packet: &[u8], id: u16) -> Vec<u8> {
    for up in upstreams {
        match dns_forward::exchange(*up, packet, id, false, Duration::from_secs(2)).await {
            Ok(answer) => {
                if let Ok(bytes) = answer.to_vec() {
                    return bytes;
                }
            }
            Err(e) => debug!(error = %e, "cluster DNS: upstream failed"),
        }
    }
    Message::error_msg(id, OpCode::Query, ResponseCode::ServFail)
        .to_vec()
        .unwrap_or_default()
}

/// The nameservers of the host's `/etc/resolv.conf`.
fn host_resolvers() -> Vec<SocketAddr> {
    dns_forward::nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 7;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn records() -> Records {
        let r = Records::default();
        r.replace(BTreeMap::from([(
            "server.demo.svc.cluster.local.".to_owned(),
            vec![Ipv4Addr::new(10, 96, 0, 11)],
        )]));
        r
    }

    #[tokio::test]
    async fn services_resolve_and_unknown_cluster_names_do_not() {
        let r = records();
        let a = answer(
            &r,
            &[],
            &query("Server.demo.svc.cluster.local.", RecordType::A),
        )
        .await
        .unwrap();
        let m = Message::from_vec(&a).unwrap();
        assert_eq!(m.metadata.id, 7);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::new(10, 96, 0, 11))));
        let aaaa = answer(
            &r,
            &[],
            &query("server.demo.svc.cluster.local.", RecordType::AAAA),
        )
        .await
        .unwrap();
        let m = Message::from_vec(&aaaa).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        let nx = answer(
            &r,
            &[],
            &query("nope.demo.svc.cluster.local.", RecordType::A),
        )
        .await
        .unwrap();
        assert_eq!(
            Message::from_vec(&nx).unwrap().metadata.response_code,
            ResponseCode::NXDomain
        );
    }

    #[tokio::test]
    async fn garbage_and_unreachable_upstreams_get_errors_not_crashes() {
        let r = records();
        let bad = answer(&r, &[], &[0, 9, 1, 2, 3]).await.unwrap();
        assert_eq!(
            Message::from_vec(&bad).unwrap().metadata.response_code,
            ResponseCode::FormErr
        );
        assert!(answer(&r, &[], &[1]).await.is_none());
        let fwd = answer(&r, &[], &query("example.com.", RecordType::A))
            .await
            .unwrap();
        assert_eq!(
            Message::from_vec(&fwd).unwrap().metadata.response_code,
            ResponseCode::ServFail
        );
    }

    #[tokio::test]
    async fn other_names_are_forwarded_verbatim() {
        let up = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = up.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (n, peer) = up.recv_from(&mut buf).await.unwrap();
            let mut m = Message::from_vec(&buf[..n]).unwrap();
            m.metadata.message_type = MessageType::Response;
            m.metadata.response_code = ResponseCode::NXDomain;
            up.send_to(&m.to_vec().unwrap(), peer).await.unwrap();
        });
        let r = records();
        let out = answer(&r, &[addr], &query("example.com.", RecordType::A))
            .await
            .unwrap();
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.id, 7);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }
}
