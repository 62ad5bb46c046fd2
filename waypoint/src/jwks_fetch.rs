//! Fetching a `jwksUri` for the JWKS cache: plain `http://` with hyper, bounded in time and size. `https://` URIs
//! are refused with a message saying what to do instead (put the keys inline in the RequestAuthentication's
//! `jwks`): the waypoint has mesh identities, not a web PKI trust store.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::jwt::{FetchError, JwksFetcher};

const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BYTES: usize = 1024 * 1024;

pub struct HttpFetcher;

#[async_trait::async_trait]
impl JwksFetcher for HttpFetcher {
    async fn fetch(&self, uri: &str) -> Result<String, FetchError> {
        tokio::time::timeout(TIMEOUT, fetch(uri))
            .await
            .map_err(|_| FetchError(format!("{uri}: timed out after {TIMEOUT:?}")))?
    }
}

async fn fetch(uri: &str) -> Result<String, FetchError> {
    let e = |what: &str, why: String| FetchError(format!("{uri}: {what}: {why}"));
    let parsed: http::Uri = uri
        .parse()
        .map_err(|x: http::uri::InvalidUri| e("uri", x.to_string()))?;
    match parsed.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(FetchError(format!(
                "{uri}: https JWKS URIs are not fetched by the waypoint; put the keys in the \
                 RequestAuthentication's `jwks` (or serve them over http inside the mesh)"
            )));
        }
        other => return Err(e("scheme", format!("{other:?} is not http"))),
    }
    let host = parsed.host().ok_or_else(|| e("uri", "no host".into()))?;
    let port = parsed.port_u16().unwrap_or(80);
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|x| e("connect", x.to_string()))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|x| e("http", x.to_string()))?;
    tokio::spawn(conn);
    let path = parsed.path_and_query().map_or("/", |p| p.as_str());
    let req = http::Request::builder()
        .uri(path)
        .header(http::header::HOST, host)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|x| e("request", x.to_string()))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|x| e("http", x.to_string()))?;
    if !resp.status().is_success() {
        return Err(e("status", resp.status().to_string()));
    }
    let body = Limited::new(resp.into_body(), MAX_BYTES)
        .collect()
        .await
        .map_err(|x| e("body", x.to_string()))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| e("body", "not UTF-8".into()))
}
