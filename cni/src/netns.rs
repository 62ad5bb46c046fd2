//! Where a pod's network namespace is. The Kubernetes API does not say, so the lookup is behind
//! [`NetnsLookup`] with two answers:
//!
//! - [`ProcNetns`] (a cluster): the pod's processes sit in a cgroup whose path names the pod UID, as kubelet
//!   writes it with either cgroup driver (`pod<uid>` for cgroupfs, `pod<uid with _ for ->` in a systemd slice).
//!   The first such process whose namespace is not the agent's own gives `<proc>/<pid>/ns/net`.
//! - [`AnnotationNetns`] (the local mesh): the pod annotation [`NETNS_ANNOTATION`] holds a path. Only for
//!   machines where every pod writer is trusted: whoever can annotate a pod can point the agent at any
//!   namespace on the node.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Pod annotation naming the pod's network-namespace file (local mesh only, see [`AnnotationNetns`]).
pub const NETNS_ANNOTATION: &str = "ambit.dev/netns";

/// What a lookup needs to know of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsQuery {
    pub uid: String,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetnsError {
    #[error("no process of pod {uid} under {proc_root} (not started yet, or not on this node)")]
    NoProcess { uid: String, proc_root: PathBuf },
    #[error("pod has no {NETNS_ANNOTATION} annotation")]
    NoAnnotation,
    #[error("{NETNS_ANNOTATION} must be an absolute path, not {0:?}")]
    NotAbsolute(String),
    #[error("{path}: {reason}")]
    Unavailable { path: PathBuf, reason: String },
    #[error("{0} is the node agent's own (host) network namespace")]
    HostNamespace(PathBuf),
}

/// Finds pods' network namespaces. Called off the async runtime (it reads files).
pub trait NetnsLookup: Send + Sync + 'static {
    /// One answer per query, by UID.
    fn find(&self, pods: &[NetnsQuery]) -> BTreeMap<String, Result<PathBuf, NetnsError>>;

    /// Whether a path found earlier still belongs to the pod (a process can exit and its PID be reused).
    fn still_valid(&self, pod: &NetnsQuery, path: &Path) -> bool;
}

/// The (device, inode) of a namespace file, which identifies the namespace.
fn ns_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Scans `<proc_root>/<pid>/cgroup` for the pod UID.
#[derive(Clone, Debug)]
pub struct ProcNetns {
    proc_root: PathBuf,
}

impl ProcNetns {
    /// `proc_root` is `/proc`, or the host's proc mounted elsewhere (`/host/proc` in a container).
    pub fn new(proc_root: impl Into<PathBuf>) -> ProcNetns {
        ProcNetns {
            proc_root: proc_root.into(),
        }
    }

    /// The agent's own namespace, never a pod's (a host-network process in the pod's cgroup would point there).
    fn own_namespace(&self) -> Option<(u64, u64)> {
        ns_id(&self.proc_root.join("self/ns/net"))
    }

    /// Whether process `pid`'s cgroup file names one of `uids`; returns the first it names.
    fn pod_of<'a>(&self, pid: &str, uids: &'a [&'a str]) -> Option<&'a str> {
        let text = std::fs::read_to_string(self.proc_root.join(pid).join("cgroup")).ok()?;
        text.lines()
            // `hierarchy-ID:controllers:path`; the path may itself contain ':'.
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .find_map(|path| uids.iter().copied().find(|u| cgroup_names_pod(path, u)))
    }
}

/// True when a cgroup path contains the pod segment of `uid` in either kubelet form, bounded so a longer UID
/// that starts with the same characters does not match.
pub fn cgroup_names_pod(cgroup_path: &str, uid: &str) -> bool {
    if uid.is_empty() {
        return false;
    }
    let forms = [format!("pod{uid}"), format!("pod{}", uid.replace('-', "_"))];
    forms.iter().any(|form| {
        cgroup_path.match_indices(form.as_str()).any(|(at, _)| {
            let before = cgroup_path[..at].chars().next_back();
            let after = cgroup_path[at + form.len()..].chars().next();
            // cgroupfs: `/kubepods/burstable/pod<uid>/<ctr>`; systemd: `...-pod<uid_>.slice/...`.
            matches!(before, Some('/' | '-')) && matches!(after, None | Some('/' | '.'))
        })
    })
}

impl NetnsLookup for ProcNetns {
    fn find(&self, pods: &[NetnsQuery]) -> BTreeMap<String, Result<PathBuf, NetnsError>> {
        let mut out: BTreeMap<String, Result<PathBuf, NetnsError>> = pods
            .iter()
            .map(|p| {
                let missing = NetnsError::NoProcess {
                    uid: p.uid.clone(),
                    proc_root: self.proc_root.clone(),
                };
                (p.uid.clone(), Err(missing))
            })
            .collect();
        let entries = match std::fs::read_dir(&self.proc_root) {
            Ok(e) => e,
            Err(e) => {
                let reason = e.to_string();
                for v in out.values_mut() {
                    *v = Err(NetnsError::Unavailable {
                        path: self.proc_root.clone(),
                        reason: reason.clone(),
                    });
                }
                return out;
            }
        };
        let own = self.own_namespace();
        let mut open: Vec<&str> = pods.iter().map(|p| p.uid.as_str()).collect();
        let mut pids: Vec<(u64, String)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.parse::<u64>().ok().map(|pid| (pid, n)))
            .collect();
        // Lowest PID first: the pod's sandbox (pause) process usually started first.
        pids.sort_unstable();
        for (_, pid) in pids {
            if open.is_empty() {
                break;
            }
            let Some(uid) = self.pod_of(&pid, &open) else {
                continue;
            };
            let path = self.proc_root.join(&pid).join("ns/net");
            let Some(id) = ns_id(&path) else {
                // Exited meanwhile, or a zombie: try the pod's next process.
                continue;
            };
            if own == Some(id) {
                out.insert(uid.to_owned(), Err(NetnsError::HostNamespace(path)));
                continue;
            }
            let uid = uid.to_owned();
            open.retain(|u| *u != uid);
            out.insert(uid, Ok(path));
        }
        out
    }

    fn still_valid(&self, pod: &NetnsQuery, path: &Path) -> bool {
        // `<proc_root>/<pid>/ns/net` → `<pid>`.
        let pid = path
            .parent()
            .and_then(Path::parent)
            .filter(|p| p.parent() == Some(self.proc_root.as_path()))
            .and_then(Path::file_name)
            .and_then(|p| p.to_str());
        match pid {
            Some(pid) => ns_id(path).is_some() && self.pod_of(pid, &[pod.uid.as_str()]).is_some(),
            None => false,
        }
    }
}

/// Reads the pod annotation [`NETNS_ANNOTATION`].
#[derive(Clone, Debug)]
pub struct AnnotationNetns {
    /// The agent's own namespace file (`/proc/self/ns/net`), refused as a pod's.
    own: PathBuf,
}

impl AnnotationNetns {
    pub fn new() -> AnnotationNetns {
        AnnotationNetns::with_own_namespace("/proc/self/ns/net")
    }

    /// `own` is the namespace file a pod may not name (tests pass a file of their own).
    pub fn with_own_namespace(own: impl Into<PathBuf>) -> AnnotationNetns {
        AnnotationNetns { own: own.into() }
    }

    fn one(&self, pod: &NetnsQuery) -> Result<PathBuf, NetnsError> {
        let value = pod
            .annotations
            .get(NETNS_ANNOTATION)
            .ok_or(NetnsError::NoAnnotation)?;
        let path = PathBuf::from(value);
        if !path.is_absolute() {
            return Err(NetnsError::NotAbsolute(value.clone()));
        }
        let id = std::fs::metadata(&path)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| NetnsError::Unavailable {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if ns_id(&self.own) == Some(id) {
            return Err(NetnsError::HostNamespace(path));
        }
        Ok(path)
    }
}

impl Default for AnnotationNetns {
    fn default() -> Self {
        AnnotationNetns::new()
    }
}

impl NetnsLookup for AnnotationNetns {
    fn find(&self, pods: &[NetnsQuery]) -> BTreeMap<String, Result<PathBuf, NetnsError>> {
        pods.iter().map(|p| (p.uid.clone(), self.one(p))).collect()
    }

    fn still_valid(&self, pod: &NetnsQuery, path: &Path) -> bool {
        self.one(pod).is_ok_and(|p| p == path)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const UID: &str = "6f2a4c1e-0b7d-4e0a-9c55-1d2e3f405162";
    const OTHER: &str = "0aa1bb22-3c4d-4e5f-8a9b-0c1d2e3f4a5b";

    fn query(uid: &str) -> NetnsQuery {
        NetnsQuery {
            uid: uid.to_owned(),
            annotations: BTreeMap::new(),
        }
    }

    /// A fake `/proc`: `<pid>/cgroup` with `cgroup` as its text and `<pid>/ns/net` a file of its own, or a hard
    /// link to `same_ns_as`'s (the same namespace).
    fn process(root: &Path, pid: u32, cgroup: &str, same_ns_as: Option<&str>) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(dir.join("ns")).unwrap();
        std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        match same_ns_as {
            Some(other) => {
                std::fs::hard_link(root.join(other).join("ns/net"), dir.join("ns/net")).unwrap()
            }
            None => std::fs::write(dir.join("ns/net"), format!("netns of {pid}")).unwrap(),
        }
    }

    fn fake_proc() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        // The agent itself (host namespace), as `self`.
        std::fs::create_dir_all(root.path().join("self/ns")).unwrap();
        std::fs::write(root.path().join("self/ns/net"), "host").unwrap();
        std::fs::write(
            root.path().join("self/cgroup"),
            "0::/system.slice/agent.service\n",
        )
        .unwrap();
        // Not processes.
        std::fs::write(root.path().join("uptime"), "1 1").unwrap();
        std::fs::create_dir_all(root.path().join("sys")).unwrap();
        root
    }

    #[test]
    fn both_kubelet_cgroup_path_forms_match() {
        let underscored = UID.replace('-', "_");
        let cgroupfs = format!("/kubepods/burstable/pod{UID}/0123abcd");
        let systemd = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{underscored}.slice/cri-containerd-ab.scope"
        );
        let guaranteed = format!("/kubepods.slice/kubepods-pod{underscored}.slice");
        for path in [
            &cgroupfs,
            &systemd,
            &guaranteed,
            &format!("/kubepods/pod{UID}"),
        ] {
            assert!(cgroup_names_pod(path, UID), "{path}");
            assert!(!cgroup_names_pod(path, OTHER), "{path}");
        }
        // A UID that only starts like the pod's, or the UID outside a pod segment, does not match.
        assert!(!cgroup_names_pod(&format!("/kubepods/pod{UID}9/x"), UID));
        assert!(!cgroup_names_pod(&format!("/kubepods/xpod{UID}/x"), UID));
        assert!(!cgroup_names_pod(&format!("/kubepods/{UID}/x"), UID));
        assert!(!cgroup_names_pod("/kubepods/pod/x", ""));
    }

    #[test]
    fn finds_the_pods_process_in_either_cgroup_form() {
        let root = fake_proc();
        let r = root.path();
        process(r, 1, "0::/init.scope\n", None);
        // cgroup v1 (several hierarchies, cgroupfs driver) for UID; v2 with the systemd driver for OTHER.
        process(
            r,
            40,
            &format!(
                "12:memory:/kubepods/besteffort/pod{UID}/aaa\n11:cpu,cpuacct:/kubepods/besteffort/pod{UID}/aaa\n"
            ),
            None,
        );
        process(
            r,
            41,
            &format!("12:memory:/kubepods/besteffort/pod{UID}/bbb\n"),
            Some("40"),
        );
        let other = OTHER.replace('-', "_");
        process(
            r,
            57,
            &format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{other}.slice/cri-containerd-c.scope\n"
            ),
            None,
        );
        let lookup = ProcNetns::new(r);
        let found = lookup.find(&[query(UID), query(OTHER)]);
        assert_eq!(found[UID], Ok(r.join("40/ns/net")));
        assert_eq!(found[OTHER], Ok(r.join("57/ns/net")));
        assert!(lookup.still_valid(&query(UID), &r.join("40/ns/net")));
        // The PID now belongs to someone else: the path no longer holds.
        std::fs::write(r.join("40/cgroup"), "0::/user.slice\n").unwrap();
        assert!(!lookup.still_valid(&query(UID), &r.join("40/ns/net")));
        assert!(!lookup.still_valid(&query(UID), Path::new("/elsewhere/40/ns/net")));
        // And the lookup moves on to the pod's other process.
        assert_eq!(lookup.find(&[query(UID)])[UID], Ok(r.join("41/ns/net")));
    }

    #[test]
    fn a_pod_without_processes_is_not_found_and_host_namespaces_are_refused() {
        let root = fake_proc();
        let r = root.path();
        // A process of the pod that shares the agent's (host) namespace, e.g. a hostNetwork pod.
        std::fs::create_dir_all(r.join("70/ns")).unwrap();
        std::fs::write(r.join("70/cgroup"), format!("0::/kubepods/pod{UID}/x\n")).unwrap();
        std::fs::hard_link(r.join("self/ns/net"), r.join("70/ns/net")).unwrap();
        // A process whose namespace file is gone (exited while scanning).
        std::fs::create_dir_all(r.join("71")).unwrap();
        std::fs::write(r.join("71/cgroup"), format!("0::/kubepods/pod{UID}/y\n")).unwrap();
        let found = ProcNetns::new(r).find(&[query(UID), query(OTHER)]);
        assert_eq!(
            found[UID],
            Err(NetnsError::HostNamespace(r.join("70/ns/net")))
        );
        assert!(matches!(&found[OTHER], Err(NetnsError::NoProcess { uid, .. }) if uid == OTHER));
        // No proc at all: every pod says why.
        let gone = ProcNetns::new(r.join("nope")).find(&[query(UID)]);
        assert!(
            matches!(&gone[UID], Err(NetnsError::Unavailable { .. })),
            "{gone:?}"
        );
    }

    #[test]
    fn the_annotation_names_an_absolute_existing_path_other_than_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("own");
        std::fs::write(&own, "host").unwrap();
        let pod_ns = dir.path().join("pod-ns");
        std::fs::write(&pod_ns, "pod").unwrap();
        let host_link = dir.path().join("host-link");
        std::fs::hard_link(&own, &host_link).unwrap();
        let lookup = AnnotationNetns::with_own_namespace(&own);
        let with = |v: &str| NetnsQuery {
            uid: v.to_owned(),
            annotations: [(NETNS_ANNOTATION.to_owned(), v.to_owned())].into(),
        };
        let good = with(pod_ns.to_str().unwrap());
        let queries = [
            good.clone(),
            with("relative/ns"),
            with(dir.path().join("missing").to_str().unwrap()),
            with(host_link.to_str().unwrap()),
            query("plain"),
        ];
        let found = lookup.find(&queries);
        assert_eq!(found[&good.uid], Ok(pod_ns.clone()));
        assert_eq!(
            found["relative/ns"],
            Err(NetnsError::NotAbsolute("relative/ns".into()))
        );
        assert!(matches!(
            found[&queries[2].uid],
            Err(NetnsError::Unavailable { .. })
        ));
        assert_eq!(
            found[&queries[3].uid],
            Err(NetnsError::HostNamespace(host_link))
        );
        assert_eq!(found["plain"], Err(NetnsError::NoAnnotation));
        assert!(lookup.still_valid(&good, &pod_ns));
        assert!(!lookup.still_valid(&good, &own));
    }
}
