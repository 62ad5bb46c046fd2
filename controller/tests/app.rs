//! The whole controller in-process: manifests on disk, TLS xDS + CA on the secure port with a token from the
//! state directory, the monitoring endpoints, live reload of a policy file, and drain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime};

use ambit_controller::app::Config;
use ambit_controller::ca::{Subject, TokenAuthority};
use ambit_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use ambit_proto::type_url::{ADDRESS, AUTHORIZATION};
use ambit_proto::xds::DeltaDiscoveryRequest;
use support::{MANIFESTS, POLICY, http_get};

#[tokio::test]
async fn serves_xds_and_certificates_over_tls_and_reloads_manifests() {
    let manifests = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(manifests.path().join("demo.yaml"), MANIFESTS).unwrap();
    let running = support::start_ready(support::config(manifests.path(), state.path())).await;
    assert!(
        http_get(running.monitoring_addr, "/ready")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let dump = http_get(running.monitoring_addr, "/debug/resources").await;
    assert!(dump.contains("Kubernetes//Pod/demo/client"), "{dump}");

    // A node token from the state directory, as `controller token --node node1` prints it.
    let token = TokenAuthority::load_or_create(state.path()).unwrap().issue(
        Subject::Node("node1".into()),
        Duration::from_secs(600),
        SystemTime::now(),
    );
    let root = support::root_pem(state.path());
    let channel = support::secure_channel(&running, &root).await;
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();

    // CA: node1 may get the client's identity (client runs on node1), not the server's.
    let mut ca_client = IstioCertificateServiceClient::new(channel.clone());
    let ask = |id: &str| {
        let mut req = tonic::Request::new(support::cert_request(id, true));
        req.metadata_mut().insert("authorization", bearer.clone());
        req
    };
    let chain = ca_client
        .create_certificate(ask("spiffe://cluster.local/ns/demo/sa/client"))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], root, "root last");
    let refused = ca_client
        .create_certificate(ask("spiffe://cluster.local/ns/demo/sa/server"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // xDS over TLS with the token.
    let (tx, mut stream) = support::open_delta(channel, Some(bearer.clone()))
        .await
        .unwrap();
    for t in [ADDRESS, AUTHORIZATION] {
        tx.send(DeltaDiscoveryRequest {
            type_url: t.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let a = stream.message().await.unwrap().unwrap();
    assert_eq!(a.resources.len(), 2);
    let z = stream.message().await.unwrap().unwrap();
    assert_eq!(z.type_url, AUTHORIZATION);
    for r in [&a, &z] {
        tx.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }

    // Adding a policy file pushes exactly that policy; a broken file changes nothing.
    std::fs::write(manifests.path().join("policy.yaml"), POLICY).unwrap();
    let d = stream.message().await.unwrap().unwrap();
    assert_eq!(d.type_url, AUTHORIZATION);
    let names: Vec<&str> = d.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["demo/deny-client"]);
    let generation = running.outputs.snapshot.borrow().generation;
    std::fs::write(manifests.path().join("policy.yaml"), "kind: [broken\n").unwrap();
    std::fs::write(
        manifests.path().join("other.yaml"),
        POLICY.replace("deny-client", "second"),
    )
    .unwrap();
    let d = stream.message().await.unwrap().unwrap();
    let names: Vec<&str> = d.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["demo/second"],
        "the broken file kept its policy, nothing was removed"
    );
    assert!(d.removed_resources.is_empty());
    assert!(running.outputs.snapshot.borrow().generation > generation);

    let metrics = http_get(running.monitoring_addr, "/metrics").await;
    assert!(metrics.contains("pilot_xds 1"), "{metrics}");
    assert!(
        metrics.contains("citadel_server_success_cert_issuance_count_total 1"),
        "{metrics}"
    );
    let conns = http_get(running.monitoring_addr, "/debug/connections").await;
    assert!(conns.contains("\"acks\": 2"), "{conns}");

    running.shutdown(Duration::from_secs(2)).await;
    // The stream ends with the drain.
    assert!(matches!(stream.message().await, Ok(None) | Err(_)));
}

const WAYPOINT: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: {istio.io/use-waypoint: waypoint}}\n---\n\
apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: demo}\n\
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: server, namespace: demo}\nspec: {clusterIP: 10.96.0.9, ports: [{port: 80}]}\n";

/// The deploy directory gets the waypoint's manifests (and loses them with the Gateway); `/debug/status` serves
/// the Gateway's and the bound Service's status.
#[tokio::test]
async fn writes_waypoint_deployments_and_serves_status() {
    let manifests = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let deploy = tempfile::tempdir().unwrap();
    std::fs::write(deploy.path().join("other.yaml"), "kind: Untouched\n").unwrap();
    std::fs::write(manifests.path().join("wp.yaml"), WAYPOINT).unwrap();
    let running = support::start_ready(Config {
        deploy_dir: Some(deploy.path().to_path_buf()),
        ..support::config(manifests.path(), state.path())
    })
    .await;

    let file = deploy.path().join("waypoint-demo.waypoint.yaml");
    for _ in 0..200 {
        if file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.matches("\n---\n").count() + 1, 3, "{text}");
    assert!(
        text.contains("kind: Deployment") && text.contains("GATEWAY_NAME"),
        "{text}"
    );

    let status = http_get(
        running.monitoring_addr,
        "/debug/status?kind=Gateway&namespace=demo",
    )
    .await;
    let body = status.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, vec!["gateway/demo/waypoint"]);
    assert_eq!(
        v["gateway/demo/waypoint"]["conditions"][1]["reason"],
        "Pending"
    );
    let svc = http_get(
        running.monitoring_addr,
        "/debug/status?kind=service&name=server",
    )
    .await;
    assert!(svc.contains("WaypointIsNotReady"), "{svc}");

    // The Gateway goes: so does its file; the foreign file stays.
    std::fs::write(
        manifests.path().join("wp.yaml"),
        WAYPOINT.split("\n---\napiVersion: gateway").next().unwrap(),
    )
    .unwrap();
    for _ in 0..500 {
        if !file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!file.exists());
    assert!(deploy.path().join("other.yaml").exists());
    running.shutdown(Duration::from_secs(1)).await;
}
