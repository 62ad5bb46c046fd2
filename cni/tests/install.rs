//! The CNI installer on temporary directories: entry appended and kept, converted `.conf`s, repairs after the
//! primary rewrites its file, byte-for-byte restores (also after an agent restart), the binary copy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ambit_cni::install::{BACKUP_NAME, Ensured, InstallConfig, InstallError, Installer};
use serde_json::{Value, json};

/// A primary conflist as a CNI would write it: its own key order, tabs, no trailing newline.
const BRIDGE_CONFLIST: &str = "{\n\t\"name\": \"k8s-pod-network\",\n\t\"cniVersion\": \"1.0.0\",\n\t\"plugins\": [\n\t\t{\"type\": \"bridge\", \"bridge\": \"cni0\", \"ipam\": {\"type\": \"host-local\", \"subnet\": \"10.1.0.0/16\"}},\n\t\t{\"type\": \"portmap\", \"capabilities\": {\"portMappings\": true}}\n\t],\n\t\"extra\": {\"z\": 1, \"a\": 2}\n}";
const BRIDGE_CONF: &str = "{ \"cniVersion\": \"0.4.0\", \"name\": \"mynet\", \"type\": \"bridge\",\n  \"ipam\": { \"type\": \"host-local\", \"subnet\": \"10.22.0.0/16\" } }\n";

struct Node {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    conf: PathBuf,
    cfg: InstallConfig,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("opt/cni/bin");
    let conf = dir.path().join("etc/cni/net.d");
    fs::create_dir_all(&bin).unwrap();
    fs::create_dir_all(&conf).unwrap();
    let plugin = dir.path().join("ambit-cni-src");
    fs::write(&plugin, b"\x7fELF pretend plugin binary").unwrap();
    let cfg = InstallConfig {
        bin_dir: bin.clone(),
        conf_dir: conf.clone(),
        conf_file_name: None,
        plugin_binary: plugin,
        socket: "/var/run/ambit/cni.sock".into(),
        failure_mode: "open".into(),
    };
    Node {
        _dir: dir,
        bin,
        conf,
        cfg,
    }
}

fn ours(socket: &str, mode: &str) -> Value {
    json!({"type": "ambit-cni", "socket": socket, "failure_mode": mode})
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn plugins(path: &Path) -> Vec<Value> {
    read_json(path)["plugins"].as_array().unwrap().clone()
}

/// Puts the file's mtime in the past, so any rewrite shows.
fn age(path: &Path) -> (SystemTime, u64) {
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    (old, fs::metadata(path).unwrap().ino())
}

fn stamp(path: &Path) -> (SystemTime, u64) {
    let m = fs::metadata(path).unwrap();
    (m.modified().unwrap(), m.ino())
}

#[test]
fn conflist_gets_our_entry_last_and_keeps_everything_else() {
    let n = node();
    let file = n.conf.join("10-bridge.conflist");
    fs::write(&file, BRIDGE_CONFLIST).unwrap();
    let mut inst = Installer::new(n.cfg.clone()).unwrap();
    assert_eq!(
        inst.ensure().unwrap(),
        Ensured::Installed { file: file.clone() }
    );
    let mut want: Value = serde_json::from_str(BRIDGE_CONFLIST).unwrap();
    want["plugins"]
        .as_array_mut()
        .unwrap()
        .push(ours("/var/run/ambit/cni.sock", "open"));
    assert_eq!(read_json(&file), want);
    // The backup is in the conf dir under a name libcni does not read.
    assert!(n.conf.join(BACKUP_NAME).is_file());
    assert_eq!(fs::read_dir(&n.conf).unwrap().count(), 2);
}

#[test]
fn second_ensure_is_unchanged_and_does_not_touch_the_file() {
    let n = node();
    let file = n.conf.join("10-bridge.conflist");
    fs::write(&file, BRIDGE_CONFLIST).unwrap();
    let mut inst = Installer::new(n.cfg.clone()).unwrap();
    inst.ensure().unwrap();
    let before = fs::read(&file).unwrap();
    let aged = age(&file);
    let bin_aged = age(&n.bin.join("ambit-cni"));
    for _ in 0..3 {
        assert_eq!(inst.ensure().unwrap(), Ensured::Unchanged);
    }
    assert_eq!(fs::read(&file).unwrap(), before);
    assert_eq!(stamp(&file), aged);
    assert_eq!(stamp(&n.bin.join("ambit-cni")), bin_aged);
    // A fresh installer (agent restart) agrees nothing is to do.
    assert_eq!(
        Installer::new(n.cfg.clone()).unwrap().ensure().unwrap(),
        Ensured::Unchanged
    );
    assert_eq!(stamp(&file), aged);
}

#[test]
fn stale_or_misplaced_entry_is_replaced_and_put_last() {
    let n = node();
    let file = n.conf.join("10-bridge.conflist");
    let stale = json!({"cniVersion": "1.0.0", "name": "net", "plugins": [
        {"type": "bridge"}, {"type": "ambit-cni", "socket": "/old.sock", "failure_mode": "open"}]});
    fs::write(&file, stale.to_string()).unwrap();
    let mut inst = Installer::new(n.cfg.clone()).unwrap();
    assert!(matches!(inst.ensure().unwrap(), Ensured::Installed { .. }));
    assert_eq!(
        plugins(&file),
        vec![
            json!({"type": "bridge"}),
            ours("/var/run/ambit/cni.sock", "open")
        ]
    );

    // Ours, but not last (something was appended after it): moved last, once.
    let misplaced = json!({"name": "net", "plugins": [
        {"type": "bridge"}, ours("/var/run/ambit/cni.sock", "open"), {"type": "portmap"}]});
    fs::write(&file, misplaced.to_string()).unwrap();
    assert!(matches!(inst.ensure().unwrap(), Ensured::Repaired { .. }));
    assert_eq!(
        plugins(&file),
        vec![
            json!({"type": "bridge"}),
            json!({"type": "portmap"}),
            ours("/var/run/ambit/cni.sock", "open")
        ]
    );

    // A new failure mode after an agent upgrade: our own entry updated.
    let mut cfg = n.cfg.clone();
    cfg.failure_mode = "closed".into();
    let mut upgraded = Installer::new(cfg).unwrap();
    assert!(matches!(
        upgraded.ensure().unwrap(),
        Ensured::Installed { .. }
    ));
    assert_eq!(
        plugins(&file).last().unwrap(),
        &ours("/var/run/ambit/cni.sock", "closed")
    );
    assert_eq!(plugins(&file).len(), 3);
}

#[test]
fn conf_is_converted_to_a_conflist_and_restored_byte_for_byte() {
    let n = node();
    let conf = n.conf.join("10-mynet.conf");
    fs::write(&conf, BRIDGE_CONF).unwrap();
    let mut inst = Installer::new(n.cfg.clone()).unwrap();
    let list = n.conf.join("10-mynet.conflist");
    assert_eq!(
        inst.ensure().unwrap(),
        Ensured::Installed { file: list.clone() }
    );
    assert!(!conf.exists(), "libcni would still pick the .conf");
    assert_eq!(
        read_json(&list),
        json!({"cniVersion": "0.4.0", "name": "mynet", "plugins": [
            {"type": "bridge", "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}},
            ours("/var/run/ambit/cni.sock", "open")]})
    );
    assert_eq!(inst.ensure().unwrap(), Ensured::Unchanged);

    inst.uninstall().unwrap();
    assert_eq!(fs::read_to_string(&conf).unwrap(), BRIDGE_CONF);
    assert!(!list.exists());
    assert!(!n.conf.join(BACKUP_NAME).exists());
}

#[test]
fn configured_conf_name_follows_the_conversion() {
    let n = node();
    fs::write(n.conf.join("10-mynet.conf"), BRIDGE_CONF).unwrap();
    let mut cfg = n.cfg.clone();
    cfg.conf_file_name = Some("10-mynet.conf".into());
    let mut inst = Installer::new(cfg).unwrap();
    assert!(matches!(inst.ensure().unwrap(), Ensured::Installed { .. }));
    assert_eq!(inst.ensure().unwrap(), Ensured::Unchanged);
    // The primary writes its .conf again: converted again.
    fs::write(n.conf.join("10-mynet.conf"), BRIDGE_CONF).unwrap();
    assert!(matches!(inst.ensure().unwrap(), Ensured::Repaired { .. }));
    assert!(!n.conf.join("10-mynet.conf").exists());
    inst.uninstall().unwrap();
    assert_eq!(
        fs::read_to_string(n.conf.join("10-mynet.conf")).unwrap(),
        BRIDGE_CONF
    );
    assert_eq!(fs::read_dir(&n.conf).unwrap().count(), 1);
}

#[test]
fn primary_rewrite_is_repaired_and_the_new_original_restored() {
    let n = node();
    let file = n.conf.join("10-bridge.conflist");
    fs::write(&file, BRIDGE_CONFLIST).unwrap();
    let mut inst = Installer::new(n.cfg.clone()).unwrap();
    inst.ensure().unwrap();
    // The primary puts its own content back (our entry gone), this time slightly different.
    let rewritten = BRIDGE_CONFLIST.replace("10.1.0.0/16", "10.2.0.0/16");
    fs::write(&file, &rewritten).unwrap();
    assert_eq!(
        inst.ensure().unwrap(),
        Ensured::Repaired { file: file.clone() }
    );
    assert_eq!(
        plugins(&file).last().unwrap(),
        &ours("/var/run/ambit/cni.sock", "open")
    );
    assert_eq!(inst.ensure().unwrap(), Ensured::Unchanged);
    inst.uninstall().unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), rewritten);
}

#[test]
fn uninstall_restores_byte_for_byte_and_is_idempotent() {
    let n = node();
    let file = n.conf.join("10-bridge.conflist");
    fs::write(&file, BRIDGE_CONFLIST).unwrap();
    let mut inst = Installer::new(n.cfg.clone()).unwrap();
    inst.ensure().unwrap();
    assert_ne!(fs::read_to_string(&file).unwrap(), BRIDGE_CONFLIST);
    inst.uninstall().unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), BRIDGE_CONFLIST);
    assert!(!n.bin.join("ambit-cni").exists());
    assert!(!n.conf.join(BACKUP_NAME).exists());
    inst.uninstall().unwrap();
    Installer::new(n.cfg.clone()).unwrap().uninstall().unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), BRIDGE_CONFLIST);
    // Nothing ever installed: fine too.
    Installer::new(node().cfg).unwrap().uninstall().unwrap();
}

#[test]
fn uninstall_after_the_primary_changed_the_file_removes_only_our_entry() {
    let n = node();
    let file = n.conf.join("10-bridge.conflist");
    fs::write(&file, BRIDGE_CONFLIST).unwrap();
    let mut inst = Installer::new(n.cfg.clone()).unwrap();
    inst.ensure().unwrap();
    // The primary edits the file and keeps our entry (e.g. it merges into what is there).
    let mut changed = read_json(&file);
    changed["plugins"]
        .as_array_mut()
        .unwrap()
        .insert(1, json!({"type": "bandwidth"}));
    fs::write(&file, changed.to_string()).unwrap();
    inst.uninstall().unwrap();
    let got = read_json(&file);
    assert_eq!(got["extra"], json!({"z": 1, "a": 2}));
    assert_eq!(
        got["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["bridge", "bandwidth", "portmap"]
    );
}

#[test]
fn a_restarted_agent_uninstalls_from_the_backup() {
    let n = node();
    let file = n.conf.join("10-bridge.conflist");
    fs::write(&file, BRIDGE_CONFLIST).unwrap();
    Installer::new(n.cfg.clone()).unwrap().ensure().unwrap();
    // The agent restarts (a new Installer from the same config), finds its entry, and is later uninstalled.
    let mut again = Installer::new(n.cfg.clone()).unwrap();
    assert_eq!(again.ensure().unwrap(), Ensured::Unchanged);
    drop(again);
    Installer::new(n.cfg.clone()).unwrap().uninstall().unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), BRIDGE_CONFLIST);

    // The same for a converted .conf, with no ensure after the restart.
    let n = node();
    let conf = n.conf.join("10-mynet.conf");
    fs::write(&conf, BRIDGE_CONF).unwrap();
    Installer::new(n.cfg.clone()).unwrap().ensure().unwrap();
    Installer::new(n.cfg.clone()).unwrap().uninstall().unwrap();
    assert_eq!(fs::read_to_string(&conf).unwrap(), BRIDGE_CONF);
    assert_eq!(fs::read_dir(&n.conf).unwrap().count(), 1);
}

#[test]
fn no_primary_yet_then_installed_once_a_file_appears() {
    let n = node();
    // Not configs (libcni ignores them), and a config that is not JSON (yet): no primary.
    fs::write(n.conf.join("README"), "hello").unwrap();
    fs::write(n.conf.join("00-partial.conflist"), "{\"name\": ").unwrap();
    let mut inst = Installer::new(n.cfg.clone()).unwrap();
    assert_eq!(inst.ensure().unwrap(), Ensured::NoPrimaryYet);
    assert_eq!(inst.ensure().unwrap(), Ensured::NoPrimaryYet);
    // The binary goes in regardless, ready for when the config does.
    assert!(n.bin.join("ambit-cni").is_file());
    let file = n.conf.join("10-bridge.conflist");
    fs::write(&file, BRIDGE_CONFLIST).unwrap();
    assert_eq!(inst.ensure().unwrap(), Ensured::Installed { file });
    assert_eq!(
        fs::read(n.conf.join("00-partial.conflist")).unwrap(),
        b"{\"name\": "
    );

    // A conf dir that does not exist yet: also no primary.
    let other = node();
    let mut cfg = other.cfg.clone();
    cfg.conf_dir = cfg.conf_dir.join("missing");
    assert_eq!(
        Installer::new(cfg).unwrap().ensure().unwrap(),
        Ensured::NoPrimaryYet
    );
}

#[test]
fn configured_file_name_wins_over_the_first_by_name() {
    let n = node();
    let first = n.conf.join("05-other.conflist");
    let other = r#"{"name": "other", "plugins": [{"type": "loopback"}]}"#;
    fs::write(&first, other).unwrap();
    let mut cfg = n.cfg.clone();
    cfg.conf_file_name = Some("10-bridge.conflist".into());
    let mut inst = Installer::new(cfg).unwrap();
    assert_eq!(inst.ensure().unwrap(), Ensured::NoPrimaryYet);
    let file = n.conf.join("10-bridge.conflist");
    fs::write(&file, BRIDGE_CONFLIST).unwrap();
    assert_eq!(inst.ensure().unwrap(), Ensured::Installed { file });
    assert_eq!(fs::read_to_string(&first).unwrap(), other);
}

#[test]
fn bad_json_is_an_error_naming_the_file_and_the_file_is_left_alone() {
    let n = node();
    let file = n.conf.join("10-bridge.conflist");
    fs::write(&file, "{\"plugins\": [").unwrap();
    let aged = age(&file);
    let mut cfg = n.cfg.clone();
    cfg.conf_file_name = Some("10-bridge.conflist".into());
    let mut inst = Installer::new(cfg).unwrap();
    let err = inst.ensure().unwrap_err();
    assert!(matches!(err, InstallError::BadJson { .. }), "{err}");
    assert!(err.to_string().contains("10-bridge.conflist"), "{err}");
    assert_eq!(fs::read(&file).unwrap(), b"{\"plugins\": [");
    assert_eq!(stamp(&file), aged);
    assert!(!n.conf.join(BACKUP_NAME).exists());

    // JSON, but not a CNI config: also an error, also untouched.
    fs::write(&file, "[1, 2]").unwrap();
    let err = inst.ensure().unwrap_err();
    assert!(err.to_string().contains("10-bridge.conflist"), "{err}");
    assert_eq!(fs::read(&file).unwrap(), b"[1, 2]");
}

#[test]
fn binary_is_copied_executable_and_not_rewritten_when_identical() {
    let n = node();
    let target = n.bin.join("ambit-cni");
    let mut inst = Installer::new(n.cfg.clone()).unwrap();
    inst.ensure().unwrap();
    assert_eq!(
        fs::read(&target).unwrap(),
        fs::read(&n.cfg.plugin_binary).unwrap()
    );
    assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o755);
    assert!(!n.bin.join(".ambit-cni.tmp").exists());

    // Identical already (a new agent, same image): not rewritten.
    let aged = age(&target);
    Installer::new(n.cfg.clone()).unwrap().ensure().unwrap();
    assert_eq!(stamp(&target), aged);

    // Different (an older version), same length or not: replaced.
    let len = fs::metadata(&target).unwrap().len() as usize;
    for old in [vec![b'x'; len], b"old".to_vec()] {
        fs::write(&target, &old).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o700)).unwrap();
        inst.ensure().unwrap();
        assert_eq!(
            fs::read(&target).unwrap(),
            fs::read(&n.cfg.plugin_binary).unwrap()
        );
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o755);
    }
}

#[test]
fn bad_config_is_rejected_in_new() {
    let n = node();
    let mut cfg = n.cfg.clone();
    cfg.failure_mode = "maybe".into();
    let err = Installer::new(cfg).unwrap_err();
    assert!(matches!(err, InstallError::FailureMode(_)), "{err}");
    assert!(err.to_string().contains("open or closed"), "{err}");

    let mut cfg = n.cfg.clone();
    cfg.socket = "relative.sock".into();
    assert!(matches!(
        Installer::new(cfg).unwrap_err(),
        InstallError::Socket(_)
    ));
    let mut cfg = n.cfg.clone();
    cfg.conf_file_name = Some("../10-bridge.conflist".into());
    assert!(matches!(
        Installer::new(cfg).unwrap_err(),
        InstallError::ConfFileName(_)
    ));
    let mut cfg = n.cfg.clone();
    cfg.plugin_binary = n.bin.join("nope");
    assert!(matches!(
        Installer::new(cfg).unwrap_err(),
        InstallError::PluginBinary(_)
    ));
    // An empty file name means "find it".
    let mut cfg = n.cfg.clone();
    cfg.conf_file_name = Some(String::new());
    Installer::new(cfg).unwrap();
}

#[test]
fn primary_moving_to_another_file_gets_the_old_one_back() {
    let n = node();
    let old = n.conf.join("10-bridge.conflist");
    fs::write(&old, BRIDGE_CONFLIST).unwrap();
    let mut inst = Installer::new(n.cfg.clone()).unwrap();
    inst.ensure().unwrap();
    // The primary now writes a file that sorts first (libcni reads that one).
    let new = n.conf.join("05-bridge.conflist");
    let new_content = BRIDGE_CONFLIST.replace("k8s-pod-network", "renamed");
    fs::write(&new, &new_content).unwrap();
    assert_eq!(
        inst.ensure().unwrap(),
        Ensured::Repaired { file: new.clone() }
    );
    assert_eq!(fs::read_to_string(&old).unwrap(), BRIDGE_CONFLIST);
    inst.uninstall().unwrap();
    assert_eq!(fs::read_to_string(&new).unwrap(), new_content);
    assert_eq!(fs::read_to_string(&old).unwrap(), BRIDGE_CONFLIST);
}

#[test]
fn conversion_does_not_overwrite_a_conflist_of_someone_else() {
    let n = node();
    let conf = n.conf.join("10-mynet.conf");
    fs::write(&conf, BRIDGE_CONF).unwrap();
    let list = n.conf.join("10-mynet.conflist");
    let theirs = r#"{"name": "theirs", "plugins": [{"type": "loopback"}]}"#;
    fs::write(&list, theirs).unwrap();
    let err = Installer::new(n.cfg.clone()).unwrap().ensure().unwrap_err();
    assert!(err.to_string().contains("10-mynet.conflist"), "{err}");
    assert_eq!(fs::read_to_string(&list).unwrap(), theirs);
    assert_eq!(fs::read_to_string(&conf).unwrap(), BRIDGE_CONF);
}
