//! `COMPLIANCE_POLICY=pqc` in a running waypoint: its HBONE port serves sources that offer X25519MLKEM768 (ambit's
//! own connector, which under the policy offers nothing else, and a plain rustls client that offers it beside
//! X25519 and P-256) over that group, and refuses at the handshake a source that offers only classical groups and
//! one that speaks only TLS 1.2; good sources are served after each refusal. (The same classical-only client is
//! served under the default policy: `crl.rs`.) On its outbound side, the waypoint's ClientHello to a destination
//! ztunnel lists X25519MLKEM768 and nothing else: a destination that accepts only classical groups (X25519, P-256,
//! P-384) gets no handshake done, so the request is answered 503 `UF,URX` (a connect failure on every attempt of the
//! default retry policy) and no CONNECT reaches it, while a destination that also accepts X25519MLKEM768 is served
//! over that group. The process's TLS policy is installed once, so this binary has one waypoint. Addresses are
//! 127.0.90.x, and 127.0.102.x for the destination ztunnels.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::REVIEWS;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::ca::LocalCa;
use ambit_core::hbone::{self, H2Config};
use rustls::crypto::SupportedKxGroup;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, NamedGroup, PeerIncompatible, ProtocolVersion, ServerConfig};
use support::tls_peers::{self, ClientCert, RawConnector, TLS12, TLS13, Verdict};
use tokio::sync::mpsc;

const NET: u8 = 90;
const OK: &str = "HTTP/1.1 200 OK";
/// The destination ztunnels' net, and the services behind them.
const DEST_NET: u8 = 102;
const RATINGS: &str = "ratings.demo.svc.cluster.local:9080";
const DETAILS: &str = "details.demo.svc.cluster.local:9080";
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_pqc_waypoint_serves_only_post_quantum_tls13_sources() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let file = dir.path().join("waypoint.yaml");
    std::fs::write(
        &file,
        support::reviews_world_with_destinations(NET, DEST_NET),
    )
    .unwrap();
    let (waypoint, source) = support::start_waypoint(
        &ca_dir,
        &file,
        format!("127.0.{NET}.2:40000").parse().unwrap(),
        &[("COMPLIANCE_POLICY", "pqc")],
    )
    .await;
    support::http_backend(format!("127.0.{NET}.21:18081").parse().unwrap(), "backend").await;
    let addr = waypoint.addresses.hbone;
    let ca = LocalCa::load_or_create(&ca_dir, "cluster.local").unwrap();
    let cert = ClientCert::issue(&ca, &source.me);

    // Served: ambit's own connector (the process policy makes it offer X25519MLKEM768 only)…
    assert_eq!(source.get(REVIEWS, "/", &[]).await.0, 200);
    // …and a plain rustls source offering X25519MLKEM768 first, classical groups after it: over HBONE, on the
    // post-quantum group.
    let groups = Arc::new(Mutex::new(Vec::new()));
    let mixed = RawConnector {
        config: cert.client_config(tls_peers::pq_and_classical(), TLS13),
        groups: groups.clone(),
    };
    let line = tls_peers::first_line_on_new_connection(mixed, &source, REVIEWS)
        .await
        .expect("a source offering X25519MLKEM768");
    assert_eq!(line, OK);
    assert_eq!(
        *groups.lock().unwrap(),
        vec![Some(NamedGroup::X25519MLKEM768)]
    );
    let v = tls_peers::verdict(
        addr,
        cert.client_config(tls_peers::pq_and_classical(), TLS13),
    )
    .await;
    assert!(
        matches!(
            v,
            Verdict::Accepted {
                group: Some(NamedGroup::X25519MLKEM768),
                version: Some(ProtocolVersion::TLSv1_3)
            }
        ),
        "{v:?}"
    );

    // Refused at the ClientHello, before any certificate is looked at, each followed by a good source served:
    let refused = [
        // no group in common with X25519MLKEM768
        (
            "classical-only (X25519, P-256, P-384), TLS 1.3",
            cert.client_config(tls_peers::classical(), TLS13),
            AlertDescription::HandshakeFailure,
        ),
        // no version in common (the post-quantum group offered too, so only the version differs)
        (
            "TLS 1.2-only",
            cert.client_config(tls_peers::pq_and_classical(), TLS12),
            AlertDescription::ProtocolVersion,
        ),
        (
            "TLS 1.2-only, classical",
            cert.client_config(tls_peers::classical(), TLS12),
            AlertDescription::ProtocolVersion,
        ),
    ];
    for (what, config, alert) in refused {
        let v = tls_peers::verdict(addr, config.clone()).await;
        assert!(
            matches!(&v, Verdict::Alert(a) if *a == alert),
            "a {what} source: expected the alert {alert:?}, got {v:?}"
        );
        // Over HBONE the same source gets no stream.
        let groups = Arc::new(Mutex::new(Vec::new()));
        let r = tls_peers::first_line_on_new_connection(
            RawConnector {
                config,
                groups: groups.clone(),
            },
            &source,
            REVIEWS,
        )
        .await;
        assert!(
            matches!(r, Err(ambit_core::hbone::HboneError::Tls(_))),
            "a {what} source over HBONE: {r:?}"
        );
        assert!(
            groups.lock().unwrap().is_empty(),
            "{what}: no handshake completed"
        );
        assert_eq!(
            source.get(REVIEWS, "/", &[]).await.0,
            200,
            "after a {what} source"
        );
    }

    outbound(&waypoint, &source, &ca).await;
}

/// What a destination ztunnel saw of one connection from the waypoint.
#[derive(Debug, PartialEq)]
enum DestSaw {
    /// A handshake: the ClientHello's supported groups, and the group agreed on or the destination's error.
    Handshake {
        offered: Option<Vec<NamedGroup>>,
        result: Result<Option<NamedGroup>, rustls::Error>,
    },
    /// A CONNECT past the handshake, by its authority; its stream then goes to an HTTP backend named as the service.
    Connect(String),
}

/// A destination ztunnel on `ip:15008` presenting `cert` whose TLS 1.3 accepts only the key exchange `groups` (it
/// asks for no client certificate: what is under test is the waypoint's offer), then HBONE whose streams are
/// served by an HTTP backend answering `name`. Reports each handshake and each CONNECT.
async fn destination(
    ip: &str,
    cert: &ClientCert,
    groups: Vec<&'static dyn SupportedKxGroup>,
    name: &'static str,
) -> mpsc::UnboundedReceiver<DestSaw> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = groups;
    let chain: Vec<CertificateDer<'static>> = cert.chain[..cert.chain.len() - 1]
        .iter()
        .flat_map(|pem| CertificateDer::pem_slice_iter(pem.as_bytes()).map(Result::unwrap))
        .collect();
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(TLS13)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    let listener = tokio::net::TcpListener::bind(format!("{ip}:15008"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (config, tx) = (config.clone(), tx.clone());
            tokio::spawn(async move {
                let acceptor =
                    tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
                let Ok(start) = acceptor.await else { return };
                let offered = start.client_hello().named_groups().map(<[_]>::to_vec);
                let tls = match start.into_stream(config).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        let e = e
                            .get_ref()
                            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                            .cloned()
                            .unwrap_or_else(|| rustls::Error::General(e.to_string()));
                        let _ = tx.send(DestSaw::Handshake {
                            offered,
                            result: Err(e),
                        });
                        return;
                    }
                };
                let group = tls.get_ref().1.negotiated_key_exchange_group();
                let _ = tx.send(DestSaw::Handshake {
                    offered,
                    result: Ok(group.map(|g| g.name())),
                });
                let (_trigger, drain) = ambit_core::drain::new();
                let cfg = Arc::new(H2Config::default());
                let _ = hbone::serve(tls, cfg, drain, move |parts, responder| {
                    let tx = tx.clone();
                    async move {
                        let authority = parts.uri.authority().map(|a| a.to_string());
                        let _ = tx.send(DestSaw::Connect(authority.unwrap_or_default()));
                        if let Ok(stream) = responder.accept(http::HeaderMap::new()) {
                            support::serve_echo(stream, name).await;
                        }
                    }
                })
                .await;
            });
        }
    });
    rx
}

/// The next thing `dest` saw, within [`WAIT`].
async fn next(dest: &mut mpsc::UnboundedReceiver<DestSaw>, what: &str) -> DestSaw {
    tokio::time::timeout(WAIT, dest.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: the destination saw nothing within {WAIT:?}"))
        .unwrap()
}

/// The waypoint's own handshakes with destination ztunnels, under the policy: `details`' ztunnel accepts
/// X25519MLKEM768 beside classical groups and is served over it; `ratings`' accepts classical groups only (and
/// serves a classical client: the control that it works), so the waypoint's requests to it get 503 `UF,URX` and no
/// CONNECT reaches it — and `details` is still served after that. Neither was reached before, so each handshake
/// with them is a new one (nothing pooled).
async fn outbound(waypoint: &ambit_waypoint::app::Running, source: &support::Source, ca: &LocalCa) {
    let only_pq = Some(vec![NamedGroup::X25519MLKEM768]);
    let ratings_ip = format!("127.0.{DEST_NET}.31");
    let details_ip = format!("127.0.{DEST_NET}.32");
    let ratings_cert = ClientCert::issue(ca, &Identity::new("cluster.local", "demo", "ratings"));
    let details_cert = ClientCert::issue(ca, &Identity::new("cluster.local", "demo", "details"));
    let mut ratings = destination(
        &ratings_ip,
        &ratings_cert,
        tls_peers::classical(),
        "ratings",
    )
    .await;
    let mut details = destination(
        &details_ip,
        &details_cert,
        tls_peers::pq_and_classical(),
        "details",
    )
    .await;

    // The control: the classical-only destination completes a handshake with a client that offers X25519.
    let dest_addr: SocketAddr = format!("{ratings_ip}:15008").parse().unwrap();
    let v = tls_peers::verdict(
        dest_addr,
        ratings_cert.client_config(tls_peers::classical(), TLS13),
    )
    .await;
    assert!(
        matches!(
            v,
            Verdict::Accepted {
                group: Some(NamedGroup::X25519),
                ..
            }
        ),
        "a classical client at the classical-only destination: {v:?}"
    );
    let saw = next(&mut ratings, "the control").await;
    assert!(
        matches!(
            saw,
            DestSaw::Handshake {
                result: Ok(Some(NamedGroup::X25519)),
                ..
            }
        ),
        "{saw:?}"
    );

    // Served: the destination that accepts X25519MLKEM768 agrees on it.
    let (code, _, body) = source.get(DETAILS, "/", &[]).await;
    assert_eq!((code, body.trim()), (200, "details"), "details");
    assert_eq!(
        next(&mut details, "details").await,
        DestSaw::Handshake {
            offered: only_pq.clone(),
            result: Ok(Some(NamedGroup::X25519MLKEM768)),
        }
    );
    assert_eq!(
        next(&mut details, "details").await,
        DestSaw::Connect(format!("{details_ip}:9080"))
    );

    // Refused: no group in common, so the destination ends each handshake (`handshake_failure`) and the waypoint
    // answers 503 `UF,URX`: a connect failure on the first attempt and on both retries of the default policy
    // (`DEFAULT_HTTP_RETRY_ATTEMPTS=2`, `connect-failure`), each a new connection. Twice: every request, not one.
    let refused = DestSaw::Handshake {
        offered: only_pq.clone(),
        result: Err(rustls::Error::PeerIncompatible(
            PeerIncompatible::NoKxGroupsInCommon,
        )),
    };
    for i in 1..=2 {
        let what = format!("ratings, request {i}");
        let (code, _, body) = source.get(RATINGS, "/", &[]).await;
        assert_eq!(code, 503, "{what}: {body}");
        assert!(body.contains("upstream connect error"), "{what}: {body}");
        for attempt in 1..=3 {
            let what = format!("{what}, attempt {attempt}");
            assert_eq!(next(&mut ratings, &what).await, refused, "{what}");
        }
    }
    let metrics = support::get_text(waypoint.addresses.stats, "/metrics").await;
    let ratings_503: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("destination_service=\"ratings.demo.svc.cluster.local\"")
        })
        .collect();
    assert!(
        matches!(&ratings_503[..], [l] if l.contains("response_code=\"503\"")
            && l.contains("response_flags=\"UF,URX\"")
            && l.ends_with(" 2")),
        "{ratings_503:#?}"
    );
    // After the refusals, the waypoint still serves the other destination...
    let (code, _, body) = source.get(DETAILS, "/", &[]).await;
    assert_eq!(
        (code, body.trim()),
        (200, "details"),
        "details after ratings' refusals"
    );
    // ... and nothing beyond the six refused handshakes reached ratings: no seventh, and no CONNECT.
    assert!(
        ratings.try_recv().is_err(),
        "ratings saw more: {:?}",
        ratings.try_recv()
    );
}
