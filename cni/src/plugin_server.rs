//! The node agent's side of the plugin protocol ([`crate::plugin`]): the unix socket every `ambit-cni`
//! invocation connects to. Each request becomes a [`PluginCall`] on a channel to the reconcile loop, which owns
//! the node's pods and answers through the call's oneshot; this module only frames, bounds and times the
//! conversation, so a plugin that sends garbage, stalls or hangs up costs one task and nothing else.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::plugin::{PluginRequest, PluginResponse};

/// The longest request line read (a request is a few hundred bytes).
pub const MAX_REQUEST: u64 = 64 * 1024;
/// How long a plugin has to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the reconcile loop has to decide; under the plugin's own wait (`plugin::AGENT_TIMEOUT`), so the
/// plugin gets an answer saying why rather than a timeout.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(25);

/// One plugin request, waiting for the reconcile loop's answer.
#[derive(Debug)]
pub struct PluginCall {
    pub request: PluginRequest,
    pub reply: oneshot::Sender<PluginResponse>,
}

/// Listens on `path` (its directory created, a stale socket from an earlier agent replaced, the socket made
/// owner-only: the plugin runs as root) and forwards each request to the returned channel until the receiver is
/// dropped.
pub fn serve(path: &Path) -> io::Result<mpsc::Receiver<PluginCall>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept(listener, path.to_owned(), tx));
    Ok(rx)
}

async fn accept(listener: UnixListener, path: PathBuf, tx: mpsc::Sender<PluginCall>) {
    loop {
        tokio::select! {
            _ = tx.closed() => break,
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    tokio::spawn(converse(stream, tx.clone()));
                }
                Err(e) => {
                    warn!(socket = %path.display(), error = %e, "accepting a plugin connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// One connection: a request line in, one answer line out.
async fn converse(stream: UnixStream, tx: mpsc::Sender<PluginCall>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let answer = match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => PluginResponse::error(format!("no request within {READ_TIMEOUT:?}")),
        Ok(Err(e)) => PluginResponse::error(format!("reading the request: {e}")),
        Ok(Ok(_)) if !line.ends_with('\n') => PluginResponse::error(format!(
            "the request is not one line of at most {MAX_REQUEST} bytes"
        )),
        Ok(Ok(_)) => match serde_json::from_str::<PluginRequest>(line.trim()) {
            Err(e) => PluginResponse::error(format!("not a plugin request: {e}")),
            Ok(request) => decide(request, &tx).await,
        },
    };
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    if let Err(e) = write.write_all(&out).await {
        debug!(error = %e, "the plugin left before its answer");
    }
    let _ = write.shutdown().await;
}

async fn decide(request: PluginRequest, tx: &mpsc::Sender<PluginCall>) -> PluginResponse {
    let (reply, answer) = oneshot::channel();
    if tx.send(PluginCall { request, reply }).await.is_err() {
        return PluginResponse::error("the node agent is shutting down");
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(a)) => a,
        Ok(Err(_)) => PluginResponse::error("the node agent dropped the request"),
        Err(_) => PluginResponse::error(format!(
            "the node agent did not decide within {ANSWER_TIMEOUT:?}"
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::plugin::PluginCommand;

    async fn ask(path: &Path, bytes: &[u8]) -> String {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(bytes).await.unwrap();
        // As a plugin that gave up: its end is closed.
        s.shutdown().await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn requests_reach_the_loop_and_bad_ones_get_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cni.sock");
        let mut calls = serve(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        tokio::spawn(async move {
            while let Some(call) = calls.recv().await {
                let answer = match call.request.command {
                    PluginCommand::Add => PluginResponse::Captured,
                    PluginCommand::Del => PluginResponse::Released,
                };
                let _ = call.reply.send(answer);
            }
        });
        let req = PluginRequest {
            command: PluginCommand::Add,
            container_id: "c1".into(),
            netns: "/var/run/netns/x".into(),
            pod_name: "web".into(),
            pod_namespace: "default".into(),
            pod_uid: "u1".into(),
        };
        let mut line = serde_json::to_vec(&req).unwrap();
        line.push(b'\n');
        assert_eq!(ask(&path, &line).await.trim(), r#"{"outcome":"captured"}"#);
        let garbage = ask(&path, b"{\"command\":\"EXPLODE\"}\n").await;
        assert!(garbage.contains("not a plugin request"), "{garbage}");
        let unterminated = ask(&path, b"{\"command\":\"ADD\"").await;
        assert!(unterminated.contains("not one line"), "{unterminated}");
        let huge = vec![b'x'; MAX_REQUEST as usize];
        let too_long = ask(&path, &huge).await;
        assert!(too_long.contains("at most"), "{too_long}");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let calls = serve(&path).unwrap();
        UnixStream::connect(&path).await.unwrap();
        drop(calls);
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let e = serve(&file).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }

    #[tokio::test]
    async fn a_dropped_call_is_an_error_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.sock");
        let mut calls = serve(&path).unwrap();
        let mut s = UnixStream::connect(&path).await.unwrap();
        let req = br#"{"command":"DEL","container_id":"c","netns":"","pod_name":"p","pod_namespace":"n"}"#;
        s.write_all(req).await.unwrap();
        s.write_all(b"\n").await.unwrap();
        drop(calls.recv().await.unwrap());
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.contains("dropped the request"), "{out}");
    }
}
