//! The proxies' own control-plane clients (`ambit_core::xds::XdsClient`, `ambit_core::grpc::IstioCaClient`)
//! against this controller, in-process, over TLS with a node token: what a ztunnel pointed at the controller does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ambit_controller::ca::{Subject, TokenAuthority};
use ambit_core::grpc::{ControlPlaneConfig, IstioCaClient, RootCa, TokenSource};
use ambit_core::readiness::Readiness;
use ambit_core::signer::{CsrSigner, SignError};
use ambit_core::xds::{Rejection, XdsClient, XdsHandler, XdsUpdate};
use ambit_core::{Identity, drain};
use ambit_proto::type_url::{ADDRESS, AUTHORIZATION};
use support::{MANIFESTS, POLICY, http_get};

/// Records what it is given; rejects one workload to exercise NACKs.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(String, String)>>,
}

const REJECTED: &str = "Kubernetes//Pod/demo/server";

impl XdsHandler for Recorder {
    fn apply(&self, type_url: &str, updates: Vec<XdsUpdate>) -> Vec<Rejection> {
        let mut rejected = Vec::new();
        let mut seen = self.seen.lock().unwrap();
        for u in updates {
            if let XdsUpdate::Upsert { name, .. } = u {
                if name == REJECTED {
                    rejected.push(Rejection {
                        name: name.clone(),
                        reason: "rejected by the test".into(),
                    });
                }
                seen.push((type_url.to_owned(), name));
            }
        }
        rejected
    }
}

impl Recorder {
    fn has(&self, type_url: &str, name: &str) -> bool {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .any(|(t, n)| t == type_url && n == name)
    }
}

/// Polls until `f` holds; the deadline is generous because CI may share its two cores with other builds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what} (30 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_clients_get_config_and_certificates_from_the_controller() {
    let manifests = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(manifests.path().join("demo.yaml"), MANIFESTS).unwrap();
    let running = support::start(support::config(manifests.path(), state.path())).await;
    let token = TokenAuthority::load_or_create(state.path()).unwrap().issue(
        Subject::Node("node1".into()),
        Duration::from_secs(600),
        SystemTime::now(),
    );
    let cp = ControlPlaneConfig {
        // scheme-less, as users often write it; verified against the controller's root by the name `localhost`
        address: format!("127.0.0.1:{}", running.secure_addr.port()),
        root_ca: RootCa::from_env_value(state.path().join("root-cert.pem").to_str().unwrap()),
        alt_hostname: Some("localhost".into()),
        token: TokenSource::Literal(token),
        cluster_id: "Kubernetes".into(),
        extra_headers: vec![],
    };

    // xDS: readiness flips once both types were answered; resources arrive; one rejected resource is NACKed.
    let readiness = Readiness::new();
    let recorder = Arc::new(Recorder::default());
    let mut registry = prometheus_client::registry::Registry::default();
    let env = [
        ("POD_NAME", "ztunnel-node1"),
        ("POD_NAMESPACE", "istio-system"),
        ("NODE_NAME", "node1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let client = XdsClient::new(
        cp.clone(),
        ambit_core::xds::node_from_env(&env),
        vec![ADDRESS.to_owned(), AUTHORIZATION.to_owned()],
        recorder.clone(),
        readiness.register_task("state manager"),
        &mut registry,
    );
    let (trigger, watcher) = drain::new();
    let task = tokio::spawn(client.run(watcher));
    eventually("xds readiness", || readiness.is_ready()).await;
    eventually("the client's workload", || {
        recorder.has(ADDRESS, "Kubernetes//Pod/demo/client")
    })
    .await;
    let monitoring = running.monitoring_addr;
    let mut rejects_seen = false;
    for _ in 0..100 {
        let metrics = http_get(monitoring, "/metrics").await;
        rejects_seen = metrics
            .lines()
            .any(|l| l.starts_with("pilot_total_xds_rejects_total") && !l.ends_with(" 0"));
        if rejects_seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(rejects_seen, "the controller saw our NACK");

    // A policy written to the manifests reaches the client as an Authorization push.
    std::fs::write(manifests.path().join("policy.yaml"), POLICY).unwrap();
    eventually("the pushed policy", || {
        recorder.has(AUTHORIZATION, "demo/deny-client")
    })
    .await;

    // CA: as node1's ztunnel, impersonating the client pod (on node1) works; the server pod (node2) is refused.
    let ca_client = IstioCaClient::new(cp, true).unwrap();
    let client_id = Identity::new("cluster.local", "demo", "client");
    let (_key, csr) = ambit_core::tls::generate_csr(&client_id).unwrap();
    let chain = ca_client
        .sign(&csr, &client_id, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf and root");
    let server_id = Identity::new("cluster.local", "demo", "server");
    let (_key, csr) = ambit_core::tls::generate_csr(&server_id).unwrap();
    let refused = ca_client
        .sign(&csr, &server_id, Duration::from_secs(3600))
        .await;
    assert!(
        matches!(refused, Err(SignError::Unauthenticated(_))),
        "{refused:?}"
    );

    assert!(trigger.drain(Duration::from_secs(2)).await || task.is_finished());
    running.shutdown(Duration::from_secs(1)).await;
}
