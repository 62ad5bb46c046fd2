//! The Kubernetes client every component that talks to the API builds the same way (feature `kube`).

use std::path::Path;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A client from `kubeconfig` (with its current context) or, without one, as kubectl finds it: `KUBECONFIG`,
/// `~/.kube/config`, then the in-cluster service account. Returns the client and the API server's URL.
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<(Client, String)> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => Config::infer()
            .await
            .context("no Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster)")?,
    };
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    Ok((client, url))
}
