//! `controller token … > FILE` and `--output FILE` make token files that work when sent as they are (upstream
//! ztunnel puts the file's bytes verbatim after `Bearer `): the real `controller` binary writes the files, the
//! in-process controller serves the CA and xDS over TLS, and a client sends the files' raw bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ambit_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use ambit_proto::type_url::ADDRESS;
use ambit_proto::xds::DeltaDiscoveryRequest;
use tonic::metadata::MetadataValue;

const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";

/// Runs `controller token <args> --state-dir <state>` with standard output going to `stdout` (a file, so not a
/// terminal, as with a shell's `>`).
fn token_command(state: &Path, args: &[&str], stdout: &Path) {
    let out = std::fs::File::create(stdout).unwrap();
    let result = Command::new(env!("CARGO_BIN_EXE_controller"))
        .arg("token")
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::from(out))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "controller token {args:?}: {}",
        String::from_utf8_lossy(&result.stderr)
    );
}

/// The `authorization` header upstream ztunnel builds from a token file: `Bearer ` and the file's bytes as they
/// are. Fails (as ztunnel's header construction does) when the bytes cannot go into a header.
fn header_from_file(path: &Path) -> MetadataValue<tonic::metadata::Ascii> {
    let raw = std::fs::read(path).unwrap();
    assert!(!raw.is_empty(), "{} is empty", path.display());
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(&raw);
    MetadataValue::try_from(value.as_slice()).unwrap_or_else(|e| {
        panic!(
            "{} ({:?}) is not a valid header value: {e}",
            path.display(),
            String::from_utf8_lossy(&raw)
        )
    })
}

#[tokio::test]
async fn token_files_from_the_cli_are_accepted_as_they_are() {
    let manifests = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    std::fs::write(manifests.path().join("demo.yaml"), support::MANIFESTS).unwrap();

    // `controller token --node node1 > node-token` and `controller token --pod demo/client -o pod-token`.
    let node_file = files.path().join("node-token");
    token_command(state.path(), &["--node", "node1"], &node_file);
    let pod_file = files.path().join("pod-token");
    let pod_stdout = files.path().join("pod-stdout");
    token_command(
        state.path(),
        &[
            "--pod",
            "demo/client",
            "--output",
            pod_file.to_str().unwrap(),
        ],
        &pod_stdout,
    );
    assert_eq!(
        std::fs::read(&pod_stdout).unwrap(),
        b"",
        "--output prints nothing"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&pod_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is private");
    for f in [&node_file, &pod_file] {
        let raw = std::fs::read(f).unwrap();
        assert!(
            raw.starts_with(b"ambit1.") && !raw.ends_with(b"\n"),
            "{}: {:?}",
            f.display(),
            String::from_utf8_lossy(&raw)
        );
    }
    let node_header = header_from_file(&node_file);
    let pod_header = header_from_file(&pod_file);

    // The controller on the same state directory (so the same token key).
    let running = support::start_ready(support::config(manifests.path(), state.path())).await;
    let root = support::root_pem(state.path());
    let channel = support::secure_channel(&running, &root).await;

    // CA: the node file gets the identity of a pod on node1 (impersonated, as a shared ztunnel asks), the pod file
    // that pod's identity.
    let mut ca_client = IstioCertificateServiceClient::new(channel.clone());
    let ask = |header: &MetadataValue<tonic::metadata::Ascii>, impersonate: bool| {
        let mut req = tonic::Request::new(support::cert_request(CLIENT, impersonate));
        req.metadata_mut().insert("authorization", header.clone());
        req
    };
    for (who, req) in [
        ("node", ask(&node_header, true)),
        ("pod", ask(&pod_header, false)),
    ] {
        let chain = ca_client
            .create_certificate(req)
            .await
            .unwrap_or_else(|s| panic!("{who} token refused: {s}"))
            .into_inner()
            .cert_chain;
        assert_eq!(chain.len(), 2, "{who}");
        assert_eq!(chain[1], root, "{who}: root last");
    }

    // xDS on the secure port with the pod file's bytes: the stream opens and the subscription is answered.
    let (tx, mut stream) = support::open_delta(channel, Some(pod_header))
        .await
        .expect("xDS accepts the token file");
    tx.send(DeltaDiscoveryRequest {
        type_url: ADDRESS.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("an answer within 60 s")
        .unwrap()
        .unwrap();
    assert_eq!(first.type_url, ADDRESS);
    assert!(
        first
            .resources
            .iter()
            .any(|r| r.name.contains("demo/client")),
        "{:?}",
        first.resources.iter().map(|r| &r.name).collect::<Vec<_>>()
    );
    running.shutdown(Duration::from_secs(2)).await;
}
