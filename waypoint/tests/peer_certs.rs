//! In-process: the waypoint's HBONE port refuses source ztunnels whose certificate is expired, not yet valid, from
//! another trust domain or from a CA it does not trust, and bytes that are not HBONE, and keeps serving good ones
//! after each. (How each refusal reads, per TLS backend, is pinned by `ambit-core`'s `tls_peer_certs`; this shows
//! the waypoint's listener uses that check.) Addresses are 127.0.93.x and 127.0.96.x.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::REVIEWS;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ambit_core::Identity;
use ambit_core::ca::LocalCa;
use ambit_core::hbone::{H2Config, HboneClient, HboneError, PoolKey};
use ambit_core::tls::WorkloadCert;
use tokio::net::TcpStream;

const NET: u8 = 93;

fn at(secs: i64) -> SystemTime {
    let d = Duration::from_secs(secs.unsigned_abs());
    if secs < 0 {
        SystemTime::now() - d
    } else {
        SystemTime::now() + d
    }
}

/// The first line of a GET to reviews through the waypoint by a client holding `cert`.
async fn get(source: &support::Source, cert: Arc<WorkloadCert>) -> Result<String, HboneError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let client = HboneClient::new(Arc::new(H2Config::default()), support::Fixed(cert));
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
    let (mut s, _) = tokio::time::timeout(Duration::from_secs(5), client.connect(key, req))
        .await
        .expect("a refused client is answered, not left hanging")?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn bad_source_certificates_are_refused_and_good_ones_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let file = dir.path().join("waypoint.yaml");
    std::fs::write(&file, support::reviews_world(NET)).unwrap();
    let (_waypoint, source) = support::start_waypoint(
        &ca_dir,
        &file,
        format!("127.0.{NET}.2:40000").parse().unwrap(),
        &[],
    )
    .await;
    support::http_backend(format!("127.0.{NET}.21:18081").parse().unwrap(), "backend").await;

    let ca = LocalCa::load_or_create(&ca_dir, "cluster.local").unwrap();
    let cert = |td: &str, from: i64, until: i64| {
        let id = Identity::new(td, "demo", "client");
        Arc::new(
            ca.issue_workload_valid_between(&id, at(from), at(until))
                .unwrap(),
        )
    };
    let rogue = {
        // From a CA the waypoint does not trust; the client itself trusts the waypoint's root.
        let other = LocalCa::generate("cluster.local").unwrap();
        let id = source.me.clone();
        let (key, csr) = ambit_core::tls::generate_csr(&id).unwrap();
        let mut chain = other
            .sign_csr(&csr, &id, Duration::from_secs(3600))
            .unwrap();
        chain.last_mut().unwrap().push_str(&ca.root_pem());
        Arc::new(WorkloadCert::from_istio_chain(&chain, &key).unwrap())
    };
    let hour = 3600;
    let bad = [
        ("expired", cert("cluster.local", -2 * hour, -hour)),
        ("not yet valid", cert("cluster.local", hour, 2 * hour)),
        ("another trust domain", cert("other.local", -hour, hour)),
        ("an untrusted CA", rogue),
    ];
    let good = cert("cluster.local", -hour, hour);
    for (what, bad) in bad {
        match get(&source, bad).await {
            // Refused by TLS: an alert naming the reason or, when the client had already written (TLS 1.3
            // checks the client's certificate after the client finished), the connection closed under it; an
            // HTTP status would mean the stream got past TLS.
            Err(HboneError::Status(st)) => {
                panic!("a source certificate that is {what} got past TLS: status {st}")
            }
            Err(e) => eprintln!("source certificate {what}: refused ({e})"),
            Ok(line) => panic!("a source certificate that is {what} was served: {line}"),
        }
        let line = get(&source, good.clone())
            .await
            .unwrap_or_else(|e| panic!("a good source after one {what} was refused: {e}"));
        assert_eq!(line, "HTTP/1.1 200 OK", "after one {what}");
    }
}

/// Bytes that are not HBONE at the waypoint's port: a plaintext HTTP request instead of TLS (closed at once, not
/// held to the handshake timeout), and a CONNECT whose header list is over the server's 64 KiB limit (431). A good
/// source is served after each.
#[tokio::test]
async fn plaintext_and_oversized_connects_are_refused_and_good_ones_still_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let file = dir.path().join("waypoint.yaml");
    // A range of its own: the tests of this file run side by side, each with its own backend.
    let net = NET + 3;
    std::fs::write(&file, support::reviews_world(net)).unwrap();
    let (_waypoint, source) = support::start_waypoint(
        &ca_dir,
        &file,
        format!("127.0.{net}.2:40000").parse().unwrap(),
        &[],
    )
    .await;
    support::http_backend(format!("127.0.{net}.21:18081").parse().unwrap(), "backend").await;
    let ca = LocalCa::load_or_create(&ca_dir, "cluster.local").unwrap();
    let good = Arc::new(
        ca.issue_workload_valid_between(&source.me, at(-3600), at(3600))
            .unwrap(),
    );
    assert_eq!(get(&source, good.clone()).await.unwrap(), "HTTP/1.1 200 OK");

    let mut plain = TcpStream::connect(source.waypoint_addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("a plaintext request on the HBONE port is still open after 5 s"),
        }
    }
    assert_eq!(
        get(&source, good.clone()).await.unwrap(),
        "HTTP/1.1 200 OK",
        "after plaintext"
    );

    let client = HboneClient::new(Arc::new(H2Config::default()), support::Fixed(good.clone()));
    let key = PoolKey {
        src_identity: source.me.clone(),
        dst_identities: vec![source.waypoint.clone()],
        dst: source.waypoint_addr,
        src_ip: source.client_addr.ip(),
    };
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(REVIEWS)
        .body(())
        .unwrap();
    for i in 0..20 {
        req.headers_mut().insert(
            http::HeaderName::try_from(format!("x-big-{i}")).unwrap(),
            http::HeaderValue::from_str(&"v".repeat(4096)).unwrap(),
        );
    }
    let r = tokio::time::timeout(Duration::from_secs(5), client.connect(key, req))
        .await
        .expect("an oversized CONNECT is answered");
    assert!(
        matches!(r, Err(HboneError::Status(st)) if st == http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        "an 80 KiB header list: {:?}",
        r.map(|_| ())
    );
    assert_eq!(
        get(&source, good).await.unwrap(),
        "HTTP/1.1 200 OK",
        "after oversized headers"
    );
}
