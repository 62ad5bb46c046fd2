//! Installs the `ambit-cni` plugin into the node's CNI configuration as a *chained* plugin, keeps it there when the
//! primary CNI rewrites its file, and removes it again, restoring the primary's file byte-for-byte.
//!
//! The runtime (through libcni) reads the first file of the conf dir, by name, ending in `.conf`, `.conflist` or
//! `.json`; that is the primary's file and we append our entry to its `plugins`. A single-plugin `.conf` becomes a
//! `.conflist` (libcni only chains conflists) and the `.conf` goes, or libcni would still pick it.
//!
//! Every file is written whole under a temporary name and renamed into place, so a runtime never reads half a
//! binary or half a configuration. Before the first change the primary's exact bytes go to [`BACKUP_NAME`] (a name
//! libcni ignores), with what we wrote instead: the uninstall then knows whether the file is still ours to restore,
//! also after an agent restart.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::plugin::{FailureMode, PLUGIN_TYPE};

/// The backup of the primary's original file, in the conf dir. libcni ignores it: not a config extension.
pub const BACKUP_NAME: &str = "ambit-cni.backup";
/// The extensions libcni reads, as it reads them.
const CONF_EXTENSIONS: &[&str] = &["conf", "conflist", "json"];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("CNI failure mode {0:?}: set CNI_FAILURE_MODE to open or closed")]
    FailureMode(String),
    #[error("CNI plugin socket {0:?}: give an absolute UTF-8 path (CNI_PLUGIN_SOCKET)")]
    Socket(PathBuf),
    #[error("CNI_CONF_FILE_NAME {0:?}: give a file name in CNI_CONF_DIR, not a path")]
    ConfFileName(String),
    #[error("the plugin binary {0}: not a file; set CNI_PLUGIN_BINARY to the ambit-cni binary")]
    PluginBinary(PathBuf),
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error(
        "{path}: not valid JSON ({source}); fix the primary CNI's configuration (left untouched)"
    )]
    BadJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {reason}; left untouched, fix the primary CNI's configuration")]
    NotCniConfig { path: PathBuf, reason: String },
    #[error(
        "{path}: {reason}; delete it to start afresh (uninstall then only removes the ambit-cni entry)"
    )]
    Backup { path: PathBuf, reason: String },
}

fn io_err(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.to_owned();
    move |source| InstallError::Io {
        path,
        action,
        source,
    }
}

/// What to install and where (the agent's CNI_* settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallConfig {
    /// CNI_BIN_DIR, e.g. `/host/opt/cni/bin`.
    pub bin_dir: PathBuf,
    /// CNI_CONF_DIR, e.g. `/host/etc/cni/net.d`.
    pub conf_dir: PathBuf,
    /// CNI_CONF_FILE_NAME: the primary's file; `None` or empty: the one libcni would pick.
    pub conf_file_name: Option<String>,
    /// The ambit-cni binary to copy into `bin_dir`.
    pub plugin_binary: PathBuf,
    /// Written into our conflist entry as `socket`.
    pub socket: PathBuf,
    /// `open` or `closed`, written into our entry as `failure_mode`.
    pub failure_mode: String,
}

/// What [`Installer::ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// Binary and entry were in place already; nothing written.
    Unchanged,
    /// Our entry was added to `file` (or ours there updated, e.g. a new socket).
    Installed { file: PathBuf },
    /// Someone else rewrote the primary's file without our entry; it is back in `file`.
    Repaired { file: PathBuf },
    /// No primary CNI configuration yet (the primary CNI has not started); call again later.
    NoPrimaryYet,
}

/// The file's exact bytes: a JSON string when they are UTF-8 (CNI configs are), else a list of byte values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Original {
    Utf8(String),
    Bytes(Vec<u8>),
}

impl Original {
    fn new(bytes: &[u8]) -> Original {
        match std::str::from_utf8(bytes) {
            Ok(s) => Original::Utf8(s.to_owned()),
            Err(_) => Original::Bytes(bytes.to_vec()),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Original::Utf8(s) => s.as_bytes(),
            Original::Bytes(b) => b,
        }
    }
}

/// The content of [`BACKUP_NAME`]: the primary's file as it was before we changed it, and what we wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Backup {
    /// The primary's file name in the conf dir.
    file: String,
    /// Its bytes before our change; `None` when it held an ambit-cni entry already (nothing clean to restore).
    original: Option<Original>,
    /// The file we wrote (`file`, or `<stem>.conflist` after converting a `.conf`).
    written: String,
    /// Exactly what we wrote: a file still equal to it is ours to restore.
    written_content: String,
}

/// Installs, keeps and removes the plugin. One per agent; [`Installer::ensure`] is cheap when nothing changed.
#[derive(Debug)]
pub struct Installer {
    cfg: InstallConfig,
    entry: Value,
    backup: Option<Backup>,
    /// The installed binary's (len, mtime, inode) when last found identical: skips reading it every second.
    binary_ok: Option<(u64, Option<SystemTime>, u64)>,
}

impl Installer {
    /// Validates the config and reads back the backup of an earlier run, if any.
    pub fn new(cfg: InstallConfig) -> Result<Installer, InstallError> {
        if cfg.failure_mode.parse::<FailureMode>().is_err() {
            return Err(InstallError::FailureMode(cfg.failure_mode.clone()));
        }
        let socket = match cfg.socket.to_str() {
            Some(s) if cfg.socket.is_absolute() => s.to_owned(),
            _ => return Err(InstallError::Socket(cfg.socket.clone())),
        };
        if let Some(name) = cfg.conf_file_name.as_deref()
            && !is_plain_name(name)
            && !name.is_empty()
        {
            return Err(InstallError::ConfFileName(name.to_owned()));
        }
        if !cfg.plugin_binary.is_file() {
            return Err(InstallError::PluginBinary(cfg.plugin_binary.clone()));
        }
        let entry =
            json!({"type": PLUGIN_TYPE, "socket": socket, "failure_mode": cfg.failure_mode});
        let backup = read_backup(&cfg.conf_dir.join(BACKUP_NAME))?;
        Ok(Installer {
            cfg,
            entry,
            backup,
            binary_ok: None,
        })
    }

    /// Copies the binary if missing or different, finds the primary conf, inserts our entry if it is missing or
    /// stale. Idempotent and cheap when nothing changed (the agent calls it every second).
    pub fn ensure(&mut self) -> Result<Ensured, InstallError> {
        self.ensure_binary()?;
        let Some(name) = self.find_primary()? else {
            return Ok(Ensured::NoPrimaryYet);
        };
        let path = self.cfg.conf_dir.join(&name);
        let bytes = fs::read(&path).map_err(io_err(&path, "read the primary CNI configuration"))?;
        let conf: Value =
            serde_json::from_slice(&bytes).map_err(|source| InstallError::BadJson {
                path: path.clone(),
                source,
            })?;
        let Some(change) = with_entry(&conf, &self.entry, &name, &path)? else {
            return Ok(Ensured::Unchanged);
        };
        let target = change.target.unwrap_or_else(|| name.clone());
        // Ours when it is what we last wrote: the original stays. Otherwise the primary (re)wrote it: new original.
        let ours = self
            .backup
            .as_ref()
            .filter(|b| b.written == name && b.written_content.as_bytes() == bytes);
        let repaired = self.backup.is_some() && ours.is_none();
        let (file, original) = match ours {
            Some(b) => (b.file.clone(), b.original.clone()),
            None => (
                name.clone(),
                (!change.had_entry).then(|| Original::new(&bytes)),
            ),
        };
        let target_path = self.cfg.conf_dir.join(&target);
        if target != name
            && self.backup.as_ref().is_none_or(|b| b.written != target)
            && let Ok(existing) = fs::read(&target_path)
            && !has_entry_bytes(&existing)
        {
            return Err(InstallError::NotCniConfig {
                path: path.clone(),
                reason: format!(
                    "converting it to a conflist would overwrite {}, which is not ours; remove one of the two",
                    target_path.display()
                ),
            });
        }
        if let Some(old) = self.backup.take_if(|b| b.written != target) {
            // The primary moved to another file: give the one we wrote before back first.
            restore(&self.cfg.conf_dir, &old)?;
        }
        let backup = Backup {
            file,
            original,
            written: target.clone(),
            written_content: format!("{:#}\n", change.conf),
        };
        // The backup first: after a crash between the two writes the file is simply "not what we wrote".
        write_backup(&self.cfg.conf_dir, &backup)?;
        let mode = mode_of(&path);
        write_atomic(&target_path, backup.written_content.as_bytes(), mode)?;
        if target != name {
            remove_if_present(&path)?;
        }
        self.backup = Some(backup);
        Ok(if repaired {
            Ensured::Repaired { file: target_path }
        } else {
            Ensured::Installed { file: target_path }
        })
    }

    /// Restores the primary's file (byte-for-byte when it is still what we wrote; otherwise removes only our entry
    /// from whatever the primary wrote since), removes the binary and the backup. Idempotent.
    pub fn uninstall(&mut self) -> Result<(), InstallError> {
        if let Some(b) = &self.backup {
            restore(&self.cfg.conf_dir, b)?;
        }
        // Whatever the runtime would read now (a file the primary moved to, or no backup at all): no entry of ours.
        if let Some(name) = self.find_primary()? {
            remove_entry(&self.cfg.conf_dir.join(name))?;
        }
        remove_if_present(&self.cfg.bin_dir.join(PLUGIN_TYPE))?;
        remove_if_present(&self.cfg.conf_dir.join(BACKUP_NAME))?;
        self.backup = None;
        self.binary_ok = None;
        Ok(())
    }

    fn ensure_binary(&mut self) -> Result<(), InstallError> {
        let target = self.cfg.bin_dir.join(PLUGIN_TYPE);
        let stamp = |m: &fs::Metadata| Some((m.len(), m.modified().ok(), m.ino()));
        if let Ok(m) = fs::metadata(&target)
            && self.binary_ok.is_some()
            && self.binary_ok == stamp(&m)
            && m.mode() & 0o777 == 0o755
        {
            return Ok(());
        }
        let src = &self.cfg.plugin_binary;
        let want = fs::read(src).map_err(io_err(src, "read the plugin binary"))?;
        let same = match fs::metadata(&target) {
            Ok(m) if m.len() == want.len() as u64 => {
                fs::read(&target).map_err(io_err(&target, "read the installed plugin"))? == want
            }
            _ => false,
        };
        if same {
            fs::set_permissions(&target, fs::Permissions::from_mode(0o755))
                .map_err(io_err(&target, "make the installed plugin executable"))?;
        } else {
            let tmp = self.cfg.bin_dir.join(format!(".{PLUGIN_TYPE}.tmp"));
            write_atomic_via(&tmp, &target, &want, 0o755)?;
        }
        let m = fs::metadata(&target).map_err(io_err(&target, "stat the installed plugin"))?;
        self.binary_ok = stamp(&m);
        Ok(())
    }

    /// The primary's file name, as libcni picks it (or as configured).
    fn find_primary(&self) -> Result<Option<String>, InstallError> {
        let dir = &self.cfg.conf_dir;
        if let Some(name) = self.cfg.conf_file_name.as_deref().filter(|n| !n.is_empty()) {
            if dir.join(name).is_file() {
                return Ok(Some(name.to_owned()));
            }
            // A configured `.conf` we converted lives on as the `.conflist` we wrote.
            let converted = self
                .backup
                .as_ref()
                .filter(|b| b.file == name && dir.join(&b.written).is_file());
            return Ok(converted.map(|b| b.written.clone()));
        }
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(dir, "list the CNI configuration directory")(e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n != BACKUP_NAME && is_conf_name(n) && dir.join(n).is_file())
            .collect();
        names.sort();
        Ok(names.into_iter().find(|n| {
            fs::read(dir.join(n)).is_ok_and(|b| serde_json::from_slice::<Value>(&b).is_ok())
        }))
    }
}

/// A config with our entry in it, when the given one needs a change.
struct Change {
    conf: Value,
    /// The new file name, when a single-plugin file becomes a conflist.
    target: Option<String>,
    /// The file held an ambit-cni entry already (stale or misplaced).
    had_entry: bool,
}

fn with_entry(
    conf: &Value,
    entry: &Value,
    name: &str,
    path: &Path,
) -> Result<Option<Change>, InstallError> {
    let not_cni = |reason: &str| InstallError::NotCniConfig {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let obj = conf
        .as_object()
        .ok_or_else(|| not_cni("not a JSON object"))?;
    match obj.get("plugins") {
        Some(Value::Array(plugins)) => {
            if plugins.last() == Some(entry) && plugins.iter().filter(|p| is_ours(p)).count() == 1 {
                return Ok(None);
            }
            let had_entry = plugins.iter().any(is_ours);
            let mut plugins: Vec<Value> = plugins.iter().filter(|p| !is_ours(p)).cloned().collect();
            plugins.push(entry.clone());
            let mut obj = obj.clone();
            obj.insert("plugins".to_owned(), Value::Array(plugins));
            Ok(Some(Change {
                conf: Value::Object(obj),
                target: None,
                had_entry,
            }))
        }
        Some(_) => Err(not_cni("\"plugins\" is not an array")),
        None if obj.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE) => Err(not_cni(
            "a lone ambit-cni plugin: ambit-cni only chains after a primary CNI",
        )),
        None if obj.get("type").is_some_and(Value::is_string) => {
            let stem = Path::new(name)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or(name);
            let mut plugin = obj.clone();
            let mut list = Map::new();
            if let Some(v) = plugin.remove("cniVersion") {
                list.insert("cniVersion".to_owned(), v);
            }
            // libcni requires a conflist's name; a single .conf may omit it.
            let name_v = plugin
                .remove("name")
                .unwrap_or_else(|| Value::String(stem.to_owned()));
            list.insert("name".to_owned(), name_v);
            list.insert("plugins".to_owned(), json!([plugin, entry]));
            Ok(Some(Change {
                conf: Value::Object(list),
                target: Some(format!("{stem}.conflist")),
                had_entry: false,
            }))
        }
        None => Err(not_cni("neither a \"plugins\" list nor a plugin \"type\"")),
    }
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

fn has_entry_bytes(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes).is_ok_and(|v| {
        v.get("plugins")
            .and_then(Value::as_array)
            .is_some_and(|p| p.iter().any(is_ours))
    })
}

/// Gives the primary's file back: the original bytes when the file is still what we wrote, else the file minus
/// our entry. A file the primary removed meanwhile stays removed.
fn restore(dir: &Path, b: &Backup) -> Result<(), InstallError> {
    let written = dir.join(&b.written);
    let file = dir.join(&b.file);
    let Some(current) = read_if_present(&written, "read the CNI configuration we wrote")? else {
        return Ok(());
    };
    if current != b.written_content.as_bytes() {
        return remove_entry(&written);
    }
    let original = b.original.as_ref().map(Original::bytes);
    let mode = mode_of(&written);
    match original {
        // Converted, and the primary wrote its .conf again meanwhile: that one is current, ours just goes.
        Some(_) if b.written != b.file && file.exists() => remove_if_present(&written),
        Some(bytes) => {
            write_atomic(&file, bytes, mode)?;
            if b.written != b.file {
                remove_if_present(&written)?;
            }
            Ok(())
        }
        None => remove_entry(&written),
    }
}

/// Removes every ambit-cni entry from a conflist, leaving files without one (or not JSON) alone.
fn remove_entry(path: &Path) -> Result<(), InstallError> {
    let Some(bytes) = read_if_present(path, "read the CNI configuration")? else {
        return Ok(());
    };
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(());
    };
    let Some(Value::Array(plugins)) = obj.get_mut("plugins") else {
        return Ok(());
    };
    if !plugins.iter().any(is_ours) {
        return Ok(());
    }
    plugins.retain(|p| !is_ours(p));
    let content = format!("{:#}\n", Value::Object(obj));
    let mode = mode_of(path);
    write_atomic(path, content.as_bytes(), mode)
}

fn read_backup(path: &Path) -> Result<Option<Backup>, InstallError> {
    let Some(bytes) = read_if_present(path, "read the install backup")? else {
        return Ok(None);
    };
    let bad = |reason: String| InstallError::Backup {
        path: path.to_owned(),
        reason,
    };
    let b: Backup = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if !is_plain_name(&b.file) || !is_plain_name(&b.written) {
        return Err(bad("file names must be names in the conf dir".to_owned()));
    }
    Ok(Some(b))
}

fn write_backup(dir: &Path, b: &Backup) -> Result<(), InstallError> {
    let path = dir.join(BACKUP_NAME);
    let bytes = serde_json::to_vec_pretty(b).map_err(|e| InstallError::Backup {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(&path, &bytes, 0o600)
}

/// Writes `path` whole: a temporary file in the same directory (a name libcni ignores), fsynced, renamed.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(PLUGIN_TYPE);
    let tmp = path.with_file_name(format!(".{name}.ambit-tmp"));
    write_atomic_via(&tmp, path, bytes, mode)
}

fn write_atomic_via(tmp: &Path, path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let write = || -> io::Result<()> {
        let mut f = fs::File::create(tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(tmp);
        return Err(io_err(tmp, "write")(e));
    }
    fs::rename(tmp, path).map_err(io_err(path, "rename into place"))?;
    // The rename itself survives a crash only once the directory is synced.
    if let Some(dir) = path.parent() {
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<(), InstallError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path, "remove")(e)),
        _ => Ok(()),
    }
}

/// The file's bytes; `None` when it does not exist.
fn read_if_present(path: &Path, action: &'static str) -> Result<Option<Vec<u8>>, InstallError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path, action)(e)),
    }
}

/// The permissions a rewritten file keeps.
fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).map_or(0o644, |m| m.mode() & 0o7777)
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

fn is_conf_name(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| CONF_EXTENSIONS.contains(&e))
}
