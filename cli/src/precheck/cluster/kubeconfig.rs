//! What is wrong with a kubeconfig, said on one line, and which one kubectl would read.

use kube::config::KubeconfigError;

/// A kubeconfig's problem on one line (the YAML parser's message shows the offending lines below its first), and
/// what to do about it.
pub(super) fn kubeconfig_problem(e: &KubeconfigError) -> String {
    match e {
        KubeconfigError::CurrentContextNotSet => {
            "it sets no current-context: pass --context <name>, or set one with `kubectl config use-context <name>`"
                .to_owned()
        }
        KubeconfigError::LoadContext(name) => {
            format!("it has no context {name:?}: check --context or its current-context")
        }
        KubeconfigError::LoadClusterOfContext(name) => {
            format!("its context names cluster {name:?}, which it does not define")
        }
        e => {
            let text = e.to_string();
            let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            format!(
                "{}: fix it, or pass another with --kubeconfig",
                lines.next().unwrap_or_default()
            )
        }
    }
}

/// The kubeconfig kubectl would read when `--kubeconfig` is not given, to name it in messages (kube-rs reads
/// `KUBECONFIG` itself, as kubectl does: a list of files, merged).
pub(super) fn default_kubeconfig() -> String {
    match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(v) => format!("{} (KUBECONFIG)", v.to_string_lossy()),
        None => "~/.kube/config".to_owned(),
    }
}

/// There is no kubeconfig file (not: there is one, and it is wrong).
pub(super) fn no_kubeconfig_file(e: &KubeconfigError) -> bool {
    match e {
        KubeconfigError::FindPath => true,
        KubeconfigError::ReadConfig(io, _) => io.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}
