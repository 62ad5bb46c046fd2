//! `ambit dashboard proxy <pod>` (istioctl's `dashboard proxy`, alias `envoy`): a proxy's admin page on this host.
//!
//! The pod argument is `ambit ztunnel-config`'s `[<type>/]<name>[.<namespace>]` ([`Target`]): a ztunnel
//! (`ztunnel-<node>.istio-system`, `daemonset/ztunnel`), a waypoint pod (or `deploy/<waypoint>`), or an
//! application pod, whose node's ztunnel serves it (ambient pods have no proxy of their own). Every proxy's admin
//! port (15000) listens on localhost inside its network namespace — a ztunnel's is its node's, a waypoint's its
//! pod's — so the command forwards `--address:--port` on this host to it, as istioctl port-forwards to a pod.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::local::State;
use crate::zc::source::{self, LocalMesh, Pick, SourceError};
use crate::zc::target::{Kind, Target};

/// The admin port of ztunnel and of the waypoint.
pub const ADMIN_PORT: u16 = 15000;

#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples:
  sudo ambit dashboard proxy ztunnel-node-1.istio-system
  sudo ambit dashboard proxy deploy/waypoint -n demo -p 15001 --no-browser
  ambit dashboard proxy productpage-v1-0.bookinfo --print-url")]
pub struct ProxyArgs {
    /// The proxy: `[<type>/]<name>[.<namespace>]`, a ztunnel (`ztunnel-node-1.istio-system`, `daemonset/ztunnel`),
    /// a waypoint pod (`deploy/waypoint.demo`) or an application pod (its node's ztunnel).
    pub pod: String,
    /// The namespace of the pod, when the argument has none.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The port on this host to serve the admin page on.
    #[arg(short = 'p', long, default_value_t = ADMIN_PORT)]
    pub port: u16,
    /// The address on this host to serve the admin page on.
    #[arg(long, default_value = "localhost")]
    pub address: String,
    /// The proxy's admin port (inside its network namespace).
    #[arg(long, default_value_t = ADMIN_PORT)]
    pub proxy_admin_port: u16,
    /// Do not open a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// Print the URL and what it forwards to, and exit (nothing is forwarded).
    #[arg(long)]
    pub print_url: bool,
}

/// Which proxy a pod argument names, and where its admin port is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTarget {
    /// `ztunnel` or `waypoint`.
    pub kind: &'static str,
    /// `<name>.<namespace>`.
    pub id: String,
    /// The network namespace the admin port listens in.
    pub netns: String,
    /// Why this proxy, when the argument named another pod.
    pub note: Option<String>,
}

/// The waypoint pods of the running mesh, as `(namespace, name, owner, netns)`.
fn waypoints(dir: &Path, state: &State) -> Vec<(String, String, Option<String>, String)> {
    let specs = super::desired(dir, state)
        .map(|d| d.pods)
        .unwrap_or_default();
    state
        .pods
        .iter()
        .filter(|(key, _)| {
            specs
                .iter()
                .any(|s| s.key() == **key && super::scrape::is_waypoint(s))
        })
        .map(|(_, p)| {
            (
                p.namespace.clone(),
                p.name.clone(),
                p.owner.clone(),
                p.netns.clone(),
            )
        })
        .collect()
}

/// Resolves `arg` (with `-n` `namespace`) in the local mesh whose state is in `dir`.
pub fn resolve(dir: &Path, arg: &str, namespace: Option<&str>) -> Result<ProxyTarget> {
    let target = Target::parse(arg, namespace).map_err(anyhow::Error::msg)?;
    let mesh = LocalMesh::open(dir, ADMIN_PORT).map_err(|e| match e {
        SourceError::NoLocalMesh { .. } | SourceError::NotRunning { .. } => anyhow::anyhow!(
            "no local mesh is running in {}: start one with `ambit local up -f <manifests>` (or set --dir); for a \
             cluster: `kubectl -n <namespace> port-forward <pod> 15000`",
            dir.display()
        ),
        other => other.into(),
    })?;
    let state = State::load(dir)?;
    let wps = waypoints(dir, &state);
    let ns_ok = |ns: &str| target.namespace.as_deref().is_none_or(|n| n == ns);
    let matching: Vec<_> = wps
        .iter()
        .filter(|(ns, name, owner, _)| {
            ns_ok(ns)
                && match target.kind {
                    Kind::Pod => *name == target.name,
                    Kind::Deployment => owner.as_deref() == Some(target.name.as_str()),
                    Kind::DaemonSet => false,
                }
        })
        .collect();
    if let Some((ns, name, _, netns)) = matching.first() {
        if matching.len() > 1 && target.kind == Kind::Pod {
            bail!(
                "pod {} is in several namespaces: pass {}.<namespace>",
                target.name,
                target.name
            );
        }
        return Ok(ProxyTarget {
            kind: "waypoint",
            id: format!("{name}.{ns}"),
            netns: netns.clone(),
            note: None,
        });
    }
    let selected = match source::select(&mesh, Pick::Target(&target), false) {
        Ok(s) => s,
        Err(SourceError::NotFound { .. }) => {
            let mut known: Vec<String> = source::Mesh::ztunnels(&mesh)
                .iter()
                .map(source::Ztunnel::id)
                .collect();
            known.extend(wps.iter().map(|(ns, name, _, _)| format!("{name}.{ns}")));
            bail!(
                "no proxy {target} in the local mesh: its proxies are {} (an application pod means its node's \
                 ztunnel; `ambit local status` lists the pods)",
                known.join(", ")
            );
        }
        Err(e) => return Err(e.into()),
    };
    let z = selected.ztunnel;
    let netns = state
        .nodes
        .iter()
        .find(|n| n.name == z.node)
        .map(|n| n.netns.clone())
        .with_context(|| format!("node {} of {} is not in the mesh's state", z.node, z.id()))?;
    Ok(ProxyTarget {
        kind: "ztunnel",
        id: z.id(),
        netns,
        note: selected.workload.map(|p| {
            format!(
                "pod {}.{} has no proxy of its own (ambient): its node's ztunnel {} serves it",
                p.name,
                p.namespace,
                z.id()
            )
        }),
    })
}

pub fn run(dir: &Path, args: &ProxyArgs) -> Result<i32> {
    let proxy = resolve(dir, &args.pod, args.namespace.as_deref())?;
    let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, args.proxy_admin_port));
    let url = format!("http://{}:{}", args.address, args.port);
    let what = format!(
        "{} {} admin ({upstream} in network namespace {})",
        proxy.kind, proxy.id, proxy.netns
    );
    if let Some(note) = &proxy.note {
        eprintln!("{note}");
    }
    if args.print_url {
        println!("{url} -> {what}");
        return Ok(0);
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "the admin port of {} listens on localhost inside network namespace {}: run this as root",
            proxy.id,
            proxy.netns
        );
    }
    if super::connect_in(&proxy.netns, upstream).is_err() {
        bail!(
            "{} {} does not answer on its admin port {upstream}: is it running (`ambit local status`)? is \
             --proxy-admin-port right?",
            proxy.kind,
            proxy.id
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((args.address.as_str(), args.port))
            .await
            .with_context(|| format!("listen on {}:{}", args.address, args.port))?;
        println!("{url} -> {what}");
        println!("Ctrl-C stops it.");
        if !args.no_browser {
            super::open_browser(&url);
        }
        let forward = tokio::spawn(super::forward(listener, proxy.netns.clone(), upstream));
        ambit_core::signal::shutdown().await;
        forward.abort();
        Ok(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: waypoint-0, namespace: demo, labels: \
        {gateway.networking.k8s.io/gateway-name: waypoint}}\nspec: {containers: [{name: c, command: [sleep, infinity]}]}\n\
        ---\napiVersion: v1\nkind: Pod\nmetadata: {name: app-0, namespace: demo}\n\
        spec: {containers: [{name: c, command: [sleep, infinity]}]}\n";

    /// A running mesh (this process as its supervisor) with two nodes, a waypoint pod and an application pod.
    fn mesh() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let m = dir.path().join("manifests");
        std::fs::create_dir_all(&m).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(m.join("pods.yaml"), PODS).unwrap_or_else(|e| panic!("{e}"));
        let pod = |name: &str, node: &str, owner: &str| {
            serde_json::json!({"namespace": "demo", "name": name, "uid": "u", "ip": "10.244.1.2", "node": node,
                "netns": format!("ambit-l-pod-demo.{name}"), "veth": "v", "owner": owner, "captured": true,
                "ready": true, "pid": null, "restarts": 0, "log": "/dev/null", "spec_hash": 0})
        };
        let state = serde_json::json!({
            "manifests": m, "supervisor_pid": std::process::id(), "ready": true,
            "nodes": [
                {"name": "node-1", "ip": "10.244.0.11", "netns": "ambit-l-node-1"},
                {"name": "node-2", "ip": "10.244.0.12", "netns": "ambit-l-node-2"}
            ],
            "pods": {"demo/waypoint-0": pod("waypoint-0", "node-1", "waypoint"),
                     "demo/app-0": pod("app-0", "node-2", "app")},
            "services": {}, "errors": []
        });
        std::fs::write(State::path(dir.path()), state.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        dir
    }

    fn ok(dir: &Path, arg: &str, ns: Option<&str>) -> ProxyTarget {
        resolve(dir, arg, ns).unwrap_or_else(|e| panic!("{arg}: {e:#}"))
    }

    #[test]
    fn ztunnels_waypoints_and_application_pods() {
        let dir = mesh();
        let z = ok(dir.path(), "ztunnel-node-2.istio-system", None);
        assert_eq!(
            (z.kind, z.id.as_str(), z.netns.as_str()),
            ("ztunnel", "ztunnel-node-2.istio-system", "ambit-l-node-2")
        );
        assert_eq!(
            ok(dir.path(), "daemonset/ztunnel", None).netns,
            "ambit-l-node-1"
        );
        for (arg, ns) in [
            ("waypoint-0.demo", None),
            ("waypoint-0", None),
            ("deploy/waypoint", Some("demo")),
        ] {
            let w = ok(dir.path(), arg, ns);
            assert_eq!(
                (w.kind, w.id.as_str(), w.netns.as_str()),
                ("waypoint", "waypoint-0.demo", "ambit-l-pod-demo.waypoint-0"),
                "{arg}"
            );
        }
        let app = ok(dir.path(), "app-0.demo", None);
        assert_eq!(
            (app.kind, app.netns.as_str()),
            ("ztunnel", "ambit-l-node-2")
        );
        assert!(app.note.is_some_and(|n| n.contains("no proxy of its own")));
    }

    #[test]
    fn unknown_pods_name_the_proxies() {
        let dir = mesh();
        let e = format!("{:#}", resolve(dir.path(), "nope.demo", None).unwrap_err());
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("no proxy nope.demo"), "{e}");
        assert!(
            e.contains("ztunnel-node-1.istio-system, ztunnel-node-2.istio-system, waypoint-0.demo"),
            "{e}"
        );
        // The waypoint of another namespace is not this one.
        assert!(resolve(dir.path(), "waypoint-0.other", None).is_err());
        let empty = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let e = format!(
            "{:#}",
            resolve(empty.path(), "ztunnel-node-1", None).unwrap_err()
        );
        assert!(
            e.contains("no local mesh is running") && !e.contains("config_dump"),
            "{e}"
        );
        let e = format!("{:#}", resolve(dir.path(), "svc/x", None).unwrap_err());
        assert!(e.contains("unsupported resource type"), "{e}");
    }
}
