//! The request to explain: parsed from the flags, then resolved against the mesh (who the client is, which
//! service and port, which waypoint and destination workloads). And where the resources come from.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::mesh::{Mesh, Workload};
use super::{CheckArgs, InputError, UNSPECIFIED};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    ServiceAccount { namespace: String, name: String },
    Pod { namespace: String, name: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    Service {
        name: String,
        port: Option<u16>,
    },
    Pod {
        namespace: String,
        name: String,
        port: u16,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum AuthInput {
    None,
    Token(String),
    /// Claims taken as verified.
    Claims(Value),
}

#[derive(Clone, Debug, PartialEq)]
pub struct RequestSpec {
    pub from: Source,
    pub to: Dest,
    /// `--to` as written: the default `host`.
    pub to_text: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub auth: AuthInput,
}

fn bad(s: impl Into<String>) -> InputError {
    InputError(s.into())
}

fn nonempty(parts: &[&str]) -> bool {
    parts.iter().all(|p| !p.is_empty())
}

pub fn parse_from(s: &str) -> Result<Source, InputError> {
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        ["pod", ns, name] if nonempty(&[ns, name]) => Ok(Source::Pod {
            namespace: (*ns).to_owned(),
            name: (*name).to_owned(),
        }),
        [ns, sa] if nonempty(&[ns, sa]) && *ns != "pod" => Ok(Source::ServiceAccount {
            namespace: (*ns).to_owned(),
            name: (*sa).to_owned(),
        }),
        _ => Err(bad(format!(
            "--from {s:?}: give `namespace/serviceaccount` or `pod/namespace/name`"
        ))),
    }
}

fn port_of(s: &str, flag: &str) -> Result<u16, InputError> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad(format!("{flag}: {s:?} is not a port")))
}

pub fn parse_to(s: &str) -> Result<Dest, InputError> {
    if let Some(rest) = s.strip_prefix("pod/") {
        let (pod, port) = rest.rsplit_once(':').ok_or_else(|| {
            bad(format!(
                "--to {s:?}: a pod needs a port (`pod/ns/name:port`)"
            ))
        })?;
        let (ns, name) = pod
            .split_once('/')
            .filter(|(ns, name)| nonempty(&[ns, name]) && !name.contains('/'))
            .ok_or_else(|| bad(format!("--to {s:?}: give `pod/namespace/name:port`")))?;
        return Ok(Dest::Pod {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            port: port_of(port, "--to")?,
        });
    }
    let (name, port) = match s.rsplit_once(':') {
        Some((n, p)) => (n, Some(port_of(p, "--to")?)),
        None => (s, None),
    };
    if name.is_empty() || name.contains('/') {
        return Err(bad(format!(
            "--to {s:?}: give `service[:port]` or `pod/namespace/name:port`"
        )));
    }
    Ok(Dest::Service {
        name: name.to_owned(),
        port,
    })
}

/// `name=value` (also `name: value`).
pub fn parse_header(s: &str) -> Result<(String, String), InputError> {
    let (k, v) = s
        .find(['=', ':'])
        .map(|i| (&s[..i], &s[i + 1..]))
        .ok_or_else(|| bad(format!("--header {s:?}: give `name=value`")))?;
    let k = k.trim().to_ascii_lowercase();
    HeaderName::try_from(k.as_str())
        .map_err(|_| bad(format!("--header {s:?}: invalid header name")))?;
    HeaderValue::from_str(v.trim())
        .map_err(|_| bad(format!("--header {s:?}: invalid header value")))?;
    Ok((k, v.trim().to_owned()))
}

impl RequestSpec {
    pub fn from_args(a: &CheckArgs) -> Result<RequestSpec, InputError> {
        let auth = match (&a.jwt, &a.claims) {
            (Some(t), _) => AuthInput::Token(t.trim().to_owned()),
            (None, Some(f)) => {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| bad(format!("--claims {}: {e}", f.display())))?;
                let v: Value = serde_json::from_str(&text)
                    .map_err(|e| bad(format!("--claims {}: not JSON: {e}", f.display())))?;
                if !v.is_object() {
                    return Err(bad(format!("--claims {}: not a JSON object", f.display())));
                }
                AuthInput::Claims(v)
            }
            (None, None) => AuthInput::None,
        };
        if !a.path.starts_with('/') {
            return Err(bad(format!("--path {:?}: must start with /", a.path)));
        }
        http::Method::from_bytes(a.method.as_bytes())
            .map_err(|_| bad(format!("--method {:?}: not an HTTP method", a.method)))?;
        Ok(RequestSpec {
            from: parse_from(&a.from)?,
            to: parse_to(&a.to)?,
            to_text: a.to.clone(),
            method: a.method.clone(),
            path: a.path.clone(),
            headers: a
                .headers
                .iter()
                .map(|h| parse_header(h))
                .collect::<Result<_, _>>()?,
            auth,
        })
    }
}

/// The request against the mesh.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub source_name: String,
    pub source_identity: String,
    pub source_ip: IpAddr,
    pub trust_domain: String,
    pub dest_name: String,
    /// The service hostname, when addressed to a service.
    pub service: Option<String>,
    pub dest_ip: IpAddr,
    pub port: u16,
    pub host: String,
    pub headers: HeaderMap,
    pub waypoint: Option<(String, String)>,
    pub endpoints: Vec<(Workload, u16)>,
}

pub fn resolve(mesh: &Mesh, spec: &RequestSpec) -> Result<Resolved, InputError> {
    let trust_domain = mesh
        .workloads
        .iter()
        .map(|w| w.trust_domain.as_str())
        .find(|t| !t.is_empty())
        .unwrap_or("cluster.local")
        .to_owned();
    let (source_name, source_identity, source_ip) = match &spec.from {
        Source::ServiceAccount { namespace, name } => {
            let w = mesh
                .workloads
                .iter()
                .find(|w| &w.namespace == namespace && &w.service_account == name);
            let ip = w
                .and_then(|w| w.ips.first().copied())
                .unwrap_or(UNSPECIFIED);
            let id = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{name}");
            (
                w.map_or_else(
                    || format!("{namespace}/{name}"),
                    |w| format!("{}/{}", w.namespace, w.name),
                ),
                id,
                ip,
            )
        }
        Source::Pod { namespace, name } => {
            let w = mesh.workload(namespace, name).ok_or_else(|| {
                bad(format!(
                    "--from: no pod {namespace}/{name} in the resources"
                ))
            })?;
            (
                format!("{namespace}/{name}"),
                w.identity(),
                w.ips.first().copied().unwrap_or(UNSPECIFIED),
            )
        }
    };
    let mut headers = HeaderMap::new();
    for (k, v) in &spec.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            headers.append(k, v);
        }
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| spec.to_text.clone(), str::to_owned);
    let resolved = match &spec.to {
        Dest::Service { name, port } => {
            let svc = mesh.service(name).ok_or_else(|| {
                let known: Vec<&str> = mesh.services.iter().map(|s| s.hostname.as_str()).collect();
                bad(format!(
                    "--to: no service {name:?} (known: {})",
                    known.join(", ")
                ))
            })?;
            let port = match port {
                Some(p) => *p,
                None => *svc
                    .ports
                    .first()
                    .ok_or_else(|| bad(format!("--to: service {} has no ports", svc.hostname)))?,
            };
            if !svc.ports.contains(&port) {
                return Err(bad(format!(
                    "--to: service {} has no port {port} (ports: {:?})",
                    svc.hostname, svc.ports
                )));
            }
            Resolved {
                source_name,
                source_identity,
                source_ip,
                trust_domain,
                dest_name: svc.hostname.clone(),
                service: Some(svc.hostname.clone()),
                dest_ip: svc.vips.first().copied().unwrap_or(UNSPECIFIED),
                port,
                host,
                headers,
                waypoint: svc.waypoint.clone(),
                endpoints: mesh
                    .endpoints(svc, port)
                    .into_iter()
                    .map(|(w, p)| (w.clone(), p))
                    .collect(),
            }
        }
        Dest::Pod {
            namespace,
            name,
            port,
        } => {
            let w = mesh
                .workload(namespace, name)
                .ok_or_else(|| bad(format!("--to: no pod {namespace}/{name} in the resources")))?;
            Resolved {
                source_name,
                source_identity,
                source_ip,
                trust_domain,
                dest_name: format!("{namespace}/{name}"),
                service: None,
                dest_ip: w.ips.first().copied().unwrap_or(UNSPECIFIED),
                port: *port,
                host,
                headers,
                waypoint: w.waypoint.clone(),
                endpoints: vec![(w.clone(), *port)],
            }
        }
    };
    Ok(resolved)
}

fn json_object(body: &[u8], what: &str) -> Result<Value, InputError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(bad(format!("{what} did not return a JSON object"))),
    }
}

/// The running local mesh's controller `/debug/resources`.
pub fn fetch_local() -> Result<Value, InputError> {
    use crate::local::net::{GATEWAY, NET_NS};
    if !nix::unistd::Uid::effective().is_root() {
        return Err(bad(
            "--local: reaching the controller inside the mesh's network needs root",
        ));
    }
    let addr = SocketAddr::from((GATEWAY, 15014));
    let (code, body) =
        crate::local::http::get_in(NET_NS, addr, "/debug/resources").ok_or_else(|| {
            bad(format!(
                "--local: the controller at {addr} did not answer (is `ambit local up` running?)"
            ))
        })?;
    if code != 200 {
        return Err(bad(format!(
            "--local: the controller answered {code} to /debug/resources"
        )));
    }
    json_object(&body, "/debug/resources")
}

/// The `controller` binary: the flag (or `$AMBIT_CONTROLLER_BIN`), next to `ambit`, then on PATH. `ambit analyze`
/// finds it the same way.
pub fn controller_bin(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_owned();
    }
    if let Ok(exe) = std::env::current_exe() {
        let sibling = exe.with_file_name("controller");
        if sibling.is_file() {
            return sibling;
        }
    }
    PathBuf::from("controller")
}

/// `controller compute --manifests …`'s JSON.
pub fn compute_manifests(dirs: &[PathBuf], bin: Option<&Path>) -> Result<Value, InputError> {
    let bin = controller_bin(bin);
    let mut cmd = Command::new(&bin);
    cmd.arg("compute");
    for d in dirs {
        cmd.arg("--manifests").arg(d);
    }
    let out = cmd.output().map_err(|e| {
        bad(format!(
            "cannot run {} (set AMBIT_CONTROLLER_BIN): {e}",
            bin.display()
        ))
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(bad(format!(
            "`{} compute` failed: {}",
            bin.display(),
            stderr.trim()
        )));
    }
    if !stderr.trim().is_empty() {
        eprint!("{stderr}");
    }
    json_object(&out.stdout, "`controller compute`")
}
