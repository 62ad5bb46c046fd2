//! Bad HBONE CONNECTs and headers at a running ztunnel's inbound port 15008, over real mTLS with a certificate
//! from the ztunnel's own local CA.
//!
//! - A CONNECT with no `:authority` at all is answered 400 by the HBONE server before any handler runs
//!   (`core/src/hbone/server.rs`); one with an empty `:authority`, or carrying `:path`, is malformed HTTP/2 and h2
//!   resets the stream (`PROTOCOL_ERROR`). The connection serves the next CONNECT. No client library sends these, so a
//!   hand-written HTTP/2 client (frames and HPACK literals, [`RawH2`]) does.
//! - A NUL, CR or LF in a header value is malformed HPACK input to h2, which ends the whole connection with GOAWAY
//!   `PROTOCOL_ERROR` (RFC 9113 lets an endpoint treat that stream error as a connection error): the other stream
//!   of that connection ends with it, other connections are untouched.
//! - The inbound reads `forwarded`'s `host=` (`proxy/inbound.rs`): the destination service of the metrics and the
//!   `originalDst` of the live connection; and `baggage`, for the source labels of a peer xDS does not know only.
//!   `traceparent` and `forwarded: for=` are not read. Garbage, non-UTF-8 and overlong values (under the 64 KiB
//!   header list limit) are served; a known peer's source labels come from xDS (by its IP) whatever its baggage
//!   claims, the principal always from mTLS; the source address is the HBONE peer's — also what the application
//!   sees when the ztunnel spoofs it (root only, a network namespace of its own).
//!
//! One server ztunnel per test on 127.0.<net>.3, nets 131 to 135; the `default/client` workload is 127.0.<net>.2,
//! a client unknown to xDS uses 127.0.<net>.9.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::hbone::{H2Config, H2Stream, HboneClient, PoolKey};
use ambit_core::tls::{ClientTlsStream, TlsBackend, TlsConnector};
use ambit_ztunnel::app::Running;
use ambit_ztunnel::config::{Config, LocalXds};
use http::HeaderValue;
use support::{DirectConnector, WAIT, echo, round_trip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const APP_HOST: &str = "app.default.svc.cluster.local";

fn world(net: u8) -> String {
    format!(
        r#"
workloads:
- uid: cluster1//v1/Pod/default/server
  name: server
  namespace: default
  serviceAccount: server
  clusterId: cluster1
  workloadIps: [127.0.{net}.3]
  protocol: HBONE
  services: {{default/{APP_HOST}: {{80: 8080}}}}
- uid: cluster1//v1/Pod/default/client
  name: client
  namespace: default
  serviceAccount: client
  clusterId: cluster1
  workloadName: client-deploy
  canonicalName: client-app
  canonicalRevision: v1
  workloadIps: [127.0.{net}.2]
  protocol: HBONE
services:
- {{name: app, namespace: default, hostname: {APP_HOST}, vips: [/10.96.{net}.10], ports: {{80: 8080}}}}
"#
    )
}

struct Server {
    zt: Running,
    net: u8,
    ip: IpAddr,
    ca_dir: tempfile::TempDir,
}

impl Server {
    fn hbone(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15008)
    }

    /// `127.0.<net>.<host>`.
    fn addr(&self, host: u8) -> IpAddr {
        format!("127.0.{}.{host}", self.net).parse().unwrap()
    }

    /// The xDS workload `default/client`.
    fn known(&self) -> IpAddr {
        self.addr(2)
    }

    /// An address no workload has.
    fn unknown(&self) -> IpAddr {
        self.addr(9)
    }

    /// An mTLS HBONE client (`default/client`) dialling from `src`.
    fn client(&self, src: IpAddr) -> HboneClient<DirectConnector> {
        let (_, cert) = support::hbone_client(self.ca_dir.path(), &client_id());
        HboneClient::new(
            Arc::new(H2Config::default()),
            DirectConnector {
                cert,
                src: Some(src),
            },
        )
    }

    fn pool_key(&self) -> PoolKey {
        PoolKey {
            src_identity: client_id(),
            dst_identities: vec![server_id()],
            dst: self.hbone(),
            src_ip: "127.0.0.1".parse().unwrap(),
        }
    }

    /// A CONNECT to `target` with `headers`, through `client`; asserts a 200.
    async fn connect(
        &self,
        client: &HboneClient<DirectConnector>,
        target: SocketAddr,
        headers: &[(&'static str, HeaderValue)],
    ) -> H2Stream {
        let mut req = support::connect_request(&target.to_string());
        for (name, value) in headers {
            req.headers_mut().append(*name, value.clone());
        }
        let (stream, resp) = tokio::time::timeout(WAIT, client.connect(self.pool_key(), req))
            .await
            .expect("a CONNECT is answered")
            .unwrap_or_else(|e| panic!("{headers:.80?}: not served: {e}"));
        assert_eq!(resp.status, http::StatusCode::OK);
        stream
    }

    /// The sum of the destination-side `istio_tcp_connections_opened_total` series whose labels include every
    /// `name="value"` of `labels`.
    async fn opened(&self, labels: &[String]) -> u64 {
        let out = support::http_get(self.zt.addresses.stats, "/metrics").await;
        out.lines()
            .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .filter(|l| l.contains("reporter=\"destination\""))
            .filter(|l| labels.iter().all(|want| l.contains(want.as_str())))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
            .sum()
    }
}

fn client_id() -> Identity {
    Identity::new("cluster.local", "default", "client")
}

fn server_id() -> Identity {
    Identity::new("cluster.local", "default", "server")
}

async fn server(net: u8, edit: impl FnOnce(&mut Config)) -> Server {
    let ca_dir = tempfile::tempdir().unwrap();
    let ip: IpAddr = format!("127.0.{net}.3").parse().unwrap();
    let mut cfg = support::pod_config(ip, "server", LocalXds::Inline(world(net)), ca_dir.path());
    cfg.socks5_enabled = false;
    edit(&mut cfg);
    let zt = support::start(cfg).await;
    support::wait_ready(&zt).await;
    Server {
        zt,
        net,
        ip,
        ca_dir,
    }
}

// ----- a hand-written HTTP/2 client -----

const HEADERS: u8 = 0x1;
const DATA: u8 = 0x0;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const PROTOCOL_ERROR: u32 = 0x1;

/// How the server answered one stream.
#[derive(Debug, PartialEq)]
enum Answer {
    Status { status: u16, end_stream: bool },
    Reset(u32),
    GoAway(u32),
    Closed,
}

/// HTTP/2 over core's mTLS client connector, frame by frame: whatever header block the test writes, HPACK
/// literals without indexing (so no table state), and nothing the h2 crate would check first.
struct RawH2 {
    io: ClientTlsStream<TcpStream>,
}

impl RawH2 {
    async fn open(s: &Server) -> RawH2 {
        let (_, cert) = support::hbone_client(s.ca_dir.path(), &client_id());
        let tcp = TcpStream::connect(s.hbone()).await.unwrap();
        let io = TlsConnector::new(cert, TlsBackend::default())
            .unwrap()
            .connect(tcp, &[server_id()])
            .await
            .expect("mTLS with the server's ztunnel");
        let mut raw = RawH2 { io };
        raw.io
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        raw.frame(SETTINGS, 0, 0, &[]).await;
        raw
    }

    async fn frame(&mut self, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = u32::try_from(payload.len()).unwrap();
        assert!(len < 16384, "one frame of at most the default size");
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend([ty, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        self.io.write_all(&f).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// One HEADERS frame (END_HEADERS, not END_STREAM) with `fields` as HPACK literals with literal names.
    async fn headers(&mut self, stream: u32, fields: &[(&str, &[u8])]) {
        let mut block = Vec::new();
        for (name, value) in fields {
            block.push(0);
            hpack_string(&mut block, name.as_bytes());
            hpack_string(&mut block, value);
        }
        self.frame(HEADERS, END_HEADERS, stream, &block).await;
    }

    /// The next frame as (type, flags, stream, payload); `None` once the connection is closed.
    async fn read_frame(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        let mut head = [0u8; 9];
        let read = tokio::time::timeout(WAIT, self.io.read_exact(&mut head))
            .await
            .expect("the server neither sent a frame nor closed");
        read.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        self.io.read_exact(&mut payload).await.ok()?;
        Some((head[3], head[4], stream, payload))
    }

    /// Acknowledges SETTINGS and PING; says whether the frame was one of those (or WINDOW_UPDATE).
    async fn control(&mut self, ty: u8, flags: u8, payload: &[u8]) -> bool {
        match ty {
            SETTINGS if flags & ACK == 0 => self.frame(SETTINGS, ACK, 0, &[]).await,
            PING if flags & ACK == 0 => self.frame(PING, ACK, 0, payload).await,
            SETTINGS | PING | 0x8 => {}
            _ => return false,
        }
        true
    }

    /// The server's answer to `stream`: its response status, a reset, a GOAWAY, or the connection's end.
    async fn answer(&mut self, stream: u32) -> Answer {
        loop {
            let Some((ty, flags, id, payload)) = self.read_frame().await else {
                return Answer::Closed;
            };
            if self.control(ty, flags, &payload).await {
                continue;
            }
            match ty {
                GOAWAY => {
                    return Answer::GoAway(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
                }
                RST_STREAM if id == stream => {
                    return Answer::Reset(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                }
                HEADERS if id == stream => {
                    return Answer::Status {
                        status: status_of(&payload),
                        end_stream: flags & END_STREAM != 0,
                    };
                }
                // An earlier stream the server answered with END_STREAM while the client's side was still open
                // is then reset (`NO_ERROR`, RFC 9113 §8.1): it may arrive after that answer, at any time.
                RST_STREAM if id < stream => {}
                _ => panic!("stream {stream}: unexpected frame type {ty} on stream {id}"),
            }
        }
    }

    /// Sends `payload` on `stream` and reads it back from the echo application behind it.
    async fn echo(&mut self, stream: u32, payload: &[u8]) {
        self.frame(DATA, 0, stream, payload).await;
        let mut back = Vec::new();
        while back.len() < payload.len() {
            let (ty, flags, id, data) = self.read_frame().await.expect("echo: connection closed");
            if self.control(ty, flags, &data).await {
                continue;
            }
            assert_eq!((ty, id), (DATA, stream), "echo: unexpected frame");
            back.extend(data);
        }
        assert_eq!(back, payload);
    }

    /// After a GOAWAY: the connection closes (any frame before the end is a control frame, or the end of an
    /// earlier stream).
    async fn closed(&mut self) {
        while let Some((ty, flags, id, payload)) = self.read_frame().await {
            if !self.control(ty, flags, &payload).await {
                eprintln!("before the close: frame type {ty} on stream {id}");
            }
        }
    }
}

/// A header field as [`RawH2::headers`] sends it: a name and the raw bytes of its value.
type Field<'a> = (&'a str, &'a [u8]);

/// An HPACK string literal, not Huffman-coded: the length as a 7-bit prefix integer, then the bytes.
fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// The `:status` of a response header block as h2 encodes it: the first field, an indexed entry of the static
/// table (8 to 14: 200, 204, 206, 304, 400, 404, 500); any other status is reported raw.
fn status_of(block: &[u8]) -> u16 {
    let first = block
        .iter()
        .copied()
        .find(|b| b & 0xe0 != 0x20) // skip dynamic table size updates
        .expect("an empty header block");
    match first {
        0x88 => 200,
        0x89 => 204,
        0x8a => 206,
        0x8b => 304,
        0x8c => 400,
        0x8d => 404,
        0x8e => 500,
        _ => panic!("a status that is not in the static table: {block:02x?}"),
    }
}

// ----- the tests -----

/// On one HTTP/2 connection: a CONNECT with no `:authority` gets 400 (with END_STREAM); one with an empty
/// `:authority` and one with `:path` are reset (`PROTOCOL_ERROR`); then a valid CONNECT on the same connection
/// gets 200 and carries data, and so does another after it. None of the refused ones reached the inbound handler:
/// the metrics count exactly the two served streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_without_an_authority_gets_400_and_the_connection_serves_the_next_connect() {
    let s = server(131, |_| {}).await;
    let target = echo(SocketAddr::new(s.ip, 0)).await;
    let authority = target.to_string();
    let mut h2 = RawH2::open(&s).await;
    let bad: [(&str, &[Field<'_>], Answer); 3] = [
        (
            "no :authority",
            &[(":method", b"CONNECT")],
            Answer::Status {
                status: 400,
                end_stream: true,
            },
        ),
        (
            "an empty :authority",
            &[(":method", b"CONNECT"), (":authority", b"")],
            // h2 itself finds an empty authority malformed (it does not parse as a URI authority).
            Answer::Reset(PROTOCOL_ERROR),
        ),
        (
            ":path on a CONNECT",
            &[
                (":method", b"CONNECT"),
                (":authority", authority.as_bytes()),
                (":path", b"/"),
            ],
            Answer::Reset(PROTOCOL_ERROR),
        ),
    ];
    let mut id = 1;
    for (what, fields, want) in bad {
        h2.headers(id, fields).await;
        assert_eq!(h2.answer(id).await, want, "{what}");
        id += 2;
    }
    for payload in [&b"served after the refusals"[..], b"and the next one"] {
        h2.headers(
            id,
            &[
                (":method", b"CONNECT"),
                (":authority", authority.as_bytes()),
            ],
        )
        .await;
        assert_eq!(
            h2.answer(id).await,
            Answer::Status {
                status: 200,
                end_stream: false
            }
        );
        h2.echo(id, payload).await;
        id += 2;
    }
    let principal = "source_principal=\"spiffe://cluster.local/ns/default/sa/client\"".to_owned();
    assert_eq!(s.opened(&[principal]).await, 2, "only the valid CONNECTs");
    // Another connection is served too.
    let client = s.client(s.known());
    let mut st = s.connect(&client, target, &[]).await;
    round_trip(&mut st, b"a new connection").await;
    s.zt.drain().await;
}

/// A NUL, CR or LF in a header value of a CONNECT (`baggage`, `forwarded`, `traceparent`): h2 ends that HTTP/2
/// connection with GOAWAY `PROTOCOL_ERROR`, and the stream it was already carrying ends with it. A stream of
/// another connection, open throughout, keeps working, and new connections are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_byte_in_a_header_value_ends_only_that_connection_with_goaway() {
    let s = server(133, |_| {}).await;
    let target = echo(SocketAddr::new(s.ip, 0)).await;
    let authority = target.to_string();
    let other = s.client(s.known());
    let mut bystander = s.connect(&other, target, &[]).await;
    round_trip(&mut bystander, b"before").await;
    for (name, value) in [
        ("baggage", &b"k8s.namespace.name=a\0b"[..]),
        ("forwarded", b"for=\"127.0.0.1:1\"\r\nhost=x"),
        ("traceparent", b"00-\n-00"),
    ] {
        let mut h2 = RawH2::open(&s).await;
        let valid = [
            (":method", &b"CONNECT"[..]),
            (":authority", authority.as_bytes()),
        ];
        h2.headers(1, &valid).await;
        assert!(
            matches!(h2.answer(1).await, Answer::Status { status: 200, .. }),
            "{name}"
        );
        h2.echo(1, name.as_bytes()).await;
        let mut bad = valid.to_vec();
        bad.push((name, value));
        h2.headers(3, &bad).await;
        assert_eq!(h2.answer(3).await, Answer::GoAway(PROTOCOL_ERROR), "{name}");
        h2.closed().await;
        round_trip(&mut bystander, name.as_bytes()).await;
    }
    let fresh = s.client(s.known());
    let mut st = s.connect(&fresh, target, &[]).await;
    round_trip(&mut st, b"a new connection").await;
    round_trip(&mut bystander, b"after").await;
    s.zt.drain().await;
}

fn value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).unwrap()
}

/// One CONNECT of the table in `bad_headers_are_served_and_recorded_from_xds_and_mtls_only`.
struct Case {
    what: &'static str,
    headers: Vec<(&'static str, HeaderValue)>,
    /// From the xDS workload `default/client` (else from an address no workload has).
    from_known: bool,
    /// The `destination_service` label and the live connection's `originalDst`.
    service: Option<&'static str>,
    original_dst: Option<String>,
}

fn cases() -> Vec<Case> {
    let long_host = "a".repeat(40 * 1024);
    let case = |what, headers: Vec<(&'static str, HeaderValue)>| Case {
        what,
        headers,
        from_known: false,
        service: None,
        original_dst: None,
    };
    vec![
        case(
            "garbage baggage",
            vec![(
                "baggage",
                value(b";;;,,,===,=,junk,k8s.namespace.name,;x=1"),
            )],
        ),
        case(
            "non-UTF-8 baggage",
            vec![(
                "baggage",
                value(b"k8s.namespace.name=\xff\xfe,service.name=\xc3\x28"),
            )],
        ),
        case(
            "a 48 KiB baggage member",
            vec![("baggage", value(format!("x={}", "b".repeat(48 * 1024)).as_bytes()))],
        ),
        Case {
            from_known: true,
            ..case(
                "baggage claiming another workload, from a workload xDS knows",
                vec![(
                    "baggage",
                    value(b"k8s.cluster.name=other,k8s.namespace.name=kube-system,k8s.deployment.name=admin,service.name=evil,service.version=v666"),
                )],
            )
        },
        case(
            "forwarded: for=notanip",
            vec![("forwarded", value(b"for=notanip"))],
        ),
        Case {
            service: Some(APP_HOST),
            original_dst: Some(APP_HOST.into()),
            ..case(
                "forwarded naming another client and a known service (the control)",
                vec![(
                    "forwarded",
                    value(format!("for=\"10.9.9.9:1\";host={APP_HOST}").as_bytes()),
                )],
            )
        },
        Case {
            original_dst: Some("nope.default.svc.cluster.local".into()),
            ..case(
                "forwarded: host= of no service",
                vec![("forwarded", value(b"host=nope.default.svc.cluster.local"))],
            )
        },
        case(
            "non-UTF-8 forwarded naming a known service",
            vec![(
                "forwarded",
                value(&[format!("for=\"127.0.0.1:1\";host={APP_HOST};x=").as_bytes(), b"\xff"].concat()),
            )],
        ),
        Case {
            original_dst: Some(long_host.clone()),
            ..case(
                "forwarded: a 40 KiB host=",
                vec![("forwarded", value(format!("host={long_host}").as_bytes()))],
            )
        },
        case(
            "forwarded: an empty host=",
            vec![("forwarded", value(b"for=\"127.0.0.1:1\";host=\"\""))],
        ),
        case(
            "traceparent: garbage",
            vec![("traceparent", value(b"garbage"))],
        ),
        case(
            "traceparent: version ff, non-hex ids, all-zero trace id",
            vec![
                ("traceparent", value(b"ff-zzzz-yyyy-01")),
                (
                    "traceparent",
                    value(b"00-00000000000000000000000000000000-0000000000000000-00"),
                ),
            ],
        ),
        case(
            "traceparent: 30 KiB",
            vec![("traceparent", value(format!("00-{}", "f".repeat(30 * 1024)).as_bytes()))],
        ),
        case(
            "all three bad at once, each twice",
            vec![
                ("baggage", value(b"=")),
                ("baggage", value(b"\xff")),
                ("forwarded", value(b"for=[::1")),
                ("forwarded", value(format!("host={APP_HOST}").as_bytes())),
                ("traceparent", value(b"-")),
                ("traceparent", value(b"00--")),
            ],
        ),
    ]
}

/// Bad `baggage`, `forwarded` and `traceparent` values on real CONNECTs (garbage, non-UTF-8, overlong, repeated,
/// claims of another workload or client) are all served. What the ztunnel records of each stream: the source
/// labels from xDS by the peer's IP — never from `baggage` for a peer xDS knows; an unknown peer's unreadable
/// baggage gives `unknown` — and the principal from mTLS; the
/// destination service and `originalDst` from a UTF-8 `forwarded` header's first `host=` only (`unknown`/`null`
/// otherwise); the source of the live connection is the HBONE peer's address, never `forwarded: for=`. Nothing
/// is left registered afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_baggage_forwarded_and_traceparent_are_served_and_recorded_from_xds_and_mtls_only() {
    let s = server(132, |_| {}).await;
    let target = echo(SocketAddr::new(s.ip, 0)).await;
    let live = s.zt.connections.clone().unwrap();
    let known = s.client(s.known());
    let unknown = s.client(s.unknown());
    for c in cases() {
        let what = c.what;
        let (client, src) = if c.from_known {
            (&known, s.known())
        } else {
            (&unknown, s.unknown())
        };
        let source: &[(&str, &str)] = if c.from_known {
            &[
                ("source_workload", "client-deploy"),
                ("source_workload_namespace", "default"),
                ("source_canonical_service", "client-app"),
                ("source_cluster", "cluster1"),
            ]
        } else {
            &[
                ("source_workload", "unknown"),
                ("source_workload_namespace", "unknown"),
                ("source_canonical_service", "unknown"),
                ("source_cluster", "unknown"),
            ]
        };
        let mut labels: Vec<String> = source.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        labels.push("source_principal=\"spiffe://cluster.local/ns/default/sa/client\"".into());
        labels.push(format!(
            "destination_service=\"{}\"",
            c.service.unwrap_or("unknown")
        ));
        let before = s.opened(&labels).await;

        let mut st = s.connect(client, target, &c.headers).await;
        round_trip(&mut st, what.as_bytes()).await;
        let d = live.dump();
        assert_eq!(d.inbound.len(), 1, "{what}: {d:.300?}");
        let entry = &d.inbound[0];
        assert_eq!(entry.src.ip(), src, "{what}: the source is the HBONE peer");
        assert_eq!(entry.actual_dst, target, "{what}");
        assert_eq!(
            entry.original_dst.as_deref(),
            c.original_dst.as_deref(),
            "{what}"
        );
        drop(st);
        assert_eq!(
            s.opened(&labels).await,
            before + 1,
            "{what}: one more stream opened with {labels:?}"
        );
        let deadline = tokio::time::Instant::now() + WAIT;
        while !live.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: the stream is still registered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut st = s.connect(&known, target, &[]).await;
    round_trip(&mut st, b"still served").await;
    s.zt.drain().await;
}

/// With the source spoofed (`ENABLE_ORIG_SRC`), the application sees the HBONE peer's IP whatever
/// `forwarded: for=` says: none, not an IP, another IPv4 or IPv6 client, or a local address the ztunnel could
/// spoof. Needs root (`IP_TRANSPARENT`): a network namespace of its own.
#[test]
fn forwarded_for_does_not_change_the_source_the_application_sees() {
    support::as_root_in_own_netns(
        "forwarded_for_does_not_change_the_source_the_application_sees",
        || async {
            let s = server(134, |cfg| cfg.enable_orig_src = Some(true)).await;
            let l = tokio::net::TcpListener::bind(SocketAddr::new(s.ip, 0))
                .await
                .unwrap();
            let target = l.local_addr().unwrap();
            let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Ok((mut c, peer)) = l.accept().await {
                    let _ = tx.send(peer);
                    tokio::spawn(async move {
                        let (mut r, mut w) = c.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
            });
            let client = s.client(s.known());
            for fwd in [
                None,
                Some("for=notanip"),
                Some("for=\"10.9.9.9:1\""),
                Some("for=\"[fd00::1]:80\""),
                Some("for=\"127.0.134.7:1\";host=app.default.svc.cluster.local"),
            ] {
                let headers: Vec<_> = fwd
                    .map(|f| ("forwarded", value(f.as_bytes())))
                    .into_iter()
                    .collect();
                let mut st = s.connect(&client, target, &headers).await;
                round_trip(&mut st, b"spoofed").await;
                let peer = tokio::time::timeout(WAIT, seen.recv())
                    .await
                    .expect("the application was dialled")
                    .unwrap();
                assert_eq!(peer.ip(), s.known(), "{fwd:?}");
            }
            s.zt.drain().await;
        },
    );
}

/// A peer whose workload xDS does not know (another cluster's) is described in the metrics by its `baggage`, as
/// upstream ztunnel's inbound does (before this test the labels were all `unknown`); its principal is still the
/// mTLS identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baggage_of_a_peer_unknown_to_xds_names_it_in_the_metrics() {
    let s = server(135, |_| {}).await;
    let target = echo(SocketAddr::new(s.ip, 0)).await;
    let client = s.client(s.unknown());
    let baggage = value(b"k8s.cluster.name=cluster2,k8s.namespace.name=remote-ns,k8s.deployment.name=remote-app,service.name=remote-svc,service.version=v2");
    let mut st = s.connect(&client, target, &[("baggage", baggage)]).await;
    round_trip(&mut st, b"from another cluster").await;
    let labels: Vec<String> = [
        ("source_workload", "remote-app"),
        ("source_workload_namespace", "remote-ns"),
        ("source_canonical_service", "remote-svc"),
        ("source_canonical_revision", "v2"),
        ("source_cluster", "cluster2"),
    ]
    .iter()
    .map(|(k, v)| format!("{k}=\"{v}\""))
    .collect();
    let all = support::http_get(s.zt.addresses.stats, "/metrics").await;
    let opened: Vec<_> = all
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .collect();
    assert_eq!(s.opened(&labels).await, 1, "{opened:#?}");
    s.zt.drain().await;
}
