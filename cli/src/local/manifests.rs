//! Reading the user's manifest directory the way `kubectl apply -f <dir>` does (the `*.yaml`/`*.yml`/`*.json`
//! files directly in it), and turning it into what the local runtime runs: namespaces, pods (Deployments expanded
//! into their replicas), services, and every other object passed through to the controller untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

/// One container-less "pod": a process with the pod's metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub service_account: String,
    /// `command` + `args` of the first container.
    pub argv: Vec<String>,
    pub env: Vec<EnvVar>,
    /// Named container ports, for services with named target ports.
    pub ports: Vec<(String, u16)>,
    /// `spec.nodeName`, when the manifest pins the pod.
    pub node_name: Option<String>,
    /// The Deployment it belongs to.
    pub owner: Option<String>,
    /// What the runtime polls to set the pod's `Ready`: the first container's `readinessProbe` (`httpGet` or
    /// `tcpSocket`), else a TCP connect to every declared TCP `containerPort`.
    pub readiness: Probe,
    /// The object as written (for Pods) or the template wrapped as a Pod (for Deployments), to pass to the
    /// controller with a status added.
    pub object: Value,
}

/// An environment variable: a value, or a field of the pod (`valueFrom.fieldRef`).
#[derive(Clone, Debug, PartialEq)]
pub enum EnvVar {
    Value(String, String),
    Field(String, String),
}

/// An HTTP readiness probe: `GET <path>` on the pod's address and `port`; 2xx/3xx is ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbe {
    pub path: String,
    pub port: u16,
}

/// How the local runtime decides a pod is ready (besides its node's ztunnel holding it, when it is captured).
///
/// Stricter than Kubernetes for pods without a probe: Kubernetes calls them ready once started, which lets a
/// Service send to a process that has not bound its port yet; here every declared TCP `containerPort` must
/// accept first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Http(HttpProbe),
    /// Each port accepts a TCP connection.
    Tcp(Vec<u16>),
    /// No probe and no declared TCP port: ready once started.
    Started,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
    /// `spec.clusterIP` as written: `None` unset, `Some("None")` headless.
    pub cluster_ip: Option<String>,
    pub object: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServicePort {
    pub port: u16,
    pub protocol: String,
    pub target: TargetPort,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

impl ServiceSpec {
    pub fn headless(&self) -> bool {
        self.cluster_ip.as_deref() == Some("None")
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// True when `pod` is one of its endpoints.
    pub fn selects(&self, pod: &PodSpec) -> bool {
        pod.namespace == self.namespace
            && !self.selector.is_empty()
            && self
                .selector
                .iter()
                .all(|(k, v)| pod.labels.get(k) == Some(v))
    }
}

impl PodSpec {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The container port a service target port names, or the number itself.
    pub fn resolve(&self, target: &TargetPort) -> Option<u16> {
        match target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => self.ports.iter().find(|(n, _)| n == name).map(|p| p.1),
        }
    }
}

/// Everything the manifests ask for.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// Namespace → labels. Namespaces used by objects but not declared exist with no labels.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub pods: Vec<PodSpec>,
    pub services: Vec<ServiceSpec>,
    /// Everything else, for the controller (Namespaces included).
    pub passthrough: Vec<Value>,
    /// Documents that could not be used: (file, index, reason).
    pub errors: Vec<String>,
}

/// The manifest files of `dir`, sorted, not descending into subfolders.
pub fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if p.is_file() && matches!(ext, "yaml" | "yml" | "json") {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// Reads every manifest in `dir`. A malformed document is reported in `errors` and skipped; the rest applies.
pub fn load(dir: &Path) -> std::io::Result<Desired> {
    let mut d = Desired::default();
    for file in files(dir)? {
        let text = std::fs::read_to_string(&file)?;
        let name = file.display().to_string();
        for (i, doc) in documents(&text).into_iter().enumerate() {
            match serde_yaml::from_str::<Value>(doc) {
                Ok(Value::Null) => {}
                Ok(v) => {
                    if let Err(e) = d.add(v) {
                        d.errors.push(format!("{name} document {i}: {e}"));
                    }
                }
                Err(e) => d.errors.push(format!("{name} document {i}: {e}")),
            }
        }
    }
    for ns in d
        .pods
        .iter()
        .map(|p| &p.namespace)
        .chain(d.services.iter().map(|s| &s.namespace))
    {
        if !d.namespaces.contains_key(ns) {
            d.namespaces.insert(ns.clone(), BTreeMap::new());
        }
    }
    d.pods.sort_by_key(|p| p.key());
    d.services.sort_by_key(|s| s.key());
    Ok(d)
}

/// The gateway classes of waypoints (Istio's and Ambit's own).
pub const WAYPOINT_CLASSES: [&str; 2] = ["istio-waypoint", "ambit-waypoint"];

/// Splits a multi-document YAML file at its `---` lines, so that one broken document does not hide the others.
fn documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_end();
        if t == "---" || t.starts_with("--- ") {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs.retain(|d| !d.trim().is_empty());
    docs
}

impl Desired {
    /// Adds what `other` asks for (the objects the controller deployed) as if the user had written it. An object
    /// the user already wrote under the same name wins and the duplicate is reported; a namespace the user did
    /// not label gets `other`'s labels.
    pub fn merge(&mut self, other: Desired) {
        for (ns, labels) in other.namespaces {
            let entry = self.namespaces.entry(ns).or_default();
            if entry.is_empty() {
                *entry = labels;
            }
        }
        for pod in other.pods {
            if self.pods.iter().any(|p| p.key() == pod.key()) {
                self.errors.push(format!(
                    "pod {} is defined twice; keeping the first",
                    pod.key()
                ));
            } else {
                self.pods.push(pod);
            }
        }
        for svc in other.services {
            if self.services.iter().any(|s| s.key() == svc.key()) {
                self.errors.push(format!(
                    "service {} is defined twice; keeping the first",
                    svc.key()
                ));
            } else {
                self.services.push(svc);
            }
        }
        self.passthrough.extend(other.passthrough);
        self.errors.extend(other.errors);
        self.pods.sort_by_key(|p| p.key());
        self.services.sort_by_key(|s| s.key());
    }

    /// `<ns>/<name>` of every waypoint Gateway.
    pub fn waypoint_gateways(&self) -> Vec<String> {
        self.passthrough
            .iter()
            .filter(|v| str_at(v, &["kind"]) == Some("Gateway"))
            .filter(|v| {
                str_at(v, &["spec", "gatewayClassName"])
                    .is_some_and(|c| WAYPOINT_CLASSES.contains(&c))
            })
            .map(|v| {
                format!(
                    "{}/{}",
                    str_at(v, &["metadata", "namespace"]).unwrap_or("default"),
                    str_at(v, &["metadata", "name"]).unwrap_or("")
                )
            })
            .collect()
    }

    fn add(&mut self, v: Value) -> Result<(), String> {
        let kind = str_at(&v, &["kind"]).ok_or("no kind")?.to_owned();
        let api = str_at(&v, &["apiVersion"]).unwrap_or("").to_owned();
        if kind == "List" {
            for item in seq_at(&v, &["items"]) {
                self.add(item.clone())?;
            }
            return Ok(());
        }
        let name = str_at(&v, &["metadata", "name"])
            .ok_or("no metadata.name")?
            .to_owned();
        let namespace = str_at(&v, &["metadata", "namespace"])
            .unwrap_or("default")
            .to_owned();
        match (api.as_str(), kind.as_str()) {
            ("v1", "Namespace") => {
                self.namespaces
                    .insert(name, map_at(&v, &["metadata", "labels"]));
                self.passthrough.push(v);
            }
            ("v1", "Pod") => {
                let mut pod = pod_from(&v, &namespace, &name, None)?;
                pod.node_name = str_at(&v, &["spec", "nodeName"]).map(str::to_owned);
                self.pods.push(pod);
            }
            ("apps/v1", "Deployment") => self.deployment(&v, &namespace, &name)?,
            ("v1", "Service") => self.services.push(service_from(&v, &namespace, &name)?),
            _ => self.passthrough.push(v),
        }
        Ok(())
    }

    /// A Deployment's replicas: pods named `<deployment>-<template hash>-<index>`, so a changed template replaces
    /// them and an unchanged one keeps them.
    fn deployment(&mut self, v: &Value, namespace: &str, name: &str) -> Result<(), String> {
        let replicas = at(v, &["spec", "replicas"])
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let template = at(v, &["spec", "template"])
            .ok_or("no spec.template")?
            .clone();
        let text = serde_yaml::to_string(&template).map_err(|e| e.to_string())?;
        let hash = format!("{:08x}", fnv1a(text.as_bytes()) as u32);
        for i in 0..replicas {
            let pod_name = format!("{name}-{hash}-{i}");
            let mut pod_obj = Mapping::new();
            pod_obj.insert("apiVersion".into(), "v1".into());
            pod_obj.insert("kind".into(), "Pod".into());
            let mut meta = match at(&template, &["metadata"]) {
                Some(Value::Mapping(m)) => m.clone(),
                _ => Mapping::new(),
            };
            meta.insert("name".into(), pod_name.clone().into());
            meta.insert("namespace".into(), namespace.into());
            // As the ReplicaSet controller does: the template-hash label and the owner, from which the controller
            // derives the workload name (the Deployment's) for telemetry.
            let mut labels = match meta.get("labels") {
                Some(Value::Mapping(m)) => m.clone(),
                _ => Mapping::new(),
            };
            labels.insert("pod-template-hash".into(), hash.clone().into());
            meta.insert("labels".into(), Value::Mapping(labels));
            let owner: Value = serde_yaml::from_str(&format!(
                "[{{apiVersion: apps/v1, kind: ReplicaSet, name: {name}-{hash}, uid: \"\", controller: true}}]"
            ))
            .map_err(|e| e.to_string())?;
            meta.insert("ownerReferences".into(), owner);
            pod_obj.insert("metadata".into(), Value::Mapping(meta));
            pod_obj.insert(
                "spec".into(),
                at(&template, &["spec"]).cloned().unwrap_or(Value::Null),
            );
            let obj = Value::Mapping(pod_obj);
            let pod = pod_from(&obj, namespace, &pod_name, Some(name.to_owned()))?;
            self.pods.push(pod);
        }
        Ok(())
    }
}

fn pod_from(
    v: &Value,
    namespace: &str,
    name: &str,
    owner: Option<String>,
) -> Result<PodSpec, String> {
    let containers = seq_at(v, &["spec", "containers"]);
    let c = containers.first().ok_or("no spec.containers")?;
    let mut argv: Vec<String> = strings(at(c, &["command"]));
    argv.extend(strings(at(c, &["args"])));
    if argv.is_empty() {
        return Err(format!(
            "container {:?} has no command: the local runtime runs commands, not images",
            str_at(c, &["name"]).unwrap_or("")
        ));
    }
    let mut env = Vec::new();
    for e in seq_at(c, &["env"]) {
        let Some(n) = str_at(e, &["name"]) else {
            continue;
        };
        if let Some(f) = str_at(e, &["valueFrom", "fieldRef", "fieldPath"]) {
            env.push(EnvVar::Field(n.to_owned(), f.to_owned()));
        } else {
            let val = at(e, &["value"]).map(scalar).unwrap_or_default();
            env.push(EnvVar::Value(n.to_owned(), val));
        }
    }
    let mut ports = Vec::new();
    let mut tcp_ports = Vec::new();
    for c in &containers {
        for p in seq_at(c, &["ports"]) {
            let Some(port) = at(p, &["containerPort"]).and_then(Value::as_u64) else {
                continue;
            };
            let port = u16::try_from(port).map_err(|_| "bad port")?;
            if let Some(n) = str_at(p, &["name"]) {
                ports.push((n.to_owned(), port));
            }
            if str_at(p, &["protocol"]).is_none_or(|p| p.eq_ignore_ascii_case("TCP"))
                && !tcp_ports.contains(&port)
            {
                tcp_ports.push(port);
            }
        }
    }
    // A probe port is a number or the name of a container port.
    let probe_port = |probe: &Value| match at(probe, &["port"])? {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s
            .parse()
            .ok()
            .or_else(|| ports.iter().find(|(n, _)| n == s).map(|p| p.1)),
        _ => None,
    };
    let readiness = if let Some(probe) = at(c, &["readinessProbe", "httpGet"]) {
        let port =
            probe_port(probe).ok_or("readinessProbe.httpGet.port names no container port")?;
        Probe::Http(HttpProbe {
            path: str_at(probe, &["path"]).unwrap_or("/").to_owned(),
            port,
        })
    } else if let Some(probe) = at(c, &["readinessProbe", "tcpSocket"]) {
        let port =
            probe_port(probe).ok_or("readinessProbe.tcpSocket.port names no container port")?;
        Probe::Tcp(vec![port])
    } else if tcp_ports.is_empty() {
        Probe::Started
    } else {
        Probe::Tcp(tcp_ports)
    };
    Ok(PodSpec {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        labels: map_at(v, &["metadata", "labels"]),
        annotations: map_at(v, &["metadata", "annotations"]),
        service_account: str_at(v, &["spec", "serviceAccountName"])
            .unwrap_or("default")
            .to_owned(),
        argv,
        env,
        ports,
        node_name: None,
        owner,
        readiness,
        object: v.clone(),
    })
}

fn service_from(v: &Value, namespace: &str, name: &str) -> Result<ServiceSpec, String> {
    let mut ports = Vec::new();
    for p in seq_at(v, &["spec", "ports"]) {
        let port = at(p, &["port"])
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or("service port without a valid port")?;
        let target = match at(p, &["targetPort"]) {
            None => TargetPort::Number(port),
            Some(Value::Number(n)) => TargetPort::Number(
                n.as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or("bad targetPort")?,
            ),
            Some(Value::String(s)) => match s.parse() {
                Ok(n) => TargetPort::Number(n),
                Err(_) => TargetPort::Name(s.clone()),
            },
            Some(_) => return Err("bad targetPort".into()),
        };
        ports.push(ServicePort {
            port,
            protocol: str_at(p, &["protocol"]).unwrap_or("TCP").to_owned(),
            target,
        });
    }
    Ok(ServiceSpec {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        selector: map_at(v, &["spec", "selector"]),
        ports,
        cluster_ip: str_at(v, &["spec", "clusterIP"]).map(str::to_owned),
        object: v.clone(),
    })
}

pub fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

pub fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

fn seq_at<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    at(v, path)
        .and_then(Value::as_sequence)
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

fn map_at(v: &Value, path: &[&str]) -> BTreeMap<String, String> {
    at(v, path)
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), scalar(v))))
                .collect()
        })
        .unwrap_or_default()
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_sequence)
        .map(|s| s.iter().map(scalar).collect())
        .unwrap_or_default()
}

/// FNV-1a: a hash that stays the same across builds (pod names must not change when the binary does).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Desired {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), yaml).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("sub/ignored.yaml"),
            "kind: Namespace\napiVersion: v1\nmetadata: {name: nope}\n",
        )
        .unwrap();
        load(dir.path()).unwrap()
    }

    const QUICK: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: server, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: server}}
  template:
    metadata: {labels: {app: server}}
    spec:
      serviceAccountName: server
      containers:
      - name: echo
        command: [ambit, echo]
        args: ["--http-port", "8080"]
        ports: [{name: http, containerPort: 8080}]
        env:
        - {name: A, value: "1"}
        - name: POD_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: demo}
---
this: [is not, valid
"#;

    #[test]
    fn deployments_expand_and_services_select() {
        let d = parse(QUICK);
        assert_eq!(d.pods.len(), 2);
        assert!(d.pods[0].name.starts_with("server-"));
        assert!(d.pods[0].name.ends_with("-0"));
        assert_eq!(d.pods[0].argv, vec!["ambit", "echo", "--http-port", "8080"]);
        assert_eq!(d.pods[0].service_account, "server");
        assert_eq!(d.pods[0].owner.as_deref(), Some("server"));
        let hash = d.pods[0].labels["pod-template-hash"].clone();
        assert_eq!(
            str_at(&d.pods[0].object, &["metadata", "ownerReferences"]).or_else(|| at(
                &d.pods[0].object,
                &["metadata", "ownerReferences"]
            )
            .and_then(|o| o.get(0))
            .and_then(|o| o.get("name"))
            .and_then(Value::as_str)),
            Some(format!("server-{hash}").as_str())
        );
        assert_eq!(
            d.pods[0].env[1],
            EnvVar::Field("POD_IP".into(), "status.podIP".into())
        );
        let svc = &d.services[0];
        assert!(svc.selects(&d.pods[1]));
        assert_eq!(d.pods[0].resolve(&svc.ports[0].target), Some(8080));
        assert_eq!(
            d.namespaces["demo"]
                .get("istio.io/dataplane-mode")
                .map(String::as_str),
            Some("ambient")
        );
        assert!(
            !d.namespaces.contains_key("nope"),
            "subfolders are not read"
        );
        // Namespace + AuthorizationPolicy pass through; the broken document is reported, not fatal.
        assert_eq!(d.passthrough.len(), 2);
        assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    }

    #[test]
    fn a_changed_template_renames_the_pods_and_an_unchanged_one_does_not() {
        let a = parse(QUICK);
        let b = parse(QUICK);
        assert_eq!(a.pods[0].name, b.pods[0].name);
        let c = parse(&QUICK.replace("\"8080\"]", "\"8081\"]"));
        assert_ne!(a.pods[0].name, c.pods[0].name);
    }

    #[test]
    fn deployed_objects_merge_and_probes_resolve_named_ports() {
        let mut user = parse(QUICK);
        let deployed = parse(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo}
spec: {gatewayClassName: istio-waypoint}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: waypoint, namespace: demo}
spec:
  template:
    metadata: {labels: {istio.io/dataplane-mode: none}}
    spec:
      containers:
      - command: [waypoint]
        ports: [{name: status-port, containerPort: 15021}]
        readinessProbe: {httpGet: {path: /healthz/ready, port: status-port}}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec: {selector: {app: other}}
"#,
        );
        assert_eq!(
            deployed.pods[0].readiness,
            Probe::Http(HttpProbe {
                path: "/healthz/ready".into(),
                port: 15021
            })
        );
        user.merge(deployed);
        assert_eq!(user.pods.len(), 3);
        assert_eq!(user.waypoint_gateways(), vec!["demo/waypoint"]);
        // The user's Service and namespace labels win.
        assert_eq!(user.services.len(), 1);
        assert_eq!(user.services[0].selector["app"], "server");
        assert!(
            user.errors
                .iter()
                .any(|e| e.contains("service demo/server is defined twice"))
        );
        assert_eq!(
            user.namespaces["demo"]["istio.io/dataplane-mode"],
            "ambient"
        );
    }

    #[test]
    fn a_pod_without_a_command_is_an_error_not_a_crash() {
        let d = parse(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: c, image: nginx}]}\n",
        );
        assert!(d.pods.is_empty());
        assert!(d.errors[0].contains("no command"), "{:?}", d.errors);
    }

    #[test]
    fn readiness_is_the_probe_else_every_declared_tcp_port() {
        let pod = |c: &str| {
            let d = parse(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: x}}\nspec: {{containers: [{{command: [s], {c}}}]}}\n"
            ));
            assert!(d.errors.is_empty(), "{:?}", d.errors);
            d.pods[0].readiness.clone()
        };
        assert_eq!(
            pod(
                "ports: [{containerPort: 8080}, {containerPort: 53, protocol: UDP}, {name: m, containerPort: 9090}]"
            ),
            Probe::Tcp(vec![8080, 9090])
        );
        assert_eq!(
            pod(
                "ports: [{name: web, containerPort: 80}], readinessProbe: {tcpSocket: {port: web}}"
            ),
            Probe::Tcp(vec![80])
        );
        assert_eq!(pod("args: [x]"), Probe::Started);
        let d = parse(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{command: [s], readinessProbe: {httpGet: {port: nope}}}]}\n",
        );
        assert!(d.pods.is_empty());
        assert!(
            d.errors[0].contains("names no container port"),
            "{:?}",
            d.errors
        );
    }
}
