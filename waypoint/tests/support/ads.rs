//! A scripted control plane: a delta ADS server over TLS (a `localhost` certificate from the test's CA) that hands
//! each stream to the test, which reads the waypoint's requests and writes the responses itself.

use std::time::Duration;

use ambit_core::ca::LocalCa;
use ambit_proto::xds::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use ambit_proto::xds::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

/// One ADS stream: what the client sends, and where the test writes its responses.
pub type Stream = (
    mpsc::UnboundedReceiver<DeltaDiscoveryRequest>,
    mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, Status>>,
);

#[derive(Clone)]
struct Ads(mpsc::UnboundedSender<Stream>);

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type DeltaAggregatedResourcesStream =
        UnboundedReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut inbound = request.into_inner();
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                if req_tx.send(r).is_err() {
                    break;
                }
            }
        });
        let (resp_tx, resp_rx) = mpsc::unbounded_channel();
        let _ = self.0.send((req_rx, resp_tx));
        Ok(Response::new(UnboundedReceiverStream::new(resp_rx)))
    }
}

/// Starts the server on `127.0.0.1` (reach it as `localhost:<port>`, trusting `ca`'s root): its port, and the
/// streams as clients open them.
pub async fn serve(ca: &LocalCa) -> (u16, mpsc::UnboundedReceiver<Stream>) {
    let (chain, key) = ca
        .issue_server_cert(&["localhost".to_owned()], &[], Duration::from_secs(3600))
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (conns_tx, conns) = mpsc::unbounded_channel();
    let router = tonic::transport::Server::builder()
        .tls_config(
            tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(chain.concat(), key)),
        )
        .unwrap()
        .add_service(AggregatedDiscoveryServiceServer::new(Ads(conns_tx)));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    (port, conns)
}

/// A waypoint (`demo/waypoint`, listeners on ephemeral loopback ports) whose certificates come from `ca_dir` and
/// whose whole configuration comes from the control plane at `localhost:<port>`; and its identity.
pub async fn waypoint(
    ca_dir: &std::path::Path,
    ca: &LocalCa,
    port: u16,
) -> (ambit_waypoint::app::Running, ambit_core::Identity) {
    let env: std::collections::HashMap<String, String> = [
        ("LOCAL_CA_DIR", ca_dir.to_str().unwrap().to_owned()),
        ("XDS_ADDRESS", format!("localhost:{port}")),
        ("XDS_ROOT_CA", ca.root_pem()),
        ("POD_NAMESPACE", "demo".into()),
        ("GATEWAY_NAME", "waypoint".into()),
        ("INSTANCE_IP", "127.0.0.1".into()),
        ("WAYPOINT_HBONE_ADDR", "127.0.0.1:0".into()),
        ("WAYPOINT_ADMIN_ADDR", "127.0.0.1:0".into()),
        ("WAYPOINT_STATS_ADDR", "127.0.0.1:0".into()),
        ("WAYPOINT_READINESS_ADDR", "127.0.0.1:0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let cfg = ambit_waypoint::config::Config::from_env(&env).unwrap();
    let id = cfg.identity();
    let running = ambit_waypoint::app::start(cfg, ambit_core::logging::LogHandle::noop())
        .await
        .unwrap();
    (running, id)
}
