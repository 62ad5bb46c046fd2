//! The DNS proxy on 15053 (spec 7): A/AAAA queries for names of mesh services are answered from the proxy state
//! (VIPs, or endpoint addresses for headless services); every other query goes to the upstream resolvers.
//!
//! Names are tried as Kubernetes would expand them for the client's namespace, exactly, then as wildcards; a name
//! that matched only once a search domain was stripped is answered with a CNAME to the stripped name. Bad packets
//! and queries without exactly one question get FORMERR (or nothing, without even a header); other opcodes
//! NOTIMP; an unknown client SERVFAIL. Over TCP, a frame must arrive, and an answer be taken, within `TCP_IDLE`.

pub mod metrics;
pub mod names;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ambit_core::drain::DrainWatcher;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rand::seq::SliceRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::debug;

use crate::state::{IpFamilies, ProxyState, Service, Workload};
use metrics::{DnsLabels, DnsMetrics};

const TTL: u32 = 30;
const MAX_UDP: usize = 4096;
/// How long a TCP client may take to send a whole query (or stay silent between queries), and to take an answer.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The UDP payload every client accepts (RFC 1035), and the least we assume with EDNS.
const MIN_UDP_PAYLOAD: usize = 512;

#[derive(Clone, Debug)]
pub struct DnsConfig {
    pub cluster_domain: String,
    /// Search domains to strip; `None` = the shared-mode list for the client's namespace
    /// (`<ns>.svc.<cd>`, `svc.<cd>`, `<cd>`).
    pub search_domains: Option<Vec<String>>,
    pub upstreams: Vec<SocketAddr>,
    pub prefered_service_namespace: Option<String>,
    pub ipv6_enabled: bool,
    pub forward_timeout: Duration,
}

impl DnsConfig {
    /// Upstreams (and, for dedicated mode, search domains) from a `resolv.conf`.
    pub fn from_resolv_conf(path: &Path, cluster_domain: &str) -> std::io::Result<DnsConfig> {
        let text = std::fs::read_to_string(path)?;
        let upstreams = ambit_core::dns_forward::nameservers(&text);
        let mut search = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() == Some("search") {
                search = words
                    .map(|w| w.trim_end_matches('.').to_ascii_lowercase())
                    .collect();
            }
        }
        Ok(DnsConfig {
            cluster_domain: cluster_domain.to_owned(),
            search_domains: Some(search),
            upstreams,
            prefered_service_namespace: None,
            ipv6_enabled: true,
            forward_timeout: Duration::from_secs(5),
        })
    }
}

/// Who is asking: the workload the proxy serves (`None` while it is unknown).
pub type ClientLookup = Arc<dyn Fn() -> Option<Arc<Workload>> + Send + Sync>;

#[derive(Clone)]
pub struct DnsProxy {
    state: ProxyState,
    cfg: Arc<DnsConfig>,
    client: ClientLookup,
    metrics: Option<Arc<DnsMetrics>>,
}

impl DnsProxy {
    pub fn new(state: ProxyState, cfg: Arc<DnsConfig>, client: ClientLookup) -> DnsProxy {
        DnsProxy {
            state,
            cfg,
            client,
            metrics: None,
        }
    }

    /// Counts requests and upstream exchanges in `metrics` (shared by every proxy of the process).
    pub fn with_metrics(mut self, metrics: Arc<DnsMetrics>) -> DnsProxy {
        self.metrics = Some(metrics);
        self
    }

    /// Serves UDP and TCP until `drain` fires.
    pub async fn serve(self, udp: UdpSocket, tcp: TcpListener, mut drain: DrainWatcher) {
        let udp = Arc::new(udp);
        let mut buf = vec![0u8; MAX_UDP];
        loop {
            tokio::select! {
                _ = drain.signaled() => return,
                r = udp.recv_from(&mut buf) => {
                    let Ok((n, peer)) = r else { continue };
                    let packet = buf[..n].to_vec();
                    let this = self.clone();
                    let udp = udp.clone();
                    tokio::spawn(async move {
                        if let Some(resp) = this.handle_on(&packet, false).await {
                            let _ = udp.send_to(&resp, peer).await;
                        }
                    });
                }
                r = tcp.accept() => {
                    let Ok((stream, _)) = r else { continue };
                    let this = self.clone();
                    tokio::spawn(async move {
                        let _ = this.serve_tcp(stream).await;
                    });
                }
            }
        }
    }

    /// Length-prefixed messages on one TCP connection, one at a time.
    async fn serve_tcp(&self, mut s: TcpStream) -> std::io::Result<()> {
        loop {
            let read = async {
                let mut len = [0u8; 2];
                s.read_exact(&mut len).await?;
                let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
                s.read_exact(&mut packet).await?;
                Ok::<_, std::io::Error>(packet)
            };
            // Idle or half-sent connections are closed (RFC 7766 asks servers to time them out).
            let Ok(Ok(packet)) = tokio::time::timeout(TCP_IDLE, read).await else {
                return Ok(());
            };
            let Some(resp) = self.handle_on(&packet, true).await else {
                return Ok(());
            };
            let Ok(n) = u16::try_from(resp.len()) else {
                return Ok(());
            };
            // One write (prefix and message together, no small segment for Nagle to hold back), bounded like the
            // reads: a client that stops reading would otherwise block it forever once the socket buffers are full.
            let mut framed = Vec::with_capacity(resp.len() + 2);
            framed.extend_from_slice(&n.to_be_bytes());
            framed.extend_from_slice(&resp);
            if tokio::time::timeout(TCP_IDLE, s.write_all(&framed))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    }

    /// The response to one query packet that came over UDP; `None` when the packet has not even a header.
    pub async fn handle(&self, packet: &[u8]) -> Option<Vec<u8>> {
        self.handle_on(packet, false).await
    }

    /// The response to one query packet that came over TCP (`tcp`) or UDP. UDP answers larger than the client
    /// accepts (512 bytes, or its EDNS payload size) are sent empty with TC set so that it retries over TCP.
    pub async fn handle_on(&self, packet: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let req = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(_) => {
                let id = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
                // A whole header with QR clear and an opcode we do not implement: NOTIMP, whatever the body is
                // (RFC 8906 section 3.1.4: only the header of another opcode need look like a QUERY's).
                if packet.len() >= 12 && packet[2] & 0x80 == 0 {
                    let op = OpCode::from_u8((packet[2] >> 3) & 0x0f);
                    if op != OpCode::Query {
                        return error(id, op, ResponseCode::NotImp);
                    }
                }
                return error(id, OpCode::Query, ResponseCode::FormErr);
            }
        };
        let id = req.metadata.id;
        if req.metadata.message_type != MessageType::Query {
            return error(id, req.metadata.op_code, ResponseCode::FormErr);
        }
        if req.metadata.op_code != OpCode::Query {
            return error(id, req.metadata.op_code, ResponseCode::NotImp);
        }
        // Exactly one question. None is a format error; so are several (RFC 9619: a QUERY with QDCOUNT > 1 is
        // malformed): the header's AA and RCODE could not say which question they are about, so we neither answer
        // the first one locally nor forward the packet (whose other questions the upstream would see).
        let [q] = req.queries.as_slice() else {
            return error(id, OpCode::Query, ResponseCode::FormErr);
        };
        let q = q.clone();
        let limit = if tcp {
            usize::from(u16::MAX)
        } else {
            req.edns
                .as_ref()
                .map_or(MIN_UDP_PAYLOAD, |e| usize::from(e.max_payload()))
                .max(MIN_UDP_PAYLOAD)
        };
        let client = (self.client)();
        let labels = self.metrics.as_ref().map(|m| {
            let l = DnsLabels::new(&q.query_type().to_string(), tcp, client.as_deref());
            m.requests.get_or_create(&l).inc();
            l
        });
        let Some(client) = client else {
            debug!(name = %q.name(), "dns.client unknown; SERVFAIL");
            return error(id, OpCode::Query, ResponseCode::ServFail);
        };
        if matches!(q.query_type(), RecordType::A | RecordType::AAAA)
            && let Some(answer) = self.local(&q.name().to_ascii(), q.query_type(), &client)
        {
            let mut resp = Message::response(id, OpCode::Query);
            resp.metadata.authoritative = true;
            resp.metadata.recursion_desired = req.metadata.recursion_desired;
            resp.metadata.recursion_available = true;
            resp.add_query(q.clone());
            let mut owner = q.name().clone();
            if let Some(target) = answer.cname
                && let Ok(t) = Name::from_ascii(format!("{target}."))
            {
                resp.add_answer(Record::from_rdata(
                    owner.clone(),
                    TTL,
                    RData::CNAME(CNAME(t.clone())),
                ));
                owner = t;
            }
            for ip in answer.ips {
                let data = match ip {
                    IpAddr::V4(v4) => RData::A(A(v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                };
                resp.add_answer(Record::from_rdata(owner.clone(), TTL, data));
            }
            if let Some(edns) = &req.edns {
                let mut e = edns.clone();
                e.set_max_payload(edns.max_payload().max(512));
                resp.set_edns(e);
            }
            return encode(resp, limit);
        }
        self.forward(packet, id, tcp, limit, labels.as_ref()).await
    }

    /// The local answer for `qname`, if a service has that name.
    fn local(&self, qname: &str, qtype: RecordType, client: &Workload) -> Option<Answer> {
        let name = qname.trim_end_matches('.').to_ascii_lowercase();
        let ns = client.namespace.as_str();
        let cd = self.cfg.cluster_domain.as_str();
        let shared_search;
        let search = match &self.cfg.search_domains {
            Some(s) => s.as_slice(),
            None => {
                shared_search = names::shared_search(ns, cd);
                shared_search.as_slice()
            }
        };
        let prefer = self.cfg.prefered_service_namespace.as_deref().unwrap_or(ns);
        for cand in names::candidates(&name, ns, cd, search) {
            for host in names::with_wildcards(&cand.name) {
                let Some(svc) = self.state.service_by_hostname(&host, prefer) else {
                    continue;
                };
                if !self.eligible(&svc) {
                    continue;
                }
                let ips = self.addresses(&svc, qtype, client);
                let cname = (cand.stripped && !host.starts_with("*.")).then(|| cand.name.clone());
                return Some(Answer { ips, cname });
            }
        }
        None
    }

    fn eligible(&self, svc: &Service) -> bool {
        !svc.vips.is_empty()
            || svc
                .hostname
                .ends_with(&format!(".svc.{}", self.cfg.cluster_domain))
    }

    /// VIPs of the requested family on the client's network, or the endpoints' addresses for headless services.
    fn addresses(&self, svc: &Service, qtype: RecordType, client: &Workload) -> Vec<IpAddr> {
        let want_v6 = qtype == RecordType::AAAA;
        let family_ok = match svc.ip_families {
            Some(IpFamilies::Ipv4Only) => !want_v6,
            Some(IpFamilies::Ipv6Only) => want_v6,
            _ => true,
        };
        if !family_ok || (want_v6 && !self.cfg.ipv6_enabled) {
            return Vec::new();
        }
        let fits = |ip: &IpAddr| ip.is_ipv6() == want_v6;
        let mut ips: Vec<IpAddr> = if svc.vips.is_empty() {
            svc.endpoints
                .keys()
                .filter_map(|uid| self.state.workload_by_uid(uid))
                .filter_map(|w| w.workload_ips.iter().copied().find(|ip| fits(ip)))
                .collect()
        } else {
            svc.vips
                .iter()
                .filter(|v| v.network == client.network)
                .map(|v| v.address)
                .filter(|ip| fits(ip))
                .collect()
        };
        ips.shuffle(&mut rand::rng());
        ips
    }

    /// Relays the query to the upstream resolvers in turn; the first answer wins (its rcode, NXDOMAIN included,
    /// goes to the client with AA cleared); SERVFAIL when none answers in time.
    async fn forward(
        &self,
        packet: &[u8],
        id: u16,
        tcp: bool,
        limit: usize,
        labels: Option<&DnsLabels>,
    ) -> Option<Vec<u8>> {
        for up in &self.cfg.upstreams {
            let started = tokio::time::Instant::now();
            let r =
                ambit_core::dns_forward::exchange(*up, packet, id, tcp, self.cfg.forward_timeout)
                    .await;
            if let (Some(m), Some(l)) = (&self.metrics, labels) {
                m.upstream(l, started.elapsed(), r.is_ok());
            }
            match r {
                Ok(mut resp) => {
                    resp.metadata.authoritative = false;
                    return encode(resp, limit);
                }
                Err(e) => debug!(upstream = %up, error = %e, "dns.forward failed"),
            }
        }
        error(id, OpCode::Query, ResponseCode::ServFail)
    }
}

/// `m` on the wire; when that is longer than `limit`, the same header and question with TC set and no records.
fn encode(mut m: Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = m.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    m.answers.clear();
    m.authorities.clear();
    m.additionals.clear();
    m.metadata.truncation = true;
    m.to_vec().ok()
}

struct Answer {
    ips: Vec<IpAddr>,
    /// Answer with a CNAME to this name first (matched after stripping a search domain).
    cname: Option<String>,
}

fn error(id: u16, op: OpCode, code: ResponseCode) -> Option<Vec<u8>> {
    let mut m = Message::error_msg(id, op, code);
    m.metadata.recursion_available = true;
    m.to_vec().ok()
}

#[cfg(test)]
mod tests;
