//! The HBONE server: one HTTP/2 connection, many CONNECT streams, each handed to the caller's handler.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use http::{HeaderMap, Method, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::{H2Config, H2Stream, HboneError, parse_authority};
use crate::drain::{DrainMode, DrainWatcher};

/// Answers one CONNECT stream: refuse it with a status, or accept it and get the stream.
pub struct Responder {
    respond: SendResponse<Bytes>,
    recv: h2::RecvStream,
}

impl Responder {
    /// Answers `status` with END_STREAM and no body.
    pub fn reject(mut self, status: StatusCode) {
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        let _ = self.respond.send_response(resp, true);
    }

    /// Answers 200 with `headers`; the stream stays open for data.
    pub fn accept(mut self, headers: HeaderMap) -> Result<H2Stream, HboneError> {
        let mut resp = Response::new(());
        *resp.headers_mut() = headers;
        let send = self.respond.send_response(resp, false)?;
        Ok(H2Stream::new(send, self.recv, None))
    }
}

/// Serves CONNECT streams on `io` until the peer closes or the drain completes. Non-CONNECT requests and
/// authorities that do not parse are answered 400 here; everything else goes to `handler` in its own task.
pub async fn serve<IO, H, F>(
    io: IO,
    cfg: Arc<H2Config>,
    mut drain: DrainWatcher,
    handler: H,
) -> Result<(), HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(http::request::Parts, Responder) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let conn = h2::server::Builder::new()
        .initial_window_size(cfg.stream_window)
        .initial_connection_window_size(cfg.connection_window)
        .max_frame_size(cfg.frame_size)
        .max_header_list_size(cfg.server_max_header_list)
        .max_concurrent_streams(cfg.server_max_concurrent_streams)
        .max_send_buffer_size(cfg.server_send_buffer)
        .handshake::<_, Bytes>(io);
    let mut conn = tokio::time::timeout(cfg.handshake_timeout, conn)
        .await
        .map_err(|_| {
            HboneError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no HTTP/2 preface in time",
            ))
        })?
        .map_err(HboneError::Handshake)?;
    let dead = super::client::keepalive(conn.ping_pong(), &cfg);
    tokio::pin!(dead);
    let mut draining = false;
    let mut forced = drain.clone();
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                None => return Ok(()),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok((req, respond))) => {
                    let (parts, recv) = req.into_parts();
                    let responder = Responder { respond, recv };
                    if parts.method != Method::CONNECT {
                        debug!(method = %parts.method, "refusing non-CONNECT request");
                        responder.reject(StatusCode::BAD_REQUEST);
                        continue;
                    }
                    let valid = parts.uri.authority().is_some_and(|a| parse_authority(a.as_str()).is_ok());
                    if !valid {
                        debug!(uri = %parts.uri, "refusing CONNECT without a usable authority");
                        responder.reject(StatusCode::BAD_REQUEST);
                        continue;
                    }
                    tokio::spawn(handler(parts, responder));
                }
            },
            mode = drain.signaled(), if !draining => {
                draining = true;
                if mode == DrainMode::Immediate {
                    return Ok(());
                }
                conn.graceful_shutdown();
            }
            _ = forced.forced(), if draining => return Ok(()),
            _ = &mut dead => {
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                return Err(HboneError::KeepaliveTimeout);
            }
        }
    }
}
