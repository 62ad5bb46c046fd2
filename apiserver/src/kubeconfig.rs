//! The kubeconfig `kubectl` and kube-rs use: the server URL, the CA, and the admin user's bearer token.

use std::io::Write;
use std::path::Path;

use base64::Engine;

/// The kubeconfig text for `server` (an `https://` URL).
pub fn render(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: ambit-local
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: ambit-local
  context:
    cluster: ambit-local
    user: admin
    namespace: default
current-context: ambit-local
preferences: {{}}
"
    )
}

/// Writes the kubeconfig atomically, readable by its owner only (it holds the admin token).
pub fn write(path: &Path, server: &str, ca_pem: &str, token: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(render(server, ca_pem, token).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kubeconfig_is_yaml_with_server_ca_and_token() {
        let text = super::render("https://127.0.0.1:6443", "PEM", "tok");
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"].as_str(),
            Some("https://127.0.0.1:6443")
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"].as_str(),
            Some("UEVN")
        );
        assert_eq!(v["users"][0]["user"]["token"].as_str(), Some("tok"));
        assert_eq!(v["current-context"].as_str(), Some("ambit-local"));
    }
}
