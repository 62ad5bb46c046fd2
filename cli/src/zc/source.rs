//! Where the ztunnels are and how to reach their admin port (15000, localhost only).
//!
//! A [`Mesh`] lists its ztunnels and pods and sends admin requests; choosing the ztunnel a command talks to
//! (`--node`, the pod argument, or the default) is the same for every mesh ([`select`]). [`LocalMesh`] is the mesh
//! `ambit local up` runs: `state.json` lists its nodes (one ztunnel each, named `ztunnel-<node>` in
//! `istio-system`) and pods, and a ztunnel's admin port is reached from inside its node's network namespace. A
//! Kubernetes cluster (pods through the API server, admin through a port-forward) is another `Mesh`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::local::{self, State};

use super::target::{Kind, Target};

/// The namespace of the local mesh's ztunnels, and istioctl's default for the pod argument.
pub const ZTUNNEL_NAMESPACE: &str = "istio-system";

/// One ztunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ztunnel {
    pub name: String,
    pub namespace: String,
    pub node: String,
}

impl Ztunnel {
    /// `<name>.<namespace>`, as istioctl names pods.
    pub fn id(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

/// An application pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
    pub node: String,
}

/// An admin port's answer.
#[derive(Debug, Clone)]
pub struct AdminResponse {
    pub status: u16,
    pub body: Vec<u8>,
    /// Where it came from (the admin address, as the ztunnel's node sees it), for messages.
    pub addr: SocketAddr,
}

impl AdminResponse {
    /// The body's first line (at most 200 characters), for messages.
    pub fn first_line(&self) -> String {
        let line = String::from_utf8_lossy(&self.body)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("(empty body)")
            .to_owned();
        match line.char_indices().nth(200) {
            Some((end, _)) => format!("{}…", &line[..end]),
            None => line,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "no local mesh is running (no {}): start one with `ambit local up -f <manifests>`, or read a saved dump with -f <config_dump.json>",
        State::path(.dir).display()
    )]
    NoLocalMesh { dir: PathBuf },
    #[error(
        "the local mesh in {} is not running (its supervisor, pid {pid}, is gone): `ambit local up -f <manifests>` starts it, -f <config_dump.json> reads a saved dump",
        .dir.display()
    )]
    NotRunning { dir: PathBuf, pid: u32 },
    #[error("cannot read the local mesh's state {}: {why}", .path.display())]
    BadState { path: PathBuf, why: String },
    #[error(
        "reaching a ztunnel's admin port needs root: it listens on localhost inside node {node}'s network namespace (run with sudo, or read a saved dump with -f <config_dump.json>)"
    )]
    NeedRoot { node: String },
    #[error(
        "ztunnel {ztunnel} on node {node} did not answer at {addr}: is it running (`ambit local status`)? is --proxy-admin-port right?"
    )]
    Unreachable {
        ztunnel: String,
        node: String,
        addr: SocketAddr,
    },
    #[error(
        "ztunnel {ztunnel} on node {node} accepted the connection at {addr} but {why}: is --proxy-admin-port the ztunnel's admin port?"
    )]
    NotAdmin {
        ztunnel: String,
        node: String,
        addr: SocketAddr,
        why: Box<local::http::NoAnswer>,
    },
    #[error("no node {node:?} in {mesh} (its nodes: {known})")]
    UnknownNode {
        node: String,
        mesh: String,
        known: String,
    },
    #[error("{mesh} has no ztunnels")]
    NoZtunnels { mesh: String },
    #[error("{what} not found in {mesh}: {hint}")]
    NotFound {
        what: String,
        mesh: String,
        hint: String,
    },
    #[error("pod {name} is in several namespaces ({namespaces}): pass {name}.<namespace>")]
    Ambiguous { name: String, namespaces: String },
    #[error(
        "ztunnel pod name or --node must be set: this command shows one ztunnel's own state, and {mesh} has several ({known})"
    )]
    NeedOne { mesh: String, known: String },
    #[error("{0}")]
    Target(String),
    /// What went wrong with each of several ztunnels, on one line.
    #[error("{0}")]
    Ztunnels(String),
}

/// A mesh's ztunnels and pods, and its ztunnels' admin ports.
pub trait Mesh {
    /// How messages name this mesh ("the local mesh").
    fn describe(&self) -> String;
    /// What to run to see the pods.
    fn pods_hint(&self) -> String;
    /// Every ztunnel; the first is the default one.
    fn ztunnels(&self) -> Vec<Ztunnel>;
    /// The pods named `name`, in `namespace` or (`None`) in any namespace.
    fn pods(&self, name: &str, namespace: Option<&str>) -> Vec<PodRef>;
    /// The first pod of each Deployment named `name`, in `namespace` or in any namespace.
    fn deployment_pods(&self, name: &str, namespace: Option<&str>) -> Vec<PodRef>;
    /// `method path` on `z`'s admin port.
    fn admin(&self, z: &Ztunnel, method: &str, path: &str) -> Result<AdminResponse, SourceError>;
}

/// Which ztunnel the user asked for.
#[derive(Debug, Clone, Copy)]
pub enum Pick<'a> {
    /// Neither `--node` nor a pod argument.
    Default,
    Node(&'a str),
    Target(&'a Target),
}

/// The ztunnel to ask, and the application pod the user named (its entries are the ones to show).
#[derive(Debug, Clone)]
pub struct Selected {
    pub ztunnel: Ztunnel,
    pub workload: Option<PodRef>,
}

/// One ztunnel for `pick`. With no pick, the first ztunnel, unless `single` (the command shows state that differs
/// per ztunnel) and there are several: then the user must say which.
pub fn select(mesh: &dyn Mesh, pick: Pick<'_>, single: bool) -> Result<Selected, SourceError> {
    let ztunnels = mesh.ztunnels();
    let first = || {
        ztunnels
            .first()
            .cloned()
            .ok_or_else(|| SourceError::NoZtunnels {
                mesh: mesh.describe(),
            })
    };
    let on_node = |node: &str| ztunnels.iter().find(|z| z.node == node).cloned();
    match pick {
        Pick::Default if single && ztunnels.len() > 1 => Err(SourceError::NeedOne {
            mesh: mesh.describe(),
            known: known_ztunnels(&ztunnels),
        }),
        Pick::Default => Ok(Selected {
            ztunnel: first()?,
            workload: None,
        }),
        Pick::Node(node) => on_node(node)
            .map(|z| Selected {
                ztunnel: z,
                workload: None,
            })
            .ok_or_else(|| SourceError::UnknownNode {
                node: node.to_owned(),
                mesh: mesh.describe(),
                known: ztunnels
                    .iter()
                    .map(|z| z.node.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        Pick::Target(t) => {
            if t.kind == Kind::DaemonSet {
                if t.name != "ztunnel" {
                    return Err(SourceError::Target(format!(
                        "daemonset/{} is not the ztunnel DaemonSet: name a ztunnel or application pod",
                        t.name
                    )));
                }
                return Ok(Selected {
                    ztunnel: first()?,
                    workload: None,
                });
            }
            if t.kind == Kind::Pod
                && let Some(z) = ztunnels.iter().find(|z| {
                    z.name == t.name && t.namespace.as_deref().is_none_or(|ns| ns == z.namespace)
                })
            {
                return Ok(Selected {
                    ztunnel: z.clone(),
                    workload: None,
                });
            }
            let ns = t.namespace.as_deref();
            let pods = match t.kind {
                Kind::Deployment => mesh.deployment_pods(&t.name, ns),
                _ => mesh.pods(&t.name, ns),
            };
            let pod = match pods.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(SourceError::NotFound {
                        what: match ns {
                            Some(ns) => format!("{t} (namespace {ns})"),
                            None => format!("{t} (any namespace)"),
                        },
                        mesh: mesh.describe(),
                        hint: format!(
                            "name a ztunnel ({}) or an application pod; {}",
                            ztunnels
                                .iter()
                                .map(Ztunnel::id)
                                .collect::<Vec<_>>()
                                .join(", "),
                            mesh.pods_hint()
                        ),
                    });
                }
                many => {
                    return Err(SourceError::Ambiguous {
                        name: t.name.clone(),
                        namespaces: many
                            .iter()
                            .map(|p| p.namespace.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
            };
            let z = on_node(&pod.node).ok_or_else(|| SourceError::NotFound {
                what: format!("a ztunnel on node {}", pod.node),
                mesh: mesh.describe(),
                hint: format!("pod {}.{} runs there", pod.name, pod.namespace),
            })?;
            Ok(Selected {
                ztunnel: z,
                workload: Some(pod),
            })
        }
    }
}

/// Every ztunnel `pick` names: all of them by default (`zc log` sets every ztunnel's level, as istioctl).
pub fn select_all(mesh: &dyn Mesh, pick: Pick<'_>) -> Result<Vec<Ztunnel>, SourceError> {
    match pick {
        Pick::Default => {
            let all = mesh.ztunnels();
            if all.is_empty() {
                return Err(SourceError::NoZtunnels {
                    mesh: mesh.describe(),
                });
            }
            Ok(all)
        }
        other => Ok(vec![select(mesh, other, false)?.ztunnel]),
    }
}

fn known_ztunnels(zs: &[Ztunnel]) -> String {
    zs.iter()
        .map(|z| format!("{} on {}", z.id(), z.node))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The mesh of `ambit local up`.
#[derive(Debug, Clone)]
pub struct LocalMesh {
    state: State,
    admin_port: u16,
}

impl LocalMesh {
    /// The running local mesh whose state is in `dir`.
    pub fn open(dir: &Path, admin_port: u16) -> Result<LocalMesh, SourceError> {
        let path = State::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SourceError::NoLocalMesh { dir: dir.into() });
            }
            Err(e) => {
                return Err(SourceError::BadState {
                    path,
                    why: e.to_string(),
                });
            }
        };
        let state: State = serde_json::from_str(&text).map_err(|e| SourceError::BadState {
            path: path.clone(),
            why: e.to_string(),
        })?;
        if !local::pid_alive(state.supervisor_pid) {
            return Err(SourceError::NotRunning {
                dir: dir.into(),
                pid: state.supervisor_pid,
            });
        }
        Ok(LocalMesh::from_state(state, admin_port))
    }

    pub fn from_state(state: State, admin_port: u16) -> LocalMesh {
        LocalMesh { state, admin_port }
    }

    fn pod_ref(p: &local::PodState) -> PodRef {
        PodRef {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            node: p.node.clone(),
        }
    }
}

impl Mesh for LocalMesh {
    fn describe(&self) -> String {
        "the local mesh".to_owned()
    }

    fn pods_hint(&self) -> String {
        "`ambit local status` lists the pods".to_owned()
    }

    fn ztunnels(&self) -> Vec<Ztunnel> {
        self.state
            .nodes
            .iter()
            .map(|n| Ztunnel {
                name: format!("ztunnel-{}", n.name),
                namespace: ZTUNNEL_NAMESPACE.to_owned(),
                node: n.name.clone(),
            })
            .collect()
    }

    fn pods(&self, name: &str, namespace: Option<&str>) -> Vec<PodRef> {
        self.state
            .pods
            .values()
            .filter(|p| p.name == name && namespace.is_none_or(|ns| ns == p.namespace))
            .map(LocalMesh::pod_ref)
            .collect()
    }

    fn deployment_pods(&self, name: &str, namespace: Option<&str>) -> Vec<PodRef> {
        // Pods are kept by `<namespace>/<name>`: the first replica of each namespace's Deployment.
        let mut out: Vec<PodRef> = Vec::new();
        for p in self.state.pods.values() {
            if p.owner.as_deref() == Some(name)
                && namespace.is_none_or(|ns| ns == p.namespace)
                && !out.iter().any(|o| o.namespace == p.namespace)
            {
                out.push(LocalMesh::pod_ref(p));
            }
        }
        out
    }

    fn admin(&self, z: &Ztunnel, method: &str, path: &str) -> Result<AdminResponse, SourceError> {
        let node = self
            .state
            .nodes
            .iter()
            .find(|n| n.name == z.node)
            .ok_or_else(|| SourceError::UnknownNode {
                node: z.node.clone(),
                mesh: self.describe(),
                known: self
                    .state
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        if !nix::unistd::Uid::effective().is_root() {
            return Err(SourceError::NeedRoot {
                node: node.name.clone(),
            });
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.admin_port));
        let (status, body) =
            local::http::answer_in(&node.netns, addr, method, path).map_err(|why| {
                if why.connected() {
                    SourceError::NotAdmin {
                        ztunnel: z.id(),
                        node: node.name.clone(),
                        addr,
                        why: Box::new(why),
                    }
                } else {
                    SourceError::Unreachable {
                        ztunnel: z.id(),
                        node: node.name.clone(),
                        addr,
                    }
                }
            })?;
        Ok(AdminResponse { status, body, addr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh() -> LocalMesh {
        let state: State = serde_json::from_value(serde_json::json!({
            "manifests": "/m", "supervisor_pid": 1, "ready": true, "services": {}, "errors": [],
            "nodes": [
                {"name": "node-1", "ip": "10.244.0.11", "netns": "ambit-l-node-1"},
                {"name": "node-2", "ip": "10.244.0.12", "netns": "ambit-l-node-2"}
            ],
            "pods": {
                "bookinfo/reviews-v1-0": pod("bookinfo", "reviews-v1-0", "node-2", Some("reviews-v1")),
                "bookinfo/reviews-v1-1": pod("bookinfo", "reviews-v1-1", "node-1", Some("reviews-v1")),
                "default/sleep-0": pod("default", "sleep-0", "node-1", Some("sleep")),
                "other/sleep-0": pod("other", "sleep-0", "node-2", Some("sleep"))
            }
        }))
        .unwrap();
        LocalMesh::from_state(state, 15000)
    }

    fn pod(ns: &str, name: &str, node: &str, owner: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "namespace": ns, "name": name, "uid": format!("uid-{name}"), "ip": "10.244.1.2", "node": node,
            "netns": "x", "veth": "v", "owner": owner, "captured": true, "ready": true, "pid": null,
            "restarts": 0, "log": "/l", "spec_hash": 0
        })
    }

    fn pick(m: &LocalMesh, arg: &str, single: bool) -> Result<Selected, SourceError> {
        let t = Target::parse(arg, None).map_err(SourceError::Target)?;
        select(m, Pick::Target(&t), single)
    }

    #[test]
    fn ztunnels_by_pod_node_or_default() {
        let m = mesh();
        assert_eq!(
            select(&m, Pick::Default, false).unwrap().ztunnel.id(),
            "ztunnel-node-1.istio-system"
        );
        assert_eq!(
            select(&m, Pick::Node("node-2"), true).unwrap().ztunnel.name,
            "ztunnel-node-2"
        );
        assert_eq!(
            pick(&m, "ztunnel-node-2.istio-system", true)
                .unwrap()
                .ztunnel
                .node,
            "node-2"
        );
        assert_eq!(
            pick(&m, "daemonset/ztunnel", false).unwrap().ztunnel.node,
            "node-1"
        );
        // An application pod: its node's ztunnel, and the pod to filter on.
        let s = pick(&m, "reviews-v1-0.bookinfo", false).unwrap();
        assert_eq!(s.ztunnel.node, "node-2");
        assert_eq!(s.workload.unwrap().name, "reviews-v1-0");
        // Without a namespace, a pod name found in one namespace only.
        assert_eq!(
            pick(&m, "reviews-v1-1", false).unwrap().ztunnel.node,
            "node-1"
        );
        // A Deployment: its first pod.
        let s = pick(&m, "deploy/reviews-v1.bookinfo", false).unwrap();
        assert_eq!(s.workload.unwrap().name, "reviews-v1-0");
        assert_eq!(select_all(&m, Pick::Default).unwrap().len(), 2);
    }

    #[test]
    fn errors_say_what_to_pass() {
        let m = mesh();
        let e = select(&m, Pick::Default, true).unwrap_err().to_string();
        assert!(
            e.starts_with("ztunnel pod name or --node must be set"),
            "{e}"
        );
        assert!(e.contains("ztunnel-node-2.istio-system on node-2"), "{e}");
        let e = select(&m, Pick::Node("node-9"), false)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "no node \"node-9\" in the local mesh (its nodes: node-1, node-2)"
        );
        let e = pick(&m, "sleep-0", false).unwrap_err().to_string();
        assert_eq!(
            e,
            "pod sleep-0 is in several namespaces (default, other): pass sleep-0.<namespace>"
        );
        let e = pick(&m, "nope.bookinfo", false).unwrap_err().to_string();
        assert!(
            e.starts_with("nope.bookinfo (namespace bookinfo) not found in the local mesh"),
            "{e}"
        );
        let e = pick(&m, "daemonset/kube-proxy", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not the ztunnel DaemonSet"), "{e}");
    }

    #[test]
    fn a_missing_local_mesh_is_one_line_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let e = LocalMesh::open(dir.path(), 15000).unwrap_err().to_string();
        assert!(e.starts_with("no local mesh is running"), "{e}");
        assert!(e.contains("ambit local up") && e.contains("-f <config_dump.json>"));
        // A supervisor that is gone (above the largest pid Linux hands out).
        std::fs::write(
            State::path(dir.path()),
            r#"{"manifests": "/m", "supervisor_pid": 4194305, "ready": true,
                "nodes": [], "pods": {}, "services": {}, "errors": []}"#,
        )
        .unwrap();
        let e = LocalMesh::open(dir.path(), 15000).unwrap_err().to_string();
        assert!(e.contains("is not running"), "{e}");
        std::fs::write(State::path(dir.path()), "{").unwrap();
        let e = LocalMesh::open(dir.path(), 15000).unwrap_err().to_string();
        assert!(e.starts_with("cannot read the local mesh's state"), "{e}");
        assert!(!e.contains('\n'));
    }
}
