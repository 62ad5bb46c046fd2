//! Fetching a `jwksUri` over `http://` or `https://` (HTTP/1.1 with hyper, one connection per fetch, bounded in
//! time and size). `https://` verifies the server against the system's trust store (`/etc/ssl/certs`, or
//! `SSL_CERT_FILE` / `SSL_CERT_DIR`) or the roots given to [`HttpFetcher::with_roots`], with the URI's host as the
//! server name. `file://` key sets never get here: [`super::JwksCache`] reads them itself.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::warn;

use super::{FetchError, JwksFetcher};

const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set accepted (real ones are a few KiB).
const MAX_BYTES: usize = 1024 * 1024;

/// The fetcher the waypoint and `ambit authz check` use.
pub struct HttpFetcher {
    tls: Arc<rustls::ClientConfig>,
}

impl HttpFetcher {
    /// Trusting the system's roots. A trust store that cannot be read leaves `https://` URIs failing with a
    /// certificate error (logged once here), never a panic.
    pub fn with_system_roots() -> Self {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            warn!(error = %e, "reading the system trust store for https jwksUri");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        if ignored > 0 || added == 0 {
            warn!(
                added,
                ignored, "system trust store for https jwksUri: few or unusable certificates"
            );
        }
        Self::with_roots(roots)
    }

    /// Trusting exactly `roots`.
    pub fn with_roots(roots: RootCertStore) -> Self {
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| {
            // The default provider always supports the safe defaults; keep a config that verifies anyway.
            rustls::ClientConfig::builder()
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth()
        });
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        HttpFetcher { tls: Arc::new(tls) }
    }
}

#[async_trait::async_trait]
impl JwksFetcher for HttpFetcher {
    async fn fetch(&self, uri: &str) -> Result<String, FetchError> {
        tokio::time::timeout(TIMEOUT, self.get(uri))
            .await
            .map_err(|_| FetchError(format!("{uri}: timed out after {TIMEOUT:?}")))?
    }
}

fn error(uri: &str, what: &str, why: impl std::fmt::Display) -> FetchError {
    FetchError(format!("{uri}: {what}: {why}"))
}

impl HttpFetcher {
    async fn get(&self, uri: &str) -> Result<String, FetchError> {
        let parsed: http::Uri = uri.parse().map_err(|x| error(uri, "uri", x))?;
        let tls = match parsed.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            other => return Err(error(uri, "scheme", format!("{other:?} is not http(s)"))),
        };
        let host = parsed.host().ok_or_else(|| error(uri, "uri", "no host"))?;
        // `[::1]` in a URI is `::1` on the socket and in the server name.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = parsed.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = TcpStream::connect((bare, port))
            .await
            .map_err(|x| error(uri, "connect", x))?;
        let authority = parsed.authority().map_or(host, |a| a.as_str());
        let path = parsed.path_and_query().map_or("/", |p| p.as_str());
        if !tls {
            return request(uri, tcp, authority, path).await;
        }
        let name =
            ServerName::try_from(bare.to_owned()).map_err(|x| error(uri, "server name", x))?;
        let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|x| error(uri, "tls", x))?;
        request(uri, stream, authority, path).await
    }
}

async fn request<IO>(uri: &str, io: IO, authority: &str, path: &str) -> Result<String, FetchError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|x| error(uri, "http", x))?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|x| error(uri, "request", x))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|x| error(uri, "http", x))?;
    if !resp.status().is_success() {
        return Err(error(uri, "status", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_BYTES)
        .collect()
        .await
        .map_err(|x| error(uri, "body", x))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| error(uri, "body", "not UTF-8"))
}

#[cfg(test)]
mod tests;
