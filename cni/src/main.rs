//! `ambit-node-agent`: one per node. Reads the node's pods from a JSON file (written by `ambit local`), captures
//! the enrolled ones and serves ZDS to the node's ztunnel.

use std::path::PathBuf;
use std::time::Duration;

use ambit_cni::{AgentConfig, LocalPod, NodeAgent, ZdsServer};
use anyhow::Context;
use clap::Parser;
use tracing::{info, warn};

#[derive(Parser, Debug)]
#[command(name = "ambit-node-agent", version, about)]
struct Args {
    /// Where ztunnel connects (its INPOD_UDS).
    #[arg(
        long,
        env = "ZDS_SOCKET",
        default_value = "/var/run/ztunnel/ztunnel.sock"
    )]
    zds_socket: PathBuf,
    /// JSON list of this node's pods (uid, name, namespace, service_account, netns, labels, annotations,
    /// namespace_labels); re-read when it changes.
    #[arg(long)]
    pods: PathBuf,
    /// Redirect pods' DNS (port 53) to ztunnel's DNS proxy (pod annotation `ambient.istio.io/dns-capture`
    /// overrides).
    #[arg(long, env = "DNS_CAPTURE", default_value_t = true, action = clap::ArgAction::Set)]
    dns_capture: bool,
    /// Namespaces never captured.
    #[arg(long, value_delimiter = ',', default_value = "kube-system")]
    excluded_namespaces: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _log = ambit_core::logging::init("info", false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (trigger, drain) = ambit_core::drain::new();
    let zds = ZdsServer::start(&args.zds_socket, drain)
        .with_context(|| format!("listen on {}", args.zds_socket.display()))?;
    info!(socket = %args.zds_socket.display(), pods = %args.pods.display(), "node agent started");
    let mut agent = NodeAgent::new(
        AgentConfig {
            dns_capture: args.dns_capture,
            excluded_namespaces: args.excluded_namespaces,
        },
        zds,
    );
    let mut last: Option<Vec<u8>> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    let shutdown = ambit_core::signal::shutdown();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        let bytes = match std::fs::read(&args.pods) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => b"[]".to_vec(),
            Err(e) => {
                warn!(error = %e, "read the pod list");
                continue;
            }
        };
        if last.as_deref() == Some(&bytes[..]) {
            continue;
        }
        match serde_json::from_slice::<Vec<LocalPod>>(&bytes) {
            Ok(pods) => {
                agent.apply(&pods).await;
                last = Some(bytes);
            }
            // Keep the last good list; say what is wrong once per change.
            Err(e) => {
                warn!(file = %args.pods.display(), error = %e, "invalid pod list; keeping the previous one");
                last = Some(bytes);
            }
        }
    }
    info!("node agent stopping (pods keep their redirection; a restarted agent takes them over)");
    trigger.drain(Duration::from_secs(1)).await;
    Ok(())
}
