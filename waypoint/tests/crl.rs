//! `CRL_PATH` in a running waypoint: its HBONE port serves a source whose certificate the CRL does not list; once
//! the file is rewritten to revoke that certificate, the waypoint's own watcher picks it up and new connections of
//! that source are refused in TLS while another source of the same CA is still served, and a rewrite that lifts the
//! revocation lets it in again. The same CRL holds on the waypoint's outbound side: a destination ztunnel whose
//! certificate it revokes is refused at the waypoint's own handshake (503, nothing reaches it) while another of the
//! same CA is served, and it is served once the revocation is lifted. Also, with the default compliance policy: a
//! TLS 1.2-only source is refused and a classical-only one (the control for `pqc.rs`) is served; a missing or
//! unparsable CRL file is a start error. The process's TLS policy is installed once, so this binary has one
//! waypoint, with `CRL_PATH` set. Addresses are 127.0.88.x, and 127.0.97.x for the destination ztunnels.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::REVIEWS;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::ca::LocalCa;
use ambit_core::cert::Priority;
use ambit_core::hbone::{Connect, H2Config, HboneClient, HboneError, PoolKey};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber,
};
use rustls::{AlertDescription, NamedGroup, ProtocolVersion};
use support::tls_peers::{self, ClientCert, RawConnector, TLS12, TLS13, Verdict};
use time::OffsetDateTime;
use tokio::time::Instant;

const NET: u8 = 88;
const OK: &str = "HTTP/1.1 200 OK";
/// The destination ztunnels' net, and the services behind them.
const DEST_NET: u8 = 97;
const RATINGS: &str = "ratings.demo.svc.cluster.local:9080";
const DETAILS: &str = "details.demo.svc.cluster.local:9080";

/// A certificate's serial number, big-endian bytes (as a CRL names it).
fn serial_of(cert: &ambit_core::tls::WorkloadCert) -> Vec<u8> {
    let hex = cert.serial_hex();
    let hex = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex
    };
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// `GET /` to reviews over a new HBONE connection of its own holding `cert`: the first line of the answer.
async fn get(source: &support::Source, cert: &ClientCert) -> Result<String, HboneError> {
    tls_peers::first_line_on_new_connection(support::Fixed(cert.workload()), source, REVIEWS).await
}

/// The issuer of the waypoint's local CA (the CA key and certificate from its directory), to sign CRLs with.
fn ca_issuer(ca_dir: &Path) -> Issuer<'static, KeyPair> {
    let key =
        KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca-key.pem")).unwrap()).unwrap();
    let cert = std::fs::read_to_string(ca_dir.join("ca-cert.pem")).unwrap();
    Issuer::from_ca_cert_pem(&cert, key).unwrap()
}

/// A PEM CRL by `issuer` revoking `serials`.
fn crl_pem(issuer: &Issuer<'static, KeyPair>, number: u8, serials: &[Vec<u8>]) -> String {
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(5),
        next_update: now + time::Duration::hours(1),
        crl_number: SerialNumber::from_slice(&[number]),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from_slice(s),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params.signed_by(issuer).unwrap().pem().unwrap()
}

/// Replaces the file's contents in one step, like a Kubernetes volume update.
fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// An HTTP/1.1 connection over one CONNECT stream of `client`, kept open for more requests.
async fn open_http1<C: Connect>(
    client: &HboneClient<C>,
    source: &support::Source,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let key = PoolKey {
        src_identity: source.me.clone(),
        dst_identities: vec![source.waypoint.clone()],
        dst: source.waypoint_addr,
        src_ip: source.client_addr.ip(),
    };
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(REVIEWS)
        .header("forwarded", format!("for=\"{}\"", source.client_addr))
        .body(())
        .unwrap();
    let (stream, _) = client.connect(key, req).await.expect("CONNECT");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// One keep-alive request on `send`: the status, or the error.
async fn request(
    send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
) -> Result<u16, String> {
    let req = http::Request::builder()
        .uri("/")
        .header("host", "reviews")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let run = async {
        send.ready().await.map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    };
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s".into()))
}

/// Polls (a new connection each time) until `doomed` gets `want_served`, checking that `good` is served on a new
/// connection of its own between attempts; returns the last answer to `doomed` and how long it took.
async fn until(
    source: &support::Source,
    doomed: &ClientCert,
    good: &ClientCert,
    want_served: bool,
) -> (Result<String, HboneError>, Duration) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(90);
    loop {
        let r = get(source, doomed).await;
        if let Err(HboneError::Status(st)) = &r {
            panic!("the doomed source got past TLS to an HTTP status: {st}");
        }
        if r.is_ok() == want_served {
            if let Ok(line) = &r {
                assert_eq!(line, OK);
            }
            return (r, started.elapsed());
        }
        if let Ok(line) = &r {
            assert_eq!(line, OK, "the doomed source while it is still served");
        }
        let line = get(source, good)
            .await
            .unwrap_or_else(|e| panic!("the good source was refused while waiting: {e}"));
        assert_eq!(line, OK, "the good source while waiting");
        assert!(
            Instant::now() < deadline,
            "the waypoint did not pick up the rewritten CRL within 90 s (want served: {want_served}; last: {r:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_rewritten_crl_refuses_new_connections_of_the_revoked_source() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let file = dir.path().join("waypoint.yaml");
    std::fs::write(
        &file,
        support::reviews_world_with_destinations(NET, DEST_NET),
    )
    .unwrap();
    // Nothing revoked at start: an empty file.
    let crl = dir.path().join("crl.pem");
    std::fs::write(&crl, "").unwrap();
    let (waypoint, source) = support::start_waypoint(
        &ca_dir,
        &file,
        format!("127.0.{NET}.2:40000").parse().unwrap(),
        &[("CRL_PATH", crl.to_str().unwrap())],
    )
    .await;
    support::http_backend(format!("127.0.{NET}.21:18081").parse().unwrap(), "backend").await;
    let addr = waypoint.addresses.hbone;

    // Two certificates of the same source workload from the waypoint's own CA.
    let ca = LocalCa::load_or_create(&ca_dir, "cluster.local").unwrap();
    let doomed = ClientCert::issue(&ca, &source.me);
    let good = ClientCert::issue(&ca, &source.me);
    assert_ne!(doomed.serial(), good.serial());
    // Two destination ztunnels of that CA, for `ratings` (to be revoked) and `details`. The waypoint reaches
    // neither before the revocation, so each first handshake with them happens under the rewritten CRL (a
    // connection made before would be pooled and reused).
    let dest_certs = support::certs(&ca_dir);
    let ratings_id = Identity::new("cluster.local", "demo", "ratings");
    let details_id = Identity::new("cluster.local", "demo", "details");
    // The certificate the ratings ztunnel will present (the manager hands out the one it holds).
    let revoked_dest = dest_certs
        .fetch(&ratings_id, Priority::RealTime)
        .await
        .unwrap();
    let ratings_seen = support::fake_ztunnel(
        &format!("127.0.{DEST_NET}.31"),
        &ratings_id,
        dest_certs.clone(),
        "ratings",
    )
    .await;
    let details_seen = support::fake_ztunnel(
        &format!("127.0.{DEST_NET}.32"),
        &details_id,
        dest_certs.clone(),
        "details",
    )
    .await;
    assert_eq!(
        get(&source, &doomed).await.unwrap(),
        OK,
        "doomed, nothing revoked yet"
    );
    assert_eq!(
        get(&source, &good).await.unwrap(),
        OK,
        "good, nothing revoked yet"
    );

    // The default compliance policy: a classical-only TLS 1.3 source is served (so `pqc.rs` refusing it is the
    // policy's doing), a TLS 1.2-only source is refused at its ClientHello.
    let groups = Arc::new(Mutex::new(Vec::new()));
    let classical = RawConnector {
        config: good.client_config(tls_peers::classical(), TLS13),
        groups: groups.clone(),
    };
    let line = tls_peers::first_line_on_new_connection(classical, &source, REVIEWS)
        .await
        .expect("a classical-only source under the default compliance policy");
    assert_eq!(line, OK);
    assert_eq!(*groups.lock().unwrap(), vec![Some(NamedGroup::X25519)]);
    let v = tls_peers::verdict(
        addr,
        good.client_config(tls_peers::pq_and_classical(), TLS12),
    )
    .await;
    assert!(
        matches!(v, Verdict::Alert(AlertDescription::ProtocolVersion)),
        "a TLS 1.2-only source: {v:?}"
    );
    let v = tls_peers::verdict(
        addr,
        doomed.client_config(tls_peers::pq_and_classical(), TLS13),
    )
    .await;
    assert!(
        matches!(
            v,
            Verdict::Accepted {
                version: Some(ProtocolVersion::TLSv1_3),
                ..
            }
        ),
        "doomed before the rewrite: {v:?}"
    );

    // An HBONE connection of the doomed source, with a keep-alive HTTP/1.1 stream on it, open across the rewrite.
    let held = HboneClient::new(
        Arc::new(H2Config::default()),
        support::Fixed(doomed.workload()),
    );
    let mut held_stream = open_http1(&held, &source).await;
    assert_eq!(request(&mut held_stream).await, Ok(200));

    // Revoke the doomed certificate and the ratings ztunnel's: the waypoint's watcher (every 5 s) picks it up.
    let issuer = ca_issuer(&ca_dir);
    write_atomically(
        &crl,
        &crl_pem(&issuer, 1, &[doomed.serial(), serial_of(&revoked_dest)]),
    );
    let (refused, took) = until(&source, &doomed, &good, false).await;
    eprintln!(
        "revocation picked up after {took:?}; the doomed source's new connection: {refused:?}"
    );
    // Refused in TLS by the server's verdict on the certificate, not by anything else: a hand-built client that
    // writes nothing reads the waypoint's alert, `certificate_revoked`.
    let v = tls_peers::verdict(
        addr,
        doomed.client_config(tls_peers::pq_and_classical(), TLS13),
    )
    .await;
    assert!(
        matches!(v, Verdict::Alert(AlertDescription::CertificateRevoked)),
        "the revoked source's handshake: {v:?}"
    );
    let v = tls_peers::verdict(
        addr,
        good.client_config(tls_peers::pq_and_classical(), TLS13),
    )
    .await;
    assert!(
        matches!(v, Verdict::Accepted { .. }),
        "the good source's handshake: {v:?}"
    );
    assert!(
        get(&source, &doomed).await.is_err(),
        "the revoked source stays refused"
    );
    assert_eq!(
        get(&source, &good).await.unwrap(),
        OK,
        "good after the revocation"
    );
    // The waypoint's own source-side connector (which shares the process policy) still reaches it.
    assert_eq!(source.get(REVIEWS, "/", &[]).await.0, 200);

    // The outbound side: the waypoint's own handshake with a destination ztunnel checks the same CRL. The one of
    // `details` (not revoked) is served on a new connection; the one of `ratings` is refused in TLS, so the request
    // gets 503 and no CONNECT reaches it.
    let (code, _, body) = source.get(DETAILS, "/", &[]).await;
    assert_eq!(
        (code, body.trim()),
        (200, "details"),
        "details under the CRL"
    );
    let waypoint_id = source.waypoint.to_string();
    assert_eq!(
        *details_seen.lock().unwrap(),
        [("127.0.97.32:9080".to_owned(), Some(waypoint_id.clone()))],
        "the details ztunnel saw the waypoint's CONNECT"
    );
    let (code, _, body) = source.get(RATINGS, "/", &[]).await;
    assert_eq!(code, 503, "ratings, whose ztunnel is revoked: {body}");
    assert!(body.contains("upstream connect error"), "{body}");
    // Counted as a connect failure (`UF`), not as no endpoint (`UH`) or a reset on the way (`UC`).
    let metrics = support::get_text(waypoint.addresses.stats, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("destination_service=\"ratings.demo.svc.cluster.local\"")
                && l.contains("response_code=\"503\"")
                && l.contains("response_flags=\"UF")),
        "{metrics}"
    );
    assert!(
        ratings_seen.lock().unwrap().is_empty(),
        "nothing got past the handshake with the revoked ztunnel: {:?}",
        ratings_seen.lock().unwrap()
    );

    // The connection the doomed source set up before the rewrite: the waypoint closes it once the CRL that revokes
    // its source is in force (as ztunnel, as upstream), so its open stream fails, and a new CONNECT through that
    // pool needs a new connection, which the CRL refuses.
    let on_stream = request(&mut held_stream).await;
    assert!(
        on_stream.is_err(),
        "the open stream of the connection set up before the revocation still served: {on_stream:?}"
    );
    let on_pool = tls_peers::first_line(&held, &source, REVIEWS).await;
    assert!(
        on_pool.is_err(),
        "a new CONNECT of the revoked source was served: {on_pool:?}"
    );

    // Lifting the revocation lets the source in again, on new connections.
    write_atomically(&crl, &crl_pem(&issuer, 2, &[]));
    let (served, took) = until(&source, &doomed, &good, true).await;
    eprintln!("un-revocation picked up after {took:?}: {served:?}");
    assert_eq!(get(&source, &good).await.unwrap(), OK);
    // ... and the waypoint reaches the ratings ztunnel again: it was the CRL that refused it.
    let (code, _, body) = source.get(RATINGS, "/", &[]).await;
    assert_eq!(
        (code, body.trim()),
        (200, "ratings"),
        "ratings after the revocation is lifted"
    );
    assert_eq!(
        *ratings_seen.lock().unwrap(),
        [("127.0.97.31:9080".to_owned(), Some(waypoint_id))]
    );
}

/// A `CRL_PATH` that does not exist, or that holds no parsable CRL, stops the waypoint at start, naming the
/// variable and the file. (Nothing is installed then, so this shares the binary with the test above.)
#[tokio::test]
async fn a_missing_or_unparsable_crl_file_is_a_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let missing = dir.path().join("absent.pem");
    let file = dir.path().join("waypoint.yaml");
    std::fs::write(&file, support::reviews_world(NET)).unwrap();
    for (path, what) in [
        (&missing, "reading CRL file"),
        (&broken, "parsing CRL file"),
    ] {
        let env: HashMap<String, String> = [
            ("LOCAL_CA_DIR", ca_dir.to_str().unwrap()),
            ("LOCAL_XDS_PATH", file.to_str().unwrap()),
            ("POD_NAMESPACE", "demo"),
            ("GATEWAY_NAME", "waypoint"),
            ("WAYPOINT_HBONE_ADDR", "127.0.0.1:0"),
            ("WAYPOINT_ADMIN_ADDR", "127.0.0.1:0"),
            ("WAYPOINT_STATS_ADDR", "127.0.0.1:0"),
            ("WAYPOINT_READINESS_ADDR", "127.0.0.1:0"),
            ("CRL_PATH", path.to_str().unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let cfg = ambit_waypoint::config::Config::from_env(&env).unwrap();
        let e = match ambit_waypoint::app::start(cfg, ambit_core::logging::LogHandle::noop()).await
        {
            Ok(_) => panic!("the waypoint started with CRL_PATH={}", path.display()),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.starts_with("CRL_PATH: ")
                && e.contains(what)
                && e.contains(&path.display().to_string()),
            "{e}"
        );
    }
}
