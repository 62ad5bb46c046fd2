//! The CA directory: load it, or create it atomically when it is missing or empty.

use std::io;
use std::path::{Path, PathBuf};

use super::{CaError, CaFiles};

pub(super) const ROOT_CERT: &str = "root-cert.pem";
pub(super) const CA_CERT: &str = "ca-cert.pem";
pub(super) const CA_KEY: &str = "ca-key.pem";
pub(super) const CERT_CHAIN: &str = "cert-chain.pem";

/// Loads the CA files from `dir`; if `dir` is missing or empty, writes `generate()`'s files into a temporary
/// sibling directory and renames it onto `dir`. `rename(2)` of a directory replaces an empty directory and fails
/// on a non-empty one, so exactly one of several racing processes wins and the others load its files.
pub(super) fn load_or_create(
    dir: &Path,
    generate: impl FnOnce() -> Result<CaFiles, CaError>,
) -> Result<CaFiles, CaError> {
    if has_ca(dir) {
        return load(dir);
    }
    if dir.is_dir() && !is_empty(dir)? {
        return Err(storage(
            dir,
            format!("exists and is not empty but holds no {ROOT_CERT}"),
        ));
    }
    let files = generate()?;
    let tmp = temp_sibling(dir)?;
    let result = write_all(&tmp, &files).and_then(|()| std::fs::rename(&tmp, dir));
    match result {
        Ok(()) => {
            tracing::info!(ca.dir = %dir.display(), "created a new local CA");
            Ok(files)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            if has_ca(dir) {
                // Another process won the race.
                load(dir)
            } else {
                Err(storage(dir, format!("cannot create: {e}")))
            }
        }
    }
}

/// Whether `dir` holds a CA: a `root-cert.pem` of any kind (a directory or a dangling symlink there is a broken CA,
/// reported when it is read, not an absent one).
fn has_ca(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join(ROOT_CERT)).is_ok()
}

/// `dir`'s file `name`; an error names it (and, for a symlink, where it points).
fn read(dir: &Path, name: &str) -> Result<String, CaError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|e| match std::fs::read_link(&path) {
        Ok(target) => storage(
            dir,
            format!("{name}: a symlink to {}: {e}", target.display()),
        ),
        Err(_) => storage(dir, format!("{name}: {e}")),
    })
}

fn is_empty(dir: &Path) -> Result<bool, CaError> {
    let mut entries = std::fs::read_dir(dir).map_err(|e| storage(dir, e.to_string()))?;
    Ok(entries.next().is_none())
}

fn load(dir: &Path) -> Result<CaFiles, CaError> {
    let root_cert = read(dir, ROOT_CERT)?;
    let ca_cert = read(dir, CA_CERT)?;
    let ca_key = read(dir, CA_KEY)?;
    // Optional in the plug-in layout: without it the signing cert is the only link above the leaf. Absent means
    // no entry at all: a dangling symlink is a broken file.
    let cert_chain = match std::fs::symlink_metadata(dir.join(CERT_CHAIN)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => ca_cert.clone(),
        _ => read(dir, CERT_CHAIN)?,
    };
    Ok(CaFiles {
        root_cert,
        ca_cert,
        ca_key,
        cert_chain,
    })
}

fn temp_sibling(dir: &Path) -> Result<PathBuf, CaError> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| storage(dir, format!("creating parent: {e}")))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ca".to_owned());
    let tmp = parent.join(format!(
        ".{name}.tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir(&tmp)
        .map_err(|e| storage(dir, format!("creating {}: {e}", tmp.display())))?;
    Ok(tmp)
}

fn write_all(tmp: &Path, files: &CaFiles) -> io::Result<()> {
    std::fs::write(tmp.join(ROOT_CERT), &files.root_cert)?;
    std::fs::write(tmp.join(CA_CERT), &files.ca_cert)?;
    std::fs::write(tmp.join(CERT_CHAIN), &files.cert_chain)?;
    write_private(&tmp.join(CA_KEY), &files.ca_key)?;
    // The directory itself is readable by its owner only once renamed into place.
    set_mode(tmp, 0o700)
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> io::Result<()> {
    std::fs::write(path, text)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

fn storage(dir: &Path, reason: String) -> CaError {
    CaError::Storage {
        path: dir.display().to_string(),
        reason,
    }
}
