//! `ambit-node-agent`: one per node. Learns the node's pods either from the Kubernetes API (`--kube`, or no
//! `--pods`: the pods of `NODE_NAME` and the namespaces, watched) or from a JSON file written by `ambit local`
//! (`--pods`), captures the enrolled ones and serves ZDS to the node's ztunnel.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_cni::install::InstallConfig;
use ambit_cni::netns::{AnnotationNetns, NETNS_ANNOTATION, NetnsLookup, ProcNetns};
use ambit_cni::plugin_install as install;
use ambit_cni::{AgentConfig, LocalPod, NodeAgent, ZdsServer};
use anyhow::{Context, bail};
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
    /// namespace_labels); re-read when it changes. Without it the agent runs in Kubernetes mode.
    #[arg(long, conflicts_with = "kube")]
    pods: Option<PathBuf>,
    /// Kubernetes mode (the default without --pods): watch this node's pods and the namespaces.
    #[arg(long)]
    kube: bool,
    /// This node's name (Kubernetes mode): pods with `spec.nodeName` equal to it are this agent's.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Kubeconfig (Kubernetes mode); without it KUBECONFIG, ~/.kube/config, then the in-cluster service account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The host's proc filesystem, scanned for pods' cgroups to find their network namespaces (Kubernetes mode).
    #[arg(long, default_value = "/proc")]
    proc_root: PathBuf,
    /// Take each pod's network namespace from its `ambit.dev/netns` annotation instead of scanning the proc
    /// filesystem (Kubernetes mode, for the local mesh). UNSAFE on a shared cluster: anyone allowed to annotate a
    /// pod could point the agent at any network namespace on the node and have its traffic redirected.
    #[arg(long)]
    netns_from_annotation: bool,
    /// Redirect pods' DNS (port 53) to ztunnel's DNS proxy (pod annotation `ambient.istio.io/dns-capture`
    /// overrides).
    #[arg(long, env = "DNS_CAPTURE", default_value_t = true, action = clap::ArgAction::Set)]
    dns_capture: bool,
    /// Namespaces never captured.
    #[arg(long, value_delimiter = ',', default_value = "kube-system")]
    excluded_namespaces: Vec<String>,
    #[command(flatten)]
    cni: CniArgs,
}

/// The chained CNI plugin (Kubernetes mode): installed into the node's CNI configuration, answered on a socket.
#[derive(clap::Args, Debug)]
struct CniArgs {
    /// Install the `ambit-cni` plugin into the node's CNI configuration and answer it, so pods are captured
    /// before their containers start; removed again when the agent stops.
    #[arg(long, env = "INSTALL_CNI", default_value_t = false, action = clap::ArgAction::Set)]
    install_cni: bool,
    /// Where the node's CNI binaries are (the plugin is copied there).
    #[arg(long, env = "CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// Where the node's CNI configuration is.
    #[arg(long, env = "CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// The primary CNI's configuration file; empty: the first one, as the runtime picks it.
    #[arg(long, env = "CNI_CONF_FILE_NAME", default_value = "")]
    cni_conf_file_name: String,
    /// Chain after the primary CNI (the only way Ambit installs: `false` is refused).
    #[arg(long, env = "CHAINED_CNI_PLUGIN", default_value_t = true, action = clap::ArgAction::Set)]
    chained_cni_plugin: bool,
    /// The socket the plugin asks the agent on.
    #[arg(long, env = "CNI_PLUGIN_SOCKET", default_value = ambit_cni::plugin::DEFAULT_SOCKET)]
    cni_plugin_socket: PathBuf,
    /// What the plugin does when the agent cannot capture a pod: `open` (the pod starts uncaptured and is
    /// captured when the agent can; Istio's behaviour) or `closed` (the pod does not start).
    #[arg(long, env = "CNI_FAILURE_MODE", default_value = "open")]
    cni_failure_mode: String,
    /// The plugin binary to install; default: `ambit-cni` next to this binary.
    #[arg(long, env = "CNI_PLUGIN_BINARY")]
    cni_plugin_binary: Option<PathBuf>,
}

/// Where the node's pods come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PodSource {
    File(PathBuf),
    Kube {
        node: String,
        kubeconfig: Option<PathBuf>,
        netns: NetnsSource,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NetnsSource {
    Proc(PathBuf),
    Annotation,
}

#[derive(Debug, Clone)]
struct Config {
    zds_socket: PathBuf,
    source: PodSource,
    agent: AgentConfig,
    /// The plugin install (Kubernetes mode with INSTALL_CNI).
    cni: Option<InstallConfig>,
}

impl Config {
    /// The effective configuration from the flags (and their environment variables).
    fn resolve(args: Args) -> anyhow::Result<Config> {
        let source = match args.pods {
            Some(path) => PodSource::File(path),
            None => {
                let node = match args.node_name.filter(|n| !n.trim().is_empty()) {
                    Some(n) => n.trim().to_owned(),
                    None => bail!(
                        "Kubernetes mode needs this node's name: set NODE_NAME (or --node-name), or pass --pods"
                    ),
                };
                let netns = if args.netns_from_annotation {
                    NetnsSource::Annotation
                } else {
                    NetnsSource::Proc(args.proc_root)
                };
                PodSource::Kube {
                    node,
                    kubeconfig: args.kubeconfig,
                    netns,
                }
            }
        };
        let cni = args.cni.resolve(&source)?;
        Ok(Config {
            zds_socket: args.zds_socket,
            cni,
            source,
            agent: AgentConfig {
                dns_capture: args.dns_capture,
                excluded_namespaces: args.excluded_namespaces,
            },
        })
    }
}

impl CniArgs {
    fn resolve(self, source: &PodSource) -> anyhow::Result<Option<InstallConfig>> {
        if !self.install_cni {
            return Ok(None);
        }
        if !matches!(source, PodSource::Kube { .. }) {
            bail!(
                "INSTALL_CNI needs Kubernetes mode (the plugin names pods the API knows); drop --pods"
            );
        }
        if !self.chained_cni_plugin {
            bail!(
                "CHAINED_CNI_PLUGIN=false: Ambit's plugin only chains after the primary CNI; set it to true \
                 (the Helm value `chained`)"
            );
        }
        let plugin_binary = match self.cni_plugin_binary {
            Some(p) => p,
            None => std::env::current_exe()
                .context("find this binary's directory for ambit-cni")?
                .with_file_name(ambit_cni::plugin::PLUGIN_TYPE),
        };
        let name = self.cni_conf_file_name.trim();
        Ok(Some(InstallConfig {
            bin_dir: self.cni_bin_dir,
            conf_dir: self.cni_conf_dir,
            conf_file_name: (!name.is_empty()).then(|| name.to_owned()),
            plugin_binary,
            socket: self.cni_plugin_socket,
            failure_mode: self.cni_failure_mode,
        }))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _log = ambit_core::logging::init("info", ambit_core::logging::json_from_env());
    let config = Config::resolve(args)?;
    // kube-client builds its TLS config with the process-level provider (see build notes).
    ambit_core::tls::install_default_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    info!(config = ?config, "node agent configuration");
    let (trigger, drain) = ambit_core::drain::new();
    let zds = ZdsServer::start(&config.zds_socket, drain)
        .with_context(|| format!("listen on {}", config.zds_socket.display()))?;
    info!(socket = %config.zds_socket.display(), "node agent started");
    let agent = NodeAgent::new(config.agent.clone(), zds);
    let shutdown = ambit_core::signal::shutdown();
    match &config.source {
        PodSource::File(path) => watch_file(path, agent, shutdown).await,
        PodSource::Kube {
            node,
            kubeconfig,
            netns,
        } => {
            let (client, url) = ambit_core::kube::client(kubeconfig.as_deref()).await?;
            let lookup: Arc<dyn NetnsLookup> = match netns {
                NetnsSource::Proc(root) => Arc::new(ProcNetns::new(root)),
                NetnsSource::Annotation => {
                    warn!(
                        "network namespaces from the {NETNS_ANNOTATION} pod annotation: whoever can annotate pods \
                         chooses what is redirected (local mesh only)"
                    );
                    Arc::new(AnnotationNetns::new())
                }
            };
            info!(api = %url, node = %node, "Kubernetes mode");
            let plugin = match &config.cni {
                Some(cni) => Some(install::start(cni)?),
                None => None,
            };
            let (calls, installed) = plugin.unzip();
            ambit_cni::kube::run(client, node, agent, lookup, calls, shutdown).await;
            if let Some(installed) = installed {
                installed.uninstall().await;
            }
        }
    }
    info!("node agent stopping (pods keep their redirection; a restarted agent takes them over)");
    trigger.drain(Duration::from_secs(1)).await;
    Ok(())
}

/// File mode: re-reads `path` every 300 ms and applies it when it changed.
async fn watch_file(
    path: &std::path::Path,
    mut agent: NodeAgent,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut last: Option<Vec<u8>> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        let bytes = match std::fs::read(path) {
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
                let _ = agent.apply(&pods).await;
                last = Some(bytes);
            }
            // Keep the last good list; say what is wrong once per change.
            Err(e) => {
                warn!(file = %path.display(), error = %e, "invalid pod list; keeping the previous one");
                last = Some(bytes);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn resolve(argv: &[&str], node: Option<&str>) -> anyhow::Result<Config> {
        let mut args =
            Args::try_parse_from(std::iter::once("ambit-node-agent").chain(argv.iter().copied()))?;
        // Not from the test process's environment.
        args.node_name = node.map(str::to_owned).or(args.node_name);
        Config::resolve(args)
    }

    #[test]
    fn pods_file_mode_and_kubernetes_mode() {
        let c = resolve(&["--pods", "/tmp/p.json"], None).unwrap();
        assert_eq!(c.source, PodSource::File("/tmp/p.json".into()));
        let c = resolve(&[], Some("node1")).unwrap();
        assert_eq!(
            c.source,
            PodSource::Kube {
                node: "node1".into(),
                kubeconfig: None,
                netns: NetnsSource::Proc("/proc".into())
            }
        );
        let c = resolve(
            &[
                "--kube",
                "--node-name",
                "n2",
                "--kubeconfig",
                "/kc",
                "--netns-from-annotation",
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            c.source,
            PodSource::Kube {
                node: "n2".into(),
                kubeconfig: Some("/kc".into()),
                netns: NetnsSource::Annotation
            }
        );
    }

    #[test]
    fn the_cni_install_needs_kubernetes_mode_and_chaining() {
        let c = resolve(
            &["--install-cni", "true", "--cni-plugin-binary", "/bin/true"],
            Some("n"),
        )
        .unwrap();
        let cni = c.cni.unwrap();
        assert_eq!(cni.socket, PathBuf::from(ambit_cni::plugin::DEFAULT_SOCKET));
        assert_eq!(cni.conf_file_name, None);
        assert_eq!(cni.failure_mode, "open");
        assert_eq!(resolve(&[], Some("n")).unwrap().cni, None);
        let e = resolve(&["--install-cni", "true", "--pods", "/p"], None).unwrap_err();
        assert!(e.to_string().contains("Kubernetes mode"), "{e}");
        let e = resolve(
            &["--install-cni", "true", "--chained-cni-plugin", "false"],
            Some("n"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("CHAINED_CNI_PLUGIN"), "{e}");
    }

    #[test]
    fn kubernetes_mode_needs_a_node_name_and_excludes_the_file() {
        let e = resolve(&["--kube"], Some("  ")).unwrap_err();
        assert!(e.to_string().contains("NODE_NAME"), "{e}");
        assert!(resolve(&["--kube", "--pods", "/p"], Some("n")).is_err());
    }
}
