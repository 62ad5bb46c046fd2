//! `COMPLIANCE_POLICY=pqc` in a running ztunnel. At its HBONE port 15008: a client offering only classical key
//! exchange groups is refused in the handshake (`handshake_failure`), the same client offering X25519MLKEM768 is
//! served and agrees on it (also when it lists it after X25519, via a HelloRetryRequest), a mesh client is served,
//! and a TLS 1.2-only client is refused (`protocol_version`). On its own outbound side, the ztunnel's ClientHello
//! to a peer's 15008 lists X25519MLKEM768 and nothing else, so a peer that accepts only classical groups never
//! completes a handshake with it, while one that also accepts X25519MLKEM768 does.
//!
//! The TLS policy is process-wide and installed once, so this binary starts exactly one ztunnel (127.0.122.3); the
//! stand-in peer listens on 127.0.122.4:15008. The control for the classical refusal — the same client served
//! without the policy — is in `crl.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
mod tls_clients;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::crypto::SupportedKxGroup;
use rustls::{AlertDescription, NamedGroup, ServerConfig};
use support::{WAIT, echo, round_trip};
use tls_clients::{MeshCert, Server, TLS12, TLS13, groups};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_ztunnel_with_the_pqc_policy_accepts_and_offers_only_x25519mlkem768() {
    let s = tls_clients::server(122, |cfg| cfg.compliance_policy = "pqc".into()).await;
    let target = echo(SocketAddr::new(s.ip, 0)).await;
    inbound(&s, target).await;
    outbound(&s).await;
    s.zt.drain().await;
}

async fn inbound(s: &Server, target: SocketAddr) {
    let client = MeshCert::issue(s.ca_dir.path(), "client");
    let e = tls_clients::refused_in_tls(
        s,
        client.client_config(TLS13, groups::CLASSICAL),
        "classical groups only",
    )
    .await;
    assert_eq!(
        e,
        rustls::Error::AlertReceived(AlertDescription::HandshakeFailure),
        "classical groups only"
    );
    for (offer, what) in [
        (groups::PQ, "X25519MLKEM768 only"),
        (groups::ALL, "X25519MLKEM768 first, then classical"),
        (
            groups::CLASSICAL_FIRST_THEN_PQ,
            "X25519 first, then X25519MLKEM768",
        ),
    ] {
        let n = tls_clients::served_with(s, client.client_config(TLS13, offer), target, what).await;
        assert_eq!(n.group, Some(NamedGroup::X25519MLKEM768), "{what}");
    }
    let mut st = tls_clients::connect_with(s, client.cert.clone(), target)
        .await
        .expect("a mesh client (core's connector under the same policy) is served");
    round_trip(&mut st, b"mesh client").await;
    let e =
        tls_clients::refused_in_tls(s, client.client_config(TLS12, groups::ALL), "TLS 1.2 only")
            .await;
    assert_eq!(
        e,
        rustls::Error::AlertReceived(AlertDescription::ProtocolVersion),
        "TLS 1.2 only"
    );
}

/// What the stand-in peer saw of one handshake from the ztunnel.
#[derive(Debug)]
struct Seen {
    /// The ClientHello's supported groups.
    offered: Option<Vec<NamedGroup>>,
    /// Whether the peer accepted X25519MLKEM768 for this handshake (else classical groups only).
    peer_accepts_pq: bool,
    /// The group agreed on, or the handshake error.
    result: Result<Option<NamedGroup>, String>,
}

fn peer_config(cert: &MeshCert, kx: &[&'static dyn SupportedKxGroup]) -> Arc<ServerConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = kx.to_vec();
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(TLS13)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// The ztunnel dials the peer workload (127.0.122.4, HBONE) for a SOCKS5 client; a stand-in peer on its 15008
/// records each ClientHello and completes the handshake with classical groups only, then with X25519MLKEM768 too.
async fn outbound(s: &Server) {
    let peer_ip: IpAddr = "127.0.122.4".parse().unwrap();
    let cert = MeshCert::issue(s.ca_dir.path(), "peer");
    let classical = peer_config(&cert, groups::CLASSICAL);
    let with_pq = peer_config(&cert, groups::ALL);
    let accept_pq = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Seen>();
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(peer_ip, 15008))
        .await
        .unwrap();
    let accept_loop = {
        let accept_pq = accept_pq.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (tx, accept_pq) = (tx.clone(), accept_pq.clone());
                let (classical, with_pq) = (classical.clone(), with_pq.clone());
                tokio::spawn(async move {
                    let acceptor = tokio_rustls::LazyConfigAcceptor::new(
                        rustls::server::Acceptor::default(),
                        tcp,
                    );
                    let Ok(start) = acceptor.await else { return };
                    let offered = start.client_hello().named_groups().map(<[_]>::to_vec);
                    let peer_accepts_pq = accept_pq.load(Ordering::SeqCst);
                    let config = if peer_accepts_pq { with_pq } else { classical };
                    let result = start
                        .into_stream(config)
                        .await
                        .map(|tls| {
                            tls.get_ref()
                                .1
                                .negotiated_key_exchange_group()
                                .map(|g| g.name())
                        })
                        .map_err(|e| e.to_string());
                    let _ = tx.send(Seen {
                        offered,
                        peer_accepts_pq,
                        result,
                    });
                });
            }
        })
    };
    let socks = s.zt.addresses.socks5.expect("socks5 listener");
    let dst = SocketAddr::new(peer_ip, 8080);
    let only_pq = Some(vec![NamedGroup::X25519MLKEM768]);

    // A peer that accepts classical groups only: the handshake fails.
    let mut app = tokio::net::TcpStream::connect(socks).await.unwrap();
    support::socks5_handshake(&mut app, dst).await.unwrap();
    let seen = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the ztunnel dialled the peer's 15008")
        .unwrap();
    assert_eq!(seen.offered, only_pq, "{seen:?}");
    assert!(
        seen.result.is_err(),
        "a classical-only peer completed a handshake with a pqc ztunnel: {seen:?}"
    );
    drop(app);

    // The control: the same peer accepting X25519MLKEM768 too completes the handshake, on that group.
    accept_pq.store(true, Ordering::SeqCst);
    let mut app = tokio::net::TcpStream::connect(socks).await.unwrap();
    support::socks5_handshake(&mut app, dst).await.unwrap();
    let seen = loop {
        let seen = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("the ztunnel dialled the peer's 15008 again")
            .unwrap();
        assert_eq!(seen.offered, only_pq, "{seen:?}");
        if seen.peer_accepts_pq {
            break seen;
        }
        // A late dial from the first attempt, still against the classical-only peer.
        assert!(seen.result.is_err(), "{seen:?}");
    };
    assert_eq!(
        seen.result,
        Ok(Some(NamedGroup::X25519MLKEM768)),
        "{seen:?}"
    );
    drop(app);
    accept_loop.abort();
}
