//! The fetcher against real servers on loopback: plain HTTP, HTTPS with a certificate the fetcher trusts and one
//! it does not, and the failures it must report instead of returning a body.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

use super::HttpFetcher;
use crate::jwt::JwksFetcher;

const JWKS: &str = r#"{"keys":[]}"#;

/// Answers `/jwks` with [`JWKS`], `/big` with 2 MiB, anything else 404; over TLS when `tls` is given.
async fn server(tls: Option<Arc<rustls::ServerConfig>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let (status, body) = match req.uri().path() {
                        "/jwks" => (200, Bytes::from_static(JWKS.as_bytes())),
                        "/big" => (200, Bytes::from(vec![b' '; 2 << 20])),
                        _ => (404, Bytes::new()),
                    };
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .status(status)
                            .body(Full::new(body))
                            .unwrap(),
                    )
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(cfg) => {
                        let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await else {
                            return;
                        };
                        let _ = http.serve_connection(TokioIo::new(s), svc).await;
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                }
            });
        }
    });
    port
}

/// A self-signed certificate for `localhost` and 127.0.0.1, as (server config, root store trusting it).
fn tls() -> (Arc<rustls::ServerConfig>, RootCertStore) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let der = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![der.clone()], key)
    .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(der).unwrap();
    (Arc::new(cfg), roots)
}

#[tokio::test]
async fn http_and_https_bodies() {
    let (cfg, roots) = tls();
    let plain = server(None).await;
    let secure = server(Some(cfg)).await;
    let f = HttpFetcher::with_roots(roots);
    assert_eq!(
        f.fetch(&format!("http://127.0.0.1:{plain}/jwks"))
            .await
            .unwrap(),
        JWKS
    );
    assert_eq!(
        f.fetch(&format!("https://localhost:{secure}/jwks"))
            .await
            .unwrap(),
        JWKS
    );
    assert_eq!(
        f.fetch(&format!("https://127.0.0.1:{secure}/jwks"))
            .await
            .unwrap(),
        JWKS
    );
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let (cfg, _) = tls();
    let secure = server(Some(cfg)).await;
    let err = HttpFetcher::with_roots(RootCertStore::empty())
        .fetch(&format!("https://localhost:{secure}/jwks"))
        .await
        .unwrap_err();
    assert!(err.0.contains("tls"), "{err}");
    // The system store does not know a certificate made here either.
    let err = HttpFetcher::with_system_roots()
        .fetch(&format!("https://localhost:{secure}/jwks"))
        .await
        .unwrap_err();
    assert!(err.0.contains("tls"), "{err}");
}

#[tokio::test]
async fn failures_are_errors_not_bodies() {
    let plain = server(None).await;
    let f = HttpFetcher::with_roots(RootCertStore::empty());
    for (uri, want) in [
        (format!("http://127.0.0.1:{plain}/nope"), "status: 404"),
        (format!("http://127.0.0.1:{plain}/big"), "body"),
        ("ftp://example/jwks".to_owned(), "scheme"),
        ("http://127.0.0.1:1/jwks".to_owned(), "connect"),
        ("not a uri".to_owned(), "uri"),
    ] {
        let err = f.fetch(&uri).await.unwrap_err();
        assert!(err.0.contains(want), "{uri}: {err}");
    }
}
