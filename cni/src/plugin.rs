//! The chained CNI plugin `ambit-cni` and its conversation with the node agent.
//!
//! The container runtime execs the plugin after the primary CNI (CNI spec 1.0.0): the command and the pod come
//! in the environment (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`), the network
//! configuration on stdin, with the previous plugin's result in `prevResult`. On ADD the plugin asks the node
//! agent to capture the pod and waits for its answer, so the redirection is in place before the pod's containers
//! start; then it prints `prevResult` unchanged. On DEL it tells the agent to release the pod and never fails.
//!
//! ## Plugin ⇄ agent protocol
//!
//! One unix-socket connection per request (`"socket"` in the netconf, default [`DEFAULT_SOCKET`]). The plugin
//! writes one JSON line, a [`PluginRequest`]:
//!
//! ```text
//! {"command":"ADD","container_id":"…","netns":"/var/run/netns/cni-…","pod_name":"web","pod_namespace":"default","pod_uid":"…"}
//! ```
//!
//! and the agent answers one JSON line, a [`PluginResponse`]: `{"outcome":"captured"}`,
//! `{"outcome":"not_enrolled"}`, `{"outcome":"released"}` or `{"outcome":"error","message":"…"}`, then closes.
//! The plugin gives the agent [`AGENT_TIMEOUT`] in all.
//!
//! ## Failure mode (`"failure_mode"` in the netconf)
//!
//! `open` (the default, as Istio's): when the agent cannot be reached or fails, the plugin logs to stderr and the
//! pod starts uncaptured; the agent captures it on its next reconcile. `closed`: ADD fails with a CNI error, so
//! the pod does not start.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where the node agent serves plugin requests unless the netconf says otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/ambit/cni.sock";
/// How long the plugin waits for the agent's answer.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The CNI versions the plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The plugin's `type` in a conflist (the binary's name in the CNI bin dir).
pub const PLUGIN_TYPE: &str = "ambit-cni";

/// CNI error codes (spec "Error codes"): 1–99 are the spec's, 100+ the plugin's own.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const INVALID_ENV: u32 = 4;
    pub const DECODE: u32 = 6;
    pub const TRY_AGAIN: u32 = 11;
    /// The node agent could not be reached or did not capture the pod (failure mode `closed`).
    pub const AGENT: u32 = 100;
}

/// A CNI error, printed as the spec's JSON object on stdout with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The spec's error object.
    pub fn to_json(&self, cni_version: &str) -> String {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
        .to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    #[default]
    Open,
    Closed,
}

impl std::str::FromStr for FailureMode {
    type Err = String;
    fn from_str(s: &str) -> Result<FailureMode, String> {
        match s {
            "open" => Ok(FailureMode::Open),
            "closed" => Ok(FailureMode::Closed),
            other => Err(format!("failure mode {other:?}: expected open or closed")),
        }
    }
}

/// The part of the network configuration the plugin reads.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub socket: PathBuf,
    pub failure_mode: FailureMode,
    pub prev_result: Option<Value>,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        NetConf::from_json(serde_json::from_slice(stdin))
    }

    /// From the decoded stdin (or why it did not decode).
    fn from_json(v: Result<Value, serde_json::Error>) -> Result<NetConf, CniError> {
        let v = v.map_err(|e| {
            CniError::new(code::DECODE, "invalid network configuration", e.to_string())
        })?;
        let obj = v.as_object().ok_or_else(|| {
            CniError::new(
                code::DECODE,
                "invalid network configuration",
                "not a JSON object",
            )
        })?;
        let string = |key: &str| -> Result<Option<String>, CniError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(CniError::new(
                    code::DECODE,
                    "invalid network configuration",
                    format!("{key:?} is not a string"),
                )),
            }
        };
        let cni_version = string("cniVersion")?.unwrap_or_else(|| "1.0.0".to_owned());
        let socket = string("socket")?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SOCKET.to_owned());
        let failure_mode = match string("failure_mode")? {
            None => FailureMode::Open,
            Some(s) => s.parse().map_err(|e: String| {
                CniError::new(code::UNSUPPORTED_FIELD, "invalid failure_mode", e)
            })?,
        };
        Ok(NetConf {
            cni_version,
            socket: socket.into(),
            failure_mode,
            prev_result: obj.get("prevResult").cloned(),
        })
    }
}

/// The Kubernetes pod named in `CNI_ARGS`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodArgs {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// Parses `CNI_ARGS` (`K=V;K=V`): `K8S_POD_NAME` and `K8S_POD_NAMESPACE` are required, `K8S_POD_UID` optional
/// (older runtimes do not send it); other keys are ignored.
pub fn parse_cni_args(args: &str) -> Result<PodArgs, CniError> {
    let mut map = BTreeMap::new();
    for pair in args.split(';').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                "invalid CNI_ARGS",
                format!("{pair:?} is not KEY=VALUE"),
            )
        })?;
        map.insert(k.trim(), v.trim());
    }
    let get = |k: &str| map.get(k).map(|v| (*v).to_owned()).unwrap_or_default();
    let pod = PodArgs {
        name: get("K8S_POD_NAME"),
        namespace: get("K8S_POD_NAMESPACE"),
        uid: get("K8S_POD_UID"),
    };
    if pod.name.is_empty() || pod.namespace.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENV,
            "invalid CNI_ARGS",
            "K8S_POD_NAME and K8S_POD_NAMESPACE are required",
        ));
    }
    Ok(pod)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PluginCommand {
    Add,
    Del,
}

/// One request from the plugin to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRequest {
    pub command: PluginCommand,
    pub container_id: String,
    pub netns: PathBuf,
    pub pod_name: String,
    pub pod_namespace: String,
    #[serde(default)]
    pub pod_uid: String,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PluginResponse {
    Captured,
    NotEnrolled,
    Released,
    Error { message: String },
}

impl PluginResponse {
    pub fn error(message: impl Into<String>) -> PluginResponse {
        PluginResponse::Error {
            message: message.into(),
        }
    }
}

/// Sends `req` to the agent at `socket` and reads its answer, all within `timeout`.
pub fn ask_agent(
    socket: &Path,
    req: &PluginRequest,
    timeout: Duration,
) -> Result<PluginResponse, String> {
    let deadline = std::time::Instant::now() + timeout;
    // What is left of `timeout` (never zero: a zero timeout means none to the socket calls).
    let left = || {
        deadline
            .saturating_duration_since(std::time::Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("connect to the node agent at {}: {e}", socket.display()))?;
    stream
        .set_write_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| format!("write to the node agent: {e}"))?;
    stream
        .set_read_timeout(Some(left()))
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("no answer from the node agent: {e}"))?;
    serde_json::from_str(answer.trim()).map_err(|e| format!("bad answer from the node agent: {e}"))
}

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

/// The plugin: `env` looks up an environment variable, `stdin` is the network configuration.
pub fn run(env: impl Fn(&str) -> Option<String>, stdin: &[u8], timeout: Duration) -> Outcome {
    let command = env("CNI_COMMAND").unwrap_or_default();
    if command == "VERSION" {
        let v = serde_json::json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS});
        return Outcome {
            stdout: v.to_string(),
            stderr: String::new(),
            exit_code: 0,
        };
    }
    let json = serde_json::from_slice::<Value>(stdin);
    // The version to answer errors in, when the config can be read at all.
    let version = json
        .as_ref()
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "1.0.0".to_owned());
    let mut log = String::new();
    match handle(&command, &env, json, timeout, &mut log) {
        Ok(stdout) => Outcome {
            stdout,
            stderr: log,
            exit_code: 0,
        },
        Err(e) => Outcome {
            stdout: e.to_json(&version),
            stderr: log,
            exit_code: 1,
        },
    }
}

fn handle(
    command: &str,
    env: &impl Fn(&str) -> Option<String>,
    json: Result<Value, serde_json::Error>,
    timeout: Duration,
    log: &mut String,
) -> Result<String, CniError> {
    let conf = match NetConf::from_json(json) {
        Ok(conf) => conf,
        // DEL succeeds whatever it is given: the agent also releases pods that leave its pod source.
        Err(e) if command == "DEL" => {
            log.push_str(&format!(
                "ambit-cni: DEL with an unreadable configuration, nothing sent: {e}\n"
            ));
            return Ok(String::new());
        }
        Err(e) => return Err(e),
    };
    let required = |k: &str| {
        env(k).filter(|v| !v.is_empty()).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                "missing environment",
                format!("{k} is not set"),
            )
        })
    };
    match command {
        "ADD" => {
            let container_id = required("CNI_CONTAINERID")?;
            let netns = required("CNI_NETNS")?;
            let pod = parse_cni_args(&env("CNI_ARGS").unwrap_or_default())?;
            let Some(prev) = conf.prev_result.as_ref() else {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    "ambit-cni is a chained plugin",
                    "no prevResult: put it after the primary plugin in a conflist",
                ));
            };
            let req = PluginRequest {
                command: PluginCommand::Add,
                container_id,
                netns: netns.into(),
                pod_name: pod.name.clone(),
                pod_namespace: pod.namespace.clone(),
                pod_uid: pod.uid,
            };
            let failure = match ask_agent(&conf.socket, &req, timeout) {
                Ok(
                    PluginResponse::Captured
                    | PluginResponse::NotEnrolled
                    | PluginResponse::Released,
                ) => None,
                Ok(PluginResponse::Error { message }) => Some(message),
                Err(e) => Some(e),
            };
            if let Some(why) = failure {
                let pod_ref = format!("{}/{}", pod.namespace, pod.name);
                match conf.failure_mode {
                    FailureMode::Closed => {
                        return Err(CniError::new(
                            code::AGENT,
                            format!("ambit: pod {pod_ref} not captured"),
                            why,
                        ));
                    }
                    FailureMode::Open => log.push_str(&format!(
                        "ambit-cni: pod {pod_ref} starts uncaptured (failure_mode open), \
                         the node agent captures it on its next reconcile: {why}\n"
                    )),
                }
            }
            // The primary's result, unchanged: this plugin adds no interface or address.
            Ok(prev.to_string())
        }
        "DEL" => {
            // DEL never fails: the agent also releases pods that leave its pod source.
            let container_id = env("CNI_CONTAINERID").unwrap_or_default();
            let pod = parse_cni_args(&env("CNI_ARGS").unwrap_or_default()).unwrap_or_default();
            let req = PluginRequest {
                command: PluginCommand::Del,
                container_id,
                netns: env("CNI_NETNS").unwrap_or_default().into(),
                pod_name: pod.name,
                pod_namespace: pod.namespace,
                pod_uid: pod.uid,
            };
            if let Err(e) = ask_agent(&conf.socket, &req, timeout) {
                log.push_str(&format!("ambit-cni: DEL not delivered: {e}\n"));
            }
            Ok(String::new())
        }
        // Nothing of ours to check: the agent's reconcile repairs what is missing.
        "CHECK" => Ok(String::new()),
        "" => Err(CniError::new(
            code::INVALID_ENV,
            "missing environment",
            "CNI_COMMAND is not set",
        )),
        other => Err(CniError::new(
            code::INVALID_ENV,
            "unknown CNI_COMMAND",
            format!("{other:?}: expected ADD, DEL, CHECK or VERSION"),
        )),
    }
}
