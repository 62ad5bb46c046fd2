//! The `ambit-cni` binary as a container runtime runs it: env + netconf on stdin, against a unix socket that
//! answers as the node agent would (or nothing listening), and chained after Debian's real `bridge` +
//! `host-local` plugins in a real network namespace (root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;

use ambit_cni::plugin::{PluginCommand, PluginRequest, PluginResponse};
use serde_json::{Value, json};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Execs a CNI plugin binary the way a runtime does: a clean environment, the netconf on stdin.
fn exec(bin: &Path, env: &[(&str, &str)], stdin: &str) -> Run {
    let mut child = Command::new(bin)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn plugin(env: &[(&str, &str)], stdin: &str) -> Run {
    exec(Path::new(env!("CARGO_BIN_EXE_ambit-cni")), env, stdin)
}

/// A node agent stand-in: answers each connection with `answer` and reports the requests it got.
fn fake_agent(socket: &Path, answer: PluginResponse) -> mpsc::Receiver<PluginRequest> {
    let listener = UnixListener::bind(socket).unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            let req: PluginRequest =
                serde_json::from_str(line.trim()).expect("a PluginRequest line");
            let mut reply = serde_json::to_vec(&answer).unwrap();
            reply.push(b'\n');
            stream.write_all(&reply).unwrap();
            if tx.send(req).is_err() {
                return;
            }
        }
    });
    rx
}

const ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-0;K8S_POD_UID=u-1";

fn env_for<'a>(command: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", ARGS),
        ("CNI_PATH", "/usr/lib/cni"),
    ]
}

fn netconf(socket: &Path, failure_mode: &str, prev: Option<&Value>) -> String {
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "ambit-cni",
        "socket": socket,
        "failure_mode": failure_mode,
    });
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    conf.to_string()
}

fn prev_result() -> Value {
    json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
           "ips": [{"address": "10.22.0.5/16", "interface": 0}]})
}

fn error_json(run: &Run) -> Value {
    assert_ne!(run.code, 0, "expected a failure: {}", run.stdout);
    let v: Value = serde_json::from_str(&run.stdout).expect("a CNI error object on stdout");
    assert!(v["msg"].is_string() && v["cniVersion"].is_string(), "{v}");
    v
}

#[test]
fn add_asks_the_agent_and_passes_prev_result_through() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cni.sock");
    let requests = fake_agent(&socket, PluginResponse::Captured);
    let prev = prev_result();
    let run = plugin(
        &env_for("ADD", "/var/run/netns/cni-1"),
        &netconf(&socket, "closed", Some(&prev)),
    );
    assert_eq!(run.code, 0, "stdout {} stderr {}", run.stdout, run.stderr);
    let printed: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        printed, prev,
        "a chained plugin prints prevResult unchanged"
    );
    let req = requests.recv().unwrap();
    assert_eq!(req.command, PluginCommand::Add);
    assert_eq!(req.container_id, "c0ffee");
    assert_eq!(req.netns, PathBuf::from("/var/run/netns/cni-1"));
    assert_eq!(
        (
            req.pod_namespace.as_str(),
            req.pod_name.as_str(),
            req.pod_uid.as_str()
        ),
        ("demo", "web-0", "u-1")
    );
}

#[test]
fn failure_modes_when_the_agent_is_down_or_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = dir.path().join("nobody-listens.sock");
    let prev = prev_result();

    // closed: the pod must not start.
    let run = plugin(
        &env_for("ADD", "/n"),
        &netconf(&nobody, "closed", Some(&prev)),
    );
    let err = error_json(&run);
    assert_eq!(err["code"], 100, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("demo/web-0"), "{err}");

    // open (Istio's default): the pod starts, and the plugin says why it is uncaptured.
    let run = plugin(
        &env_for("ADD", "/n"),
        &netconf(&nobody, "open", Some(&prev)),
    );
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(serde_json::from_str::<Value>(&run.stdout).unwrap(), prev);
    assert!(run.stderr.contains("uncaptured"), "{}", run.stderr);

    // The agent answers with an error: the same two outcomes.
    let socket = dir.path().join("refuses.sock");
    let _requests = fake_agent(
        &socket,
        PluginResponse::Error {
            message: "ztunnel is not connected".into(),
        },
    );
    let err = error_json(&plugin(
        &env_for("ADD", "/n"),
        &netconf(&socket, "closed", Some(&prev)),
    ));
    assert!(
        err["details"]
            .as_str()
            .unwrap()
            .contains("ztunnel is not connected"),
        "{err}"
    );
    let run = plugin(
        &env_for("ADD", "/n"),
        &netconf(&socket, "open", Some(&prev)),
    );
    assert_eq!(run.code, 0);
    assert!(
        run.stderr.contains("ztunnel is not connected"),
        "{}",
        run.stderr
    );

    // DEL never fails, agent or not, config or not.
    let run = plugin(&env_for("DEL", "/n"), &netconf(&nobody, "closed", None));
    assert_eq!(run.code, 0, "{}", run.stdout);
    let run = plugin(&env_for("DEL", "/n"), "{not json");
    assert_eq!(run.code, 0, "{}", run.stdout);
}

#[test]
fn bad_input_is_a_cni_error_never_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cni.sock");
    let _requests = fake_agent(&socket, PluginResponse::Captured);
    let prev = prev_result();
    let good = netconf(&socket, "open", Some(&prev));

    let err = error_json(&plugin(&env_for("ADD", "/n"), "{not json"));
    assert_eq!(err["code"], 6, "decode error: {err}");

    let err = error_json(&plugin(
        &env_for("ADD", "/n"),
        &netconf(&socket, "sometimes", Some(&prev)),
    ));
    assert_eq!(err["code"], 2, "bad failure_mode: {err}");

    let err = error_json(&plugin(
        &env_for("ADD", "/n"),
        &netconf(&socket, "open", None),
    ));
    assert!(
        err["details"].as_str().unwrap().contains("prevResult"),
        "{err}"
    );

    let mut env = env_for("ADD", "/n");
    env.retain(|(k, _)| *k != "CNI_ARGS");
    let err = error_json(&plugin(&env, &good));
    assert_eq!(err["code"], 4, "no pod in CNI_ARGS: {err}");

    let mut env = env_for("ADD", "/n");
    env.retain(|(k, _)| *k != "CNI_NETNS");
    assert_eq!(error_json(&plugin(&env, &good))["code"], 4);

    assert_eq!(
        error_json(&plugin(&env_for("FROB", "/n"), &good))["code"],
        4
    );
    assert_eq!(error_json(&plugin(&[], &good))["code"], 4);

    let run = plugin(&[("CNI_COMMAND", "VERSION")], "");
    assert_eq!(run.code, 0);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    let versions: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        versions.contains(&"1.0.0") && versions.contains(&"0.4.0"),
        "{v}"
    );
}

/// Runs `bridge` (with `host-local` IPAM) for real in a fresh network namespace, then `ambit-cni` with bridge's
/// result as prevResult, exactly as a runtime walks a conflist; DEL in reverse order.
#[test]
fn chained_after_the_real_bridge_plugin() {
    let bridge = Path::new("/usr/lib/cni/bridge");
    if !nix::unistd::Uid::effective().is_root() || !bridge.exists() {
        eprintln!(
            "SKIPPED chained_after_the_real_bridge_plugin: needs root and Debian's containernetworking-plugins \
             (/usr/lib/cni/bridge)"
        );
        return;
    }
    let name = format!("ambit-cni-t{}", std::process::id());
    let ns_path = format!("/var/run/netns/{name}");
    assert!(
        Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success()
    );
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
            let _ = Command::new("ip")
                .args(["link", "del", "ambitcni0"])
                .status();
        }
    }
    let _cleanup = Cleanup(name.clone());

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cni.sock");
    let requests = fake_agent(&socket, PluginResponse::Captured);
    let bridge_conf = json!({
        "cniVersion": "1.0.0", "name": "ambit-test", "type": "bridge", "bridge": "ambitcni0",
        "isGateway": true, "ipMasq": false,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.213.0.0/24"}]],
                 "dataDir": dir.path().join("ipam")},
    });
    let env = env_for("ADD", &ns_path);
    let bridge_conf = bridge_conf.to_string();
    let run_bridge = |env: &[(&str, &str)]| exec(bridge, env, &bridge_conf);
    let out = run_bridge(&env);
    assert_eq!(out.code, 0, "bridge ADD: {} {}", out.stdout, out.stderr);
    let prev: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(
        prev["ips"][0]["address"]
            .as_str()
            .unwrap()
            .starts_with("10.213.0."),
        "{prev}"
    );

    let run = plugin(&env, &netconf(&socket, "closed", Some(&prev)));
    assert_eq!(run.code, 0, "ambit-cni ADD: {} {}", run.stdout, run.stderr);
    assert_eq!(serde_json::from_str::<Value>(&run.stdout).unwrap(), prev);
    let req = requests.recv().unwrap();
    assert_eq!(req.netns, PathBuf::from(&ns_path));
    // The namespace the agent is told about is the pod's, with bridge's interface in it.
    let links = Command::new("ip")
        .args(["-n", &name, "-o", "addr", "show", "eth0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&links.stdout).contains("10.213.0."),
        "{}",
        String::from_utf8_lossy(&links.stdout)
    );

    let mut del = env.clone();
    del[0] = ("CNI_COMMAND", "DEL");
    let run = plugin(&del, &netconf(&socket, "closed", Some(&prev)));
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(requests.recv().unwrap().command, PluginCommand::Del);
    assert_eq!(run_bridge(&del).code, 0, "bridge DEL");
}
