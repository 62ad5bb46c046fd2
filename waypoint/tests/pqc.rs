//! `COMPLIANCE_POLICY=pqc` in a running waypoint: its HBONE port serves sources that offer X25519MLKEM768 (ambit's
//! own connector, which under the policy offers nothing else, and a plain rustls client that offers it beside
//! X25519 and P-256) over that group, and refuses at the handshake a source that offers only classical groups and
//! one that speaks only TLS 1.2; good sources are served after each refusal. (The same classical-only client is
//! served under the default policy: `crl.rs`.) The process's TLS policy is installed once, so this binary has one
//! waypoint. Addresses are 127.0.90.x.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::REVIEWS;

use std::sync::{Arc, Mutex};

use ambit_core::ca::LocalCa;
use rustls::{AlertDescription, NamedGroup, ProtocolVersion};
use support::tls_peers::{self, ClientCert, RawConnector, TLS12, TLS13, Verdict};

const NET: u8 = 90;
const OK: &str = "HTTP/1.1 200 OK";

#[tokio::test]
async fn a_pqc_waypoint_serves_only_post_quantum_tls13_sources() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let file = dir.path().join("waypoint.yaml");
    std::fs::write(&file, support::reviews_world(NET)).unwrap();
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
}
