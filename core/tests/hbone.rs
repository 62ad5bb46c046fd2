//! HBONE client and server over plain loopback TCP (TLS is tested on its own; HBONE is generic over transport).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::drain;
use ambit_core::hbone::{self, Connect, H2Config, HboneClient, HboneError, PoolKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Counts the transports it opens.
#[derive(Clone, Default)]
struct Tcp {
    dials: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Connect for Tcp {
    type Io = TcpStream;
    async fn connect(&self, key: &PoolKey) -> Result<TcpStream, HboneError> {
        self.dials.fetch_add(1, Ordering::SeqCst);
        // Slow enough that concurrent first uses overlap.
        tokio::time::sleep(Duration::from_millis(20)).await;
        TcpStream::connect(key.dst)
            .await
            .map_err(|e| HboneError::Transport(e.to_string()))
    }
}

enum Mode {
    /// Accept every CONNECT and echo the bytes back.
    Echo,
    /// Reject every CONNECT with this status.
    Reject(http::StatusCode),
    /// Accept, read everything until EOF, then answer with the byte count and close.
    CountThenReply,
}

/// An HBONE server on loopback; returns its address and the drain trigger.
async fn server(cfg: H2Config, mode: Mode) -> (SocketAddr, drain::DrainTrigger) {
    let (addr, trigger, _) = counting_server(cfg, mode).await;
    (addr, trigger)
}

/// [`server`], also counting the HBONE connections it has open.
async fn counting_server(
    cfg: H2Config,
    mode: Mode,
) -> (SocketAddr, drain::DrainTrigger, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (trigger, watcher) = drain::new();
    let cfg = Arc::new(cfg);
    let mode = Arc::new(mode);
    let live = Arc::new(AtomicUsize::new(0));
    let open = live.clone();
    tokio::spawn(async move {
        loop {
            let mut w = watcher.clone();
            let (s, _) = tokio::select! {
                a = l.accept() => a.unwrap(),
                _ = w.signaled() => return,
            };
            let mode = mode.clone();
            let open = open.clone();
            open.fetch_add(1, Ordering::SeqCst);
            let conn = hbone::serve(s, cfg.clone(), watcher.clone(), move |_parts, responder| {
                let mode = mode.clone();
                async move {
                    match &*mode {
                        Mode::Reject(status) => responder.reject(*status),
                        Mode::Echo => {
                            let mut s = responder.accept(http::HeaderMap::new()).unwrap();
                            let (mut r, mut w) = tokio::io::split(&mut s);
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                            let _ = w.shutdown().await;
                        }
                        Mode::CountThenReply => {
                            let mut s = responder.accept(http::HeaderMap::new()).unwrap();
                            let mut n = 0u64;
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                let r = s.read(&mut buf).await.unwrap();
                                if r == 0 {
                                    break;
                                }
                                n += r as u64;
                            }
                            s.write_all(format!("{n}").as_bytes()).await.unwrap();
                            s.shutdown().await.unwrap();
                        }
                    }
                }
            });
            tokio::spawn(async move {
                let _ = conn.await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, trigger, live)
}

fn key(dst: SocketAddr, sa: &str) -> PoolKey {
    PoolKey {
        src_identity: Identity::new("cluster.local", "default", sa),
        dst_identities: vec![Identity::new("cluster.local", "default", "server")],
        dst,
        src_ip: "127.0.0.1".parse().unwrap(),
    }
}

fn connect_req(authority: &str) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .body(())
        .unwrap()
}

/// A socket pair standing in for the application's connection.
async fn socket_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

#[tokio::test]
async fn echo_round_trip_and_large_transfer_counts() {
    let (addr, _t) = server(H2Config::default(), Mode::Echo).await;
    let client = HboneClient::new(Arc::new(H2Config::default()), Tcp::default());
    let (stream, resp) = client
        .connect(key(addr, "a"), connect_req("10.0.0.1:80"))
        .await
        .unwrap();
    assert_eq!(resp.status, http::StatusCode::OK);
    let (app, mut proxy_side) = socket_pair().await;
    let copy =
        tokio::spawn(async move { hbone::copy_bidirectional(stream, &mut proxy_side).await });
    const N: usize = 64 * 1024 * 1024;
    let writer = tokio::spawn(async move {
        let chunk = vec![0xabu8; 1024 * 1024];
        let (mut r, mut w) = app.into_split();
        let reader = tokio::spawn(async move {
            let mut total = 0usize;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = r.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                assert!(buf[..n].iter().all(|b| *b == 0xab));
                total += n;
            }
            total
        });
        for _ in 0..N / chunk.len() {
            w.write_all(&chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
        reader.await.unwrap()
    });
    let echoed = writer.await.unwrap();
    let counts = copy.await.unwrap().unwrap();
    assert_eq!(echoed, N);
    assert_eq!(counts.to_h2, N as u64);
    assert_eq!(counts.from_h2, N as u64);
}

#[tokio::test]
async fn half_close_lets_the_reply_through() {
    let (addr, _t) = server(H2Config::default(), Mode::CountThenReply).await;
    let client = HboneClient::new(Arc::new(H2Config::default()), Tcp::default());
    let (stream, _) = client
        .connect(key(addr, "a"), connect_req("10.0.0.1:80"))
        .await
        .unwrap();
    let (mut app, mut proxy_side) = socket_pair().await;
    let copy =
        tokio::spawn(async move { hbone::copy_bidirectional(stream, &mut proxy_side).await });
    app.write_all(&[1u8; 12345]).await.unwrap();
    app.shutdown().await.unwrap(); // our FIN becomes END_STREAM; the server still answers
    let mut reply = String::new();
    app.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, "12345");
    let counts = copy.await.unwrap().unwrap();
    assert_eq!((counts.to_h2, counts.from_h2), (12345, 5));
}

#[tokio::test]
async fn rejection_status_reaches_the_client() {
    let (addr, _t) = server(
        H2Config::default(),
        Mode::Reject(http::StatusCode::UNAUTHORIZED),
    )
    .await;
    let client = HboneClient::new(Arc::new(H2Config::default()), Tcp::default());
    let r = client
        .connect(key(addr, "a"), connect_req("10.0.0.1:80"))
        .await;
    assert!(matches!(r, Err(HboneError::Status(s)) if s == http::StatusCode::UNAUTHORIZED));
}

/// Sends a raw request on a fresh h2 connection and returns the status.
async fn raw_status(
    addr: SocketAddr,
    req: http::Request<()>,
) -> Result<http::StatusCode, h2::Error> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await?;
    tokio::spawn(conn);
    let mut send = send.ready().await?;
    let (resp, _stream) = send.send_request(req, false)?;
    Ok(resp.await?.status())
}

#[tokio::test]
async fn bad_requests_get_400_and_big_headers_are_refused() {
    let (addr, _t) = server(H2Config::default(), Mode::Echo).await;
    let get = http::Request::builder()
        .method(http::Method::GET)
        .uri("http://10.0.0.1:80/")
        .body(())
        .unwrap();
    assert_eq!(
        raw_status(addr, get).await.unwrap(),
        http::StatusCode::BAD_REQUEST
    );
    let no_port = connect_req("some-host");
    assert_eq!(
        raw_status(addr, no_port).await.unwrap(),
        http::StatusCode::BAD_REQUEST
    );
    let ok = connect_req("10.0.0.1:80");
    assert_eq!(raw_status(addr, ok).await.unwrap(), http::StatusCode::OK);
    // A header list over the server's 64 KiB limit never reaches the handler.
    let mut big = connect_req("10.0.0.1:80");
    big.headers_mut().insert(
        "x-big",
        http::HeaderValue::from_str(&"a".repeat(100 * 1024)).unwrap(),
    );
    assert!(!matches!(raw_status(addr, big).await, Ok(s) if s == http::StatusCode::OK));
}

#[tokio::test]
async fn pool_shares_connections_per_key_and_opens_one_at_a_time() {
    let (addr, _t) = server(H2Config::default(), Mode::Echo).await;
    let tcp = Tcp::default();
    let client = HboneClient::new(Arc::new(H2Config::default()), tcp.clone());
    // Ten concurrent first uses of one key: exactly one connection is made.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.connect(key(addr, "a"), connect_req("10.0.0.1:80"))
                .await
                .map(|s| s.0)
        }));
    }
    let mut streams = Vec::new();
    for t in tasks {
        streams.push(t.await.unwrap().unwrap());
    }
    assert_eq!(tcp.dials.load(Ordering::SeqCst), 1);
    drop(streams);
    // Sequential reuse.
    for _ in 0..5 {
        let (s, _) = client
            .connect(key(addr, "a"), connect_req("10.0.0.1:80"))
            .await
            .unwrap();
        drop(s);
    }
    assert_eq!(tcp.dials.load(Ordering::SeqCst), 1);
    // Another key (another source identity) gets its own connection.
    let (_s, _) = client
        .connect(key(addr, "b"), connect_req("10.0.0.1:80"))
        .await
        .unwrap();
    assert_eq!(tcp.dials.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn stream_cap_opens_another_connection() {
    let (addr, _t) = server(H2Config::default(), Mode::Echo).await;
    let tcp = Tcp::default();
    let cfg = H2Config {
        pool_max_streams_per_conn: 2,
        ..H2Config::default()
    };
    let client = HboneClient::new(Arc::new(cfg), tcp.clone());
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(
            client
                .connect(key(addr, "a"), connect_req("10.0.0.1:80"))
                .await
                .unwrap(),
        );
    }
    assert_eq!(tcp.dials.load(Ordering::SeqCst), 3);
    assert_eq!(client.connections(), 3);
}

/// Polls `cond` until it holds or 10 s pass; returns whether it held.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

#[tokio::test]
async fn a_bursts_idle_connections_are_released_without_another_dial() {
    let (addr, _t, live) = counting_server(H2Config::default(), Mode::Echo).await;
    let tcp = Tcp::default();
    let cfg = H2Config {
        pool_max_streams_per_conn: 2,
        pool_surplus_idle_timeout: Duration::from_millis(100),
        pool_idle_timeout: Duration::from_secs(4),
        ..H2Config::default()
    };
    let client = HboneClient::new(Arc::new(cfg), tcp.clone());
    // A burst of six streams takes three connections.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(
            client
                .connect(key(addr, "a"), connect_req("10.0.0.1:80"))
                .await
                .unwrap(),
        );
    }
    assert_eq!(tcp.dials.load(Ordering::SeqCst), 3);
    assert!(eventually(|| live.load(Ordering::SeqCst) == 3).await);
    // While one stream is open its connection is busy: every idle one is surplus, so two go and the busy one stays.
    let busy = held.pop().unwrap();
    held.clear();
    assert!(
        eventually(|| live.load(Ordering::SeqCst) == 1).await,
        "the burst's idle connections were closed: {} left open at the server",
        live.load(Ordering::SeqCst)
    );
    assert_eq!(client.connections(), 1);
    // The burst over, the key keeps its one spare for `pool_idle_timeout`, and it serves the next stream.
    drop(busy);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        client.connections(),
        1,
        "the spare outlives the surplus timeout"
    );
    assert_eq!(live.load(Ordering::SeqCst), 1);
    let again = client
        .connect(key(addr, "a"), connect_req("10.0.0.1:80"))
        .await
        .unwrap();
    assert_eq!(tcp.dials.load(Ordering::SeqCst), 3, "the spare was reused");
    drop(again);
    // Then the spare goes too, with no dial to sweep the pool: the transport is closed at the server.
    assert!(
        eventually(|| live.load(Ordering::SeqCst) == 0).await,
        "the spare was released after pool_idle_timeout"
    );
    assert_eq!(client.connections(), 0);
}

#[tokio::test]
async fn broken_connection_is_replaced() {
    let (addr, trigger) = server(H2Config::default(), Mode::Echo).await;
    let tcp = Tcp::default();
    let client = HboneClient::new(Arc::new(H2Config::default()), tcp.clone());
    let (s, _) = client
        .connect(key(addr, "a"), connect_req("10.0.0.1:80"))
        .await
        .unwrap();
    drop(s);
    // Drain the server: it sends GOAWAY and stops accepting; then start a new one on another port.
    assert!(
        tokio::time::timeout(
            Duration::from_secs(5),
            trigger.drain(Duration::from_secs(1))
        )
        .await
        .is_ok()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        client.connections(),
        0,
        "the GOAWAY'd connection is no longer offered"
    );
    let (addr2, _t2) = server(H2Config::default(), Mode::Echo).await;
    let (_s, _) = client
        .connect(key(addr2, "a"), connect_req("10.0.0.1:80"))
        .await
        .unwrap();
    assert_eq!(tcp.dials.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn drain_lets_open_streams_finish() {
    let (addr, trigger) = server(H2Config::default(), Mode::CountThenReply).await;
    let client = HboneClient::new(Arc::new(H2Config::default()), Tcp::default());
    let (stream, _) = client
        .connect(key(addr, "a"), connect_req("10.0.0.1:80"))
        .await
        .unwrap();
    let (mut app, mut proxy_side) = socket_pair().await;
    let copy =
        tokio::spawn(async move { hbone::copy_bidirectional(stream, &mut proxy_side).await });
    let drained = tokio::spawn(trigger.drain(Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The stream opened before the drain still works to the end.
    app.write_all(b"abc").await.unwrap();
    app.shutdown().await.unwrap();
    let mut reply = String::new();
    app.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, "3");
    copy.await.unwrap().unwrap();
    assert!(
        drained.await.unwrap(),
        "graceful drain finished before the deadline"
    );
}

/// An echo server whose every TCP connection has its own drain trigger (as two processes behind one port, the
/// old one draining during a restart): returns the address and the triggers, in accept order.
async fn per_connection_server() -> (SocketAddr, Arc<std::sync::Mutex<Vec<drain::DrainTrigger>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let triggers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let t = triggers.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let (trigger, watcher) = drain::new();
            t.lock().unwrap().push(trigger);
            tokio::spawn(hbone::serve(
                s,
                Arc::new(H2Config::default()),
                watcher,
                |_parts, responder: hbone::Responder| async move {
                    let mut s = responder.accept(http::HeaderMap::new()).unwrap();
                    let (mut r, mut w) = tokio::io::split(&mut s);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                },
            ));
        }
    });
    (addr, triggers)
}

/// One byte there and back through a new CONNECT stream.
async fn round_trip(client: &HboneClient<Tcp>, addr: SocketAddr) -> Result<(), HboneError> {
    let (s, _) = client
        .connect(key(addr, "a"), connect_req("10.0.0.1:80"))
        .await?;
    let (mut app, mut proxy_side) = socket_pair().await;
    let copy = tokio::spawn(async move { hbone::copy_bidirectional(s, &mut proxy_side).await });
    app.write_all(b"x").await?;
    app.shutdown().await?;
    let mut reply = Vec::new();
    app.read_to_end(&mut reply).await?;
    assert_eq!(reply, b"x");
    let _ = copy.await;
    Ok(())
}

#[tokio::test]
async fn a_draining_peer_costs_no_new_stream() {
    let (addr, triggers) = per_connection_server().await;
    let tcp = Tcp::default();
    let client = HboneClient::new(Arc::new(H2Config::default()), tcp.clone());
    // A long stream keeps the first connection alive through its drain, so the pool still holds it when the
    // GOAWAY arrives: the window in which a new stream used to fail.
    let (long, _) = client
        .connect(key(addr, "a"), connect_req("10.0.0.1:80"))
        .await
        .unwrap();
    let first = triggers.lock().unwrap().remove(0);
    let drained = tokio::spawn(first.drain(Duration::from_secs(10)));
    let mut tries = 0;
    while tcp.dials.load(Ordering::SeqCst) < 2 {
        tries += 1;
        assert!(tries <= 500, "the client never moved to a new connection");
        if let Err(e) = round_trip(&client, addr).await {
            panic!("stream {tries} failed while the peer drained: {e}");
        }
        tokio::task::yield_now().await;
    }
    // The new connection serves the next streams, and the long stream on the draining one still works.
    round_trip(&client, addr).await.unwrap();
    assert_eq!(tcp.dials.load(Ordering::SeqCst), 2);
    let (mut app, mut proxy_side) = socket_pair().await;
    let copy = tokio::spawn(async move { hbone::copy_bidirectional(long, &mut proxy_side).await });
    app.write_all(b"late").await.unwrap();
    app.shutdown().await.unwrap();
    let mut reply = Vec::new();
    app.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"late");
    copy.await.unwrap().unwrap();
    assert!(
        drained.await.unwrap(),
        "the draining connection finished within its deadline"
    );
}
