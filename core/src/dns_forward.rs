//! Relaying DNS queries to upstream resolvers (spec 7): UDP first, TCP when the client asked over TCP or the UDP
//! answer came back truncated. Every exchange is bounded by one timeout, and a UDP answer is taken only from the
//! upstream asked (connected socket) with the query's id. Used by ztunnel's DNS proxy and the local mesh's cluster
//! DNS.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Largest DNS message over UDP that we accept from an upstream.
const MAX_UDP: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("upstream {0} timed out")]
    Timeout(SocketAddr),
    #[error("upstream {0}: {1}")]
    Io(SocketAddr, #[source] io::Error),
    #[error("upstream {0} sent an unparsable answer")]
    Malformed(SocketAddr),
    #[error("upstream {0} answered a question that was not asked")]
    Mismatched(SocketAddr),
}

/// The upstream's answer to `packet` (query id `id`), over TCP when `tcp`, else UDP with a TCP retry when the
/// answer is truncated. An answer is taken only when it is a response with the query's id and echoes its
/// question section (names compared case-insensitively, as RFC 4343 has it); anything else is an error, so a
/// confused or spoofing upstream cannot hand a client records for a name it did not ask about.
pub async fn exchange(
    up: SocketAddr,
    packet: &[u8],
    id: u16,
    tcp: bool,
    timeout: Duration,
) -> Result<Message, ForwardError> {
    let raw = if tcp {
        bounded(up, timeout, over_tcp(up, packet)).await?
    } else {
        let raw = bounded(up, timeout, over_udp(up, packet, id)).await?;
        match Message::from_vec(&raw) {
            Ok(m) if m.metadata.truncation => bounded(up, timeout, over_tcp(up, packet)).await?,
            _ => raw,
        }
    };
    let msg = Message::from_vec(&raw).map_err(|_| ForwardError::Malformed(up))?;
    if msg.metadata.id != id {
        return Err(ForwardError::Malformed(up));
    }
    if !answers(&msg, packet) {
        return Err(ForwardError::Mismatched(up));
    }
    Ok(msg)
}

/// Whether `msg` is a response to the query in `packet`: QR set, the same questions (name, type, class).
fn answers(msg: &Message, packet: &[u8]) -> bool {
    use hickory_proto::op::MessageType;
    let Ok(query) = Message::from_vec(packet) else {
        return false;
    };
    msg.metadata.message_type == MessageType::Response && msg.queries == query.queries
}

async fn bounded(
    up: SocketAddr,
    timeout: Duration,
    f: impl Future<Output = io::Result<Vec<u8>>>,
) -> Result<Vec<u8>, ForwardError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ForwardError::Io(up, e)),
        Err(_) => Err(ForwardError::Timeout(up)),
    }
}

async fn over_udp(up: SocketAddr, packet: &[u8], id: u16) -> io::Result<Vec<u8>> {
    let any: IpAddr = if up.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u16; 8])
    };
    let s = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    // Connected: datagrams from anyone else are dropped by the kernel.
    s.connect(up).await?;
    s.send(packet).await?;
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let n = s.recv(&mut buf).await?;
        // Ignore strays (late answers to someone else's id) and keep waiting for ours.
        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn over_tcp(up: SocketAddr, packet: &[u8]) -> io::Result<Vec<u8>> {
    let len = u16::try_from(packet.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too large"))?;
    let mut s = TcpStream::connect(up).await?;
    let _ = s.set_nodelay(true);
    let mut framed = Vec::with_capacity(packet.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(packet);
    s.write_all(&framed).await?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

/// The `nameserver` lines of a `resolv.conf`, as port-53 addresses (unparsable ones skipped).
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{MessageType, Query};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn query(name: &str) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 7;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    /// An upstream that answers every datagram with `reply(query)`.
    async fn upstream(reply: fn(Message) -> Message) -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let q = Message::from_vec(&buf[..n]).unwrap();
                let _ = s.send_to(&reply(q).to_vec().unwrap(), from).await;
            }
        });
        addr
    }

    async fn ask(reply: fn(Message) -> Message, name: &str) -> Result<Message, ForwardError> {
        let up = upstream(reply).await;
        exchange(up, &query(name), 7, false, Duration::from_secs(2)).await
    }

    fn as_response(mut m: Message) -> Message {
        m.metadata.message_type = MessageType::Response;
        m
    }

    #[tokio::test]
    async fn only_an_answer_to_the_question_asked_is_taken() {
        assert!(ask(as_response, "svc.example.").await.is_ok());
        // Names compare case-insensitively (a resolver may echo 0x20-randomised case differently).
        let upper = |m: Message| {
            let mut m = as_response(m);
            m.queries[0].name = Name::from_ascii("SVC.Example.").unwrap();
            m
        };
        assert!(ask(upper, "svc.example.").await.is_ok());

        let other_name = |m: Message| {
            let mut m = as_response(m);
            m.queries[0].name = Name::from_ascii("evil.example.").unwrap();
            m
        };
        let other_type = |m: Message| {
            let mut m = as_response(m);
            m.queries[0].query_type = RecordType::AAAA;
            m
        };
        let no_question = |m: Message| {
            let mut m = as_response(m);
            m.queries.clear();
            m
        };
        // QR clear: the query itself reflected back is not an answer.
        let reflected = |m: Message| m;
        for (what, reply) in [
            ("another name", other_name as fn(Message) -> Message),
            ("another type", other_type),
            ("no question", no_question),
            ("QR clear", reflected),
        ] {
            match ask(reply, "svc.example.").await {
                Err(ForwardError::Mismatched(_)) => {}
                other => panic!("{what}: want Mismatched, got {other:?}"),
            }
        }
    }

    #[test]
    fn nameservers_of_a_resolv_conf() {
        let text = "# comment\nnameserver 10.0.0.1\nsearch a.b\nnameserver  fd00::53 \nnameserver bogus\n\
                    nameserverx 1.1.1.1\n";
        assert_eq!(
            nameservers(text),
            vec![
                "10.0.0.1:53".parse::<SocketAddr>().unwrap(),
                "[fd00::53]:53".parse().unwrap()
            ]
        );
    }
}
