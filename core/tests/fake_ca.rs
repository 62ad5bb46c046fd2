//! `FAKE_CA=true` signers created independently (as two separately started proxies create theirs) share one
//! root: their workload certificates complete mutual TLS with each other through the real handshake, on every
//! compiled-in backend. A CA with another root still cannot.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use ambit_core::Identity;
use ambit_core::ca::LocalCa;
use ambit_core::signer::{self, CsrSigner};
use ambit_core::tls::{self, TlsAcceptor, TlsBackend, TlsConnector, WorkloadCert};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TTL: Duration = Duration::from_secs(3600);

fn fake_signer() -> Arc<dyn CsrSigner> {
    signer::choose(None, true, "cluster.local", None).unwrap()
}

/// A certificate for `identity` the way the certificate manager gets one: a CSR signed by `signer`.
async fn issue(signer: &dyn CsrSigner, identity: &Identity) -> Arc<WorkloadCert> {
    let (key, csr) = tls::generate_csr(identity).unwrap();
    let chain = signer.sign(&csr, identity, TTL).await.unwrap();
    Arc::new(WorkloadCert::from_istio_chain(&chain, &key).unwrap())
}

/// Server and client handshake over an in-memory pipe; `Ok` with both peer identities when both sides accept.
async fn handshake(
    server: Arc<WorkloadCert>,
    client: Arc<WorkloadCert>,
    expected: Identity,
    sb: TlsBackend,
    cb: TlsBackend,
) -> Result<(Option<Identity>, Option<Identity>), String> {
    let acceptor = TlsAcceptor::new(server, sb).unwrap();
    let connector = TlsConnector::new(client, cb).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let s = tokio::spawn(async move {
        let mut s = acceptor.accept(a).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        s.write_all(&buf).await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(s.peer_identity())
    });
    let c = tokio::spawn(async move {
        let mut c = connector
            .connect(b, &[expected])
            .await
            .map_err(|e| e.to_string())?;
        c.write_all(b"ping").await.map_err(|e| e.to_string())?;
        c.flush().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        if &buf != b"ping" {
            return Err(format!("echo {buf:?}"));
        }
        Ok::<_, String>(c.peer_identity())
    });
    let (s, c) = tokio::join!(s, c);
    match (s.unwrap(), c.unwrap()) {
        (Ok(s), Ok(c)) => Ok((s, c)),
        (s, c) => Err(format!("server {:?}, client {:?}", s.err(), c.err())),
    }
}

#[tokio::test]
async fn independent_fake_ca_signers_trust_each_other() {
    let (a, b) = (fake_signer(), fake_signer());
    let server_id = Identity::new("cluster.local", "demo", "server");
    let client_id = Identity::new("cluster.local", "demo", "client");
    let server = issue(a.as_ref(), &server_id).await;
    let client = issue(b.as_ref(), &client_id).await;
    assert_eq!(server.roots_pem(), client.roots_pem(), "one root");
    assert_eq!(server.roots_pem(), vec![ambit_core::ca::fake_root_pem()]);
    for sb in TlsBackend::all() {
        for cb in TlsBackend::all() {
            let (seen_client, seen_server) =
                handshake(server.clone(), client.clone(), server_id.clone(), *sb, *cb)
                    .await
                    .unwrap_or_else(|e| panic!("{sb}/{cb}: {e}"));
            assert_eq!(seen_client, Some(client_id.clone()), "{sb}/{cb}");
            assert_eq!(seen_server, Some(server_id.clone()), "{sb}/{cb}");
        }
    }

    // The control: a CA with its own root is not trusted by a FAKE_CA peer, nor trusts one.
    let other = LocalCa::generate("cluster.local").unwrap();
    let stranger = issue(&other, &client_id).await;
    let backend = TlsBackend::all()[0];
    assert!(
        handshake(
            server.clone(),
            stranger.clone(),
            server_id.clone(),
            backend,
            backend
        )
        .await
        .is_err()
    );
    let stranger_server = issue(&other, &server_id).await;
    assert!(
        handshake(stranger_server, client, server_id.clone(), backend, backend)
            .await
            .is_err()
    );
}
