//! The whole controller in-process: manifests on disk, TLS xDS + CA on the secure port with a token from the
//! state directory, the monitoring endpoints, live reload of a policy file, and drain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ambit_controller::app::{self, Config};
use ambit_controller::ca::{Subject, TokenAuthority};
use ambit_controller::compute::ComputeConfig;
use ambit_core::ca::LocalCa;
use ambit_proto::ca::IstioCertificateRequest;
use ambit_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use ambit_proto::type_url::{ADDRESS, AUTHORIZATION};
use ambit_proto::xds::DeltaDiscoveryRequest;
use ambit_proto::xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const MANIFESTS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: demo}\nspec: {nodeName: node1, serviceAccountName: client}\nstatus: {podIP: 10.0.0.1}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: demo, labels: {app: server}}\nspec: {nodeName: node2, serviceAccountName: server}\nstatus: {podIP: 10.0.0.2}\n";

const POLICY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-client, namespace: demo}\n\
spec: {action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]}\n";

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn csr(uri: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(uri).unwrap(),
    )];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test]
async fn serves_xds_and_certificates_over_tls_and_reloads_manifests() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let manifests = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(manifests.path().join("demo.yaml"), MANIFESTS).unwrap();
    let cfg = Config {
        manifests: vec![manifests.path().to_path_buf()],
        state_dir: state.path().to_path_buf(),
        tls_sans: vec!["localhost".into(), "127.0.0.1".into()],
        listen: "127.0.0.1".parse().unwrap(),
        xds_port: 0,
        secure_port: 0,
        monitoring_port: 0,
        compute: ComputeConfig::default(),
        debounce: Duration::from_millis(20),
        require_xds_token: true,
        drain_deadline: Duration::from_secs(1),
        deploy_dir: None,
    };
    let ca = Arc::new(LocalCa::load_or_create(&state.path().join("ca"), "cluster.local").unwrap());
    let running = app::start(cfg, ca).await.unwrap();
    let mut ready = running.outputs.ready.clone();
    ready.wait_for(|r| *r).await.unwrap();
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
    let root = std::fs::read_to_string(state.path().join("root-cert.pem")).unwrap();
    let channel = Channel::from_shared(format!("https://{}", running.secure_addr))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&root))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();

    // CA: node1 may get the client's identity (client runs on node1), not the server's.
    let mut ca_client = IstioCertificateServiceClient::new(channel.clone());
    let ask = |id: &str| {
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: csr(id),
            validity_duration: 3600,
            metadata: Some(prost_types::Struct {
                fields: [(
                    "ImpersonatedIdentity".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(id.to_owned())),
                    },
                )]
                .into(),
            }),
        });
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
    let mut xds = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut().insert("authorization", bearer.clone());
    let mut stream = xds
        .delta_aggregated_resources(req)
        .await
        .unwrap()
        .into_inner();
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
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let manifests = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let deploy = tempfile::tempdir().unwrap();
    std::fs::write(deploy.path().join("other.yaml"), "kind: Untouched\n").unwrap();
    std::fs::write(manifests.path().join("wp.yaml"), WAYPOINT).unwrap();
    let cfg = Config {
        manifests: vec![manifests.path().to_path_buf()],
        state_dir: state.path().to_path_buf(),
        tls_sans: vec!["localhost".into()],
        listen: "127.0.0.1".parse().unwrap(),
        xds_port: 0,
        secure_port: 0,
        monitoring_port: 0,
        compute: ComputeConfig::default(),
        debounce: Duration::from_millis(20),
        require_xds_token: true,
        drain_deadline: Duration::from_secs(1),
        deploy_dir: Some(deploy.path().to_path_buf()),
    };
    let ca = Arc::new(LocalCa::load_or_create(&state.path().join("ca"), "cluster.local").unwrap());
    let running = app::start(cfg, ca).await.unwrap();
    let mut ready = running.outputs.ready.clone();
    ready.wait_for(|r| *r).await.unwrap();

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
