//! The cluster checks, through kube-rs with the kubeconfig kubectl would use: the API server answers, its
//! Kubernetes version, the Gateway API CRDs (present, bundle version, served versions), the Istio CRDs, the
//! permissions the install needs (SelfSubjectAccessReview), an Istio control or data plane already there, and
//! sidecar injection.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, ObjectList, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Client, Config};
use serde::de::DeserializeOwned;

use super::{Check, Level, PrecheckArgs, PrecheckError};

mod kubeconfig;

use kubeconfig::{default_kubeconfig, kubeconfig_problem, no_kubeconfig_file};

/// The oldest Kubernetes minor Istio ambient supports (istioctl `k8sversion.MinK8SVersion`).
pub const MIN_KUBERNETES_MINOR: u32 = 28;
/// The oldest Gateway API bundle Ambit works with: GRPCRoute `v1`, which the controller reads, is in v1.1.0.
pub const MIN_GATEWAY_API: Semver = Semver {
    major: 1,
    minor: 1,
    patch: 0,
    release: true,
};
/// The Gateway API release the fixes name.
pub const RECOMMENDED_GATEWAY_API: &str = "v1.4.0";
pub const BUNDLE_VERSION: &str = "gateway.networking.k8s.io/bundle-version";
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The Gateway API kinds Ambit's controller reads, with the version it reads them at.
pub const GATEWAY_KINDS: &[(&str, &str)] = &[
    ("gatewayclasses", "v1"),
    ("gateways", "v1"),
    ("httproutes", "v1"),
    ("grpcroutes", "v1"),
    ("referencegrants", "v1beta1"),
];

fn install_gateway_api() -> String {
    format!(
        "kubectl apply --server-side -f https://github.com/kubernetes-sigs/gateway-api/releases/download/{RECOMMENDED_GATEWAY_API}/standard-install.yaml (experimental-install.yaml for TCPRoute)"
    )
}

/// `v1.2.3`, `1.2`, `v1.1.0-rc1`, ordered with a pre-release before its release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Semver {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    pub release: bool,
}

impl Semver {
    pub fn parse(s: &str) -> Option<Semver> {
        let s = s.trim();
        let s = s.strip_prefix('v').unwrap_or(s);
        let (core, pre) = match s.split_once(['-', '+']) {
            Some((c, rest)) => (c, !rest.is_empty() && s.as_bytes()[c.len()] == b'-'),
            None => (s, false),
        };
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Semver {
            major,
            minor,
            patch,
            release: !pre,
        })
    }
}

impl std::fmt::Display for Semver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The minor of `/version`'s `minor` (`"33"`, `"27+"` on GKE/EKS), else of `gitVersion`.
pub fn kubernetes_minor(minor: &str, git_version: &str) -> Option<u32> {
    let digits: String = minor.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .ok()
        .or_else(|| Semver::parse(git_version).map(|v| v.minor))
}

/// The Kubernetes version check from `/version`.
pub fn version_check(minor: &str, git_version: &str) -> Check {
    let (code, name, fix) = (
        "AMB1002",
        "kubernetes-version",
        format!("upgrade the cluster to Kubernetes 1.{MIN_KUBERNETES_MINOR} or newer"),
    );
    match kubernetes_minor(minor, git_version) {
        Some(m) if m >= MIN_KUBERNETES_MINOR => Check::pass(
            code,
            name,
            "Cluster",
            format!("Kubernetes {git_version} (1.{MIN_KUBERNETES_MINOR} or newer is supported)"),
            &fix,
        ),
        Some(_) => Check::fail(
            code,
            name,
            Level::Warning,
            "Cluster",
            format!(
                "Kubernetes {git_version} is older than 1.{MIN_KUBERNETES_MINOR}, the oldest Istio ambient (and Ambit) supports: it may work, but is not tested"
            ),
            fix,
        ),
        None => Check::unknown(
            code,
            name,
            "Cluster",
            format!(
                "cannot read the Kubernetes version from /version (minor {minor:?}, gitVersion {git_version:?})"
            ),
            &fix,
        ),
    }
}

/// What a Gateway API CRD says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayCrd {
    /// The plural (`gateways`).
    pub plural: String,
    pub bundle_version: Option<String>,
    pub served: Vec<String>,
}

/// The two Gateway API checks: are the kinds Ambit reads installed, and are they recent enough.
pub fn gateway_api_checks(crds: &[GatewayCrd]) -> Vec<Check> {
    let fix = install_gateway_api();
    if crds.is_empty() {
        return vec![Check::fail(
            "AMB1003",
            "gateway-api-crds",
            Level::Warning,
            "Cluster",
            "the Gateway API CRDs are not installed: waypoints (Gateways of class istio-waypoint) and L7 routes need them; L4 (ztunnel) works without".into(),
            format!("install Gateway API {RECOMMENDED_GATEWAY_API}: {fix}"),
        )];
    }
    let present: BTreeSet<&str> = crds.iter().map(|c| c.plural.as_str()).collect();
    let missing: Vec<&str> = GATEWAY_KINDS
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !present.contains(k))
        .collect();
    let mut checks = vec![if missing.is_empty() {
        Check::pass(
            "AMB1003",
            "gateway-api-crds",
            "Cluster",
            "the Gateway API CRDs Ambit reads are installed".into(),
            &fix,
        )
    } else {
        Check::fail(
            "AMB1003",
            "gateway-api-crds",
            Level::Warning,
            "Cluster",
            format!(
                "Gateway API CRDs missing: {} (Ambit ignores those kinds until they are installed)",
                missing.join(", ")
            ),
            format!("install the whole Gateway API {RECOMMENDED_GATEWAY_API} bundle: {fix}"),
        )
    }];
    let mut old = Vec::new();
    for crd in crds {
        let object = format!("CustomResourceDefinition {}.{GATEWAY_GROUP}", crd.plural);
        let bundle = crd.bundle_version.as_deref().map(|b| (b, Semver::parse(b)));
        let wanted = GATEWAY_KINDS.iter().find(|(k, _)| *k == crd.plural);
        let mut why = Vec::new();
        if let Some((text, v)) = bundle {
            match v {
                Some(v) if v < MIN_GATEWAY_API => why.push(format!(
                    "bundle version {text} is older than {MIN_GATEWAY_API}, the oldest Ambit supports"
                )),
                None => why.push(format!("bundle version {text:?} is not a version")),
                Some(_) => {}
            }
        }
        if let Some((_, version)) = wanted
            && !crd.served.iter().any(|s| s == version)
        {
            let has = if crd.served.is_empty() {
                "none".to_owned()
            } else {
                crd.served.join(",")
            };
            why.push(format!(
                "it serves {has}, Ambit reads {}/{version}",
                crd.plural
            ));
        }
        if !why.is_empty() {
            old.push(Check::fail(
                "AMB1004",
                "gateway-api-version",
                Level::Error,
                &object,
                format!("unsupported Gateway API version: {}", why.join("; ")),
                format!("upgrade the Gateway API CRDs to {RECOMMENDED_GATEWAY_API}: {fix}"),
            ));
        }
    }
    if old.is_empty() {
        let mut bundles: Vec<&str> = crds
            .iter()
            .filter_map(|c| c.bundle_version.as_deref())
            .collect();
        bundles.sort_unstable();
        bundles.dedup();
        let which = if bundles.is_empty() {
            "no bundle-version annotation; served versions are the ones Ambit reads".to_owned()
        } else {
            format!("bundle version {}", bundles.join(", "))
        };
        checks.push(Check::pass(
            "AMB1004",
            "gateway-api-version",
            "Cluster",
            format!("Gateway API {which} ({MIN_GATEWAY_API} or newer is supported)"),
            &fix,
        ));
    }
    checks.extend(old);
    checks
}

/// The Istio CRD groups Ambit reads policies and traffic rules from.
pub fn istio_crd_check(groups_present: &BTreeSet<String>) -> Check {
    let wanted = ["security.istio.io", "networking.istio.io"];
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|g| !groups_present.contains(*g))
        .collect();
    let fix = "install Istio's CRDs (Istio's base chart: `helm install istio-base istio/base -n istio-system --create-namespace`) before applying AuthorizationPolicies, PeerAuthentications, VirtualServices or ServiceEntries";
    if missing.is_empty() {
        Check::pass(
            "AMB1005",
            "istio-crds",
            "Cluster",
            "the Istio CRDs (security.istio.io, networking.istio.io) are installed; Ambit reads them as they are".into(),
            fix,
        )
    } else {
        Check::fail(
            "AMB1005",
            "istio-crds",
            Level::Info,
            "Cluster",
            format!(
                "no {} CRDs: Ambit works without them, but reads its policies and traffic rules from them",
                missing.join(" or ")
            ),
            fix.into(),
        )
    }
}

/// A Deployment that is an Istio control plane.
pub fn is_istiod(name: &str, app_label: Option<&str>) -> bool {
    name == "istiod" || name.starts_with("istiod-") || app_label == Some("istiod")
}

/// What an Istio data-plane DaemonSet is (`ztunnel`, `istio-cni`), if it is one.
pub fn istio_daemonset(
    name: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Option<&'static str> {
    let label = |k: &str| labels.get(k).map(String::as_str);
    if name == "ztunnel" || label("app") == Some("ztunnel") {
        Some("ztunnel")
    } else if name == "istio-cni-node" || label("k8s-app") == Some("istio-cni-node") {
        Some("istio-cni")
    } else {
        None
    }
}

/// A pod with an Istio sidecar: an `istio-proxy` container (or native-sidecar init container) beside the
/// application, or the injector's status annotation. A ztunnel or gateway pod (`istio-proxy` alone) is not one.
pub fn has_sidecar(pod: &Pod) -> bool {
    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("sidecar.istio.io/status"))
    {
        return true;
    }
    let Some(spec) = &pod.spec else {
        return false;
    };
    let proxy = |c: &k8s_openapi::api::core::v1::Container| c.name == "istio-proxy";
    let in_init = spec.init_containers.iter().flatten().any(proxy);
    let in_main = spec.containers.iter().any(proxy);
    (in_init || in_main) && spec.containers.iter().any(|c| !proxy(c))
}

fn migrate_fix() -> String {
    "Ambit would run beside it, and both would program the ambient pods. To migrate, keep your AuthorizationPolicies, PeerAuthentications and Gateway API objects (Ambit reads them as they are), uninstall Istio's ambient components (`istioctl uninstall --purge`, or `helm uninstall ztunnel istio-cni istiod -n istio-system`), then install Ambit; pass --skip-controlplane if running beside it is what you want".into()
}

/// A client from the kubeconfig kubectl would use, and the API server's URL.
async fn client(args: &PrecheckArgs) -> Result<(Client, String), PrecheckError> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let bad = |what: String| PrecheckError::Kubeconfig(what);
    let mut config = match (&args.kubeconfig, &args.context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| match e {
                KubeconfigError::ReadConfig(io, _) => bad(format!(
                    "cannot read the kubeconfig {} ({io}): pass the kubeconfig of the cluster to check with --kubeconfig",
                    path.display()
                )),
                e => bad(format!(
                    "kubeconfig {}: {}",
                    path.display(),
                    kubeconfig_problem(&e)
                )),
            })?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| {
                    bad(format!(
                        "kubeconfig {}: {}",
                        path.display(),
                        kubeconfig_problem(&e)
                    ))
                })?
        }
        (None, context) => match Config::from_kubeconfig(&options).await {
            Ok(config) => config,
            // No kubeconfig file at all: kubectl's next place, the pod's service account.
            Err(e) if context.is_none() && no_kubeconfig_file(&e) => {
                Config::incluster().map_err(|in_cluster| {
                    bad(format!(
                        "no cluster to check (no kubeconfig at {}: {}; and not in a cluster: {in_cluster}): pass --kubeconfig, or set KUBECONFIG; to check this host for the local mesh instead, run `ambit precheck --local`",
                        default_kubeconfig(),
                        e
                    ))
                })?
            }
            Err(e) => {
                return Err(bad(format!(
                    "kubeconfig {}: {}",
                    default_kubeconfig(),
                    kubeconfig_problem(&e)
                )));
            }
        },
    };
    let timeout = Duration::from_secs(args.timeout.max(1));
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .map_err(|e| bad(format!("cannot build a client for {url}: {e}")))?;
    Ok((client, url))
}

/// `e` with its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Every page of a list.
async fn list_all<K>(api: &Api<K>, lp: ListParams) -> Result<Vec<K>, kube::Error>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut items = Vec::new();
    let mut lp = lp.limit(500);
    loop {
        let page: ObjectList<K> = api.list(&lp).await?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => return Ok(items),
        }
    }
}

/// Every cluster check.
pub async fn checks(args: &PrecheckArgs) -> Result<Vec<Check>, PrecheckError> {
    let (client, url) = client(args).await?;
    let info = match client.apiserver_version().await {
        Ok(info) => info,
        Err(e) => {
            let why = match api_code(&e) {
                Some(401) | Some(403) => "the API server refused the kubeconfig's credentials: log in again (refresh the token) or use another context".to_owned(),
                _ => "check that the cluster is up and the kubeconfig's server address is right (`kubectl cluster-info`); to check this host for the local mesh instead, run `ambit precheck --local`".to_owned(),
            };
            return Ok(vec![Check::fail(
                "AMB1001",
                "api-server",
                Level::Error,
                "Cluster",
                format!(
                    "the Kubernetes API server at {url} does not answer: {}",
                    chain(&e)
                ),
                why,
            )]);
        }
    };
    let mut out = vec![Check::pass(
        "AMB1001",
        "api-server",
        "Cluster",
        format!("the Kubernetes API server at {url} answers"),
        "check the kubeconfig's server address and that the cluster is up",
    )];
    out.push(version_check(&info.minor, &info.git_version));

    // CRDs: Gateway API and Istio.
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    match list_all(&crd_api, ListParams::default()).await {
        Ok(crds) => {
            let gateway: Vec<GatewayCrd> = crds
                .iter()
                .filter(|c| c.spec.group == GATEWAY_GROUP)
                .map(|c| GatewayCrd {
                    plural: c.spec.names.plural.clone(),
                    bundle_version: c
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(BUNDLE_VERSION).cloned()),
                    served: c
                        .spec
                        .versions
                        .iter()
                        .filter(|v| v.served)
                        .map(|v| v.name.clone())
                        .collect(),
                })
                .collect();
            out.extend(gateway_api_checks(&gateway));
            let groups: BTreeSet<String> = crds.iter().map(|c| c.spec.group.clone()).collect();
            out.push(istio_crd_check(&groups));
        }
        Err(e) => out.push(Check::unknown(
            "AMB1003",
            "gateway-api-crds",
            "Cluster",
            format!("cannot list CustomResourceDefinitions: {}", chain(&e)),
            "precheck with a kubeconfig that may list customresourcedefinitions (apiextensions.k8s.io/v1)",
        )),
    }

    out.push(permissions(&client, &args.istio_namespace).await);

    if !args.skip_controlplane {
        out.extend(control_plane(&client).await);
    }
    out.extend(sidecars(&client).await);
    Ok(out)
}

/// The resources the install creates, as `(group, resource, namespaced)`.
const INSTALL_RESOURCES: &[(&str, &str, bool)] = &[
    ("", "namespaces", false),
    ("apiextensions.k8s.io", "customresourcedefinitions", false),
    ("rbac.authorization.k8s.io", "clusterroles", false),
    ("rbac.authorization.k8s.io", "clusterrolebindings", false),
    ("rbac.authorization.k8s.io", "roles", true),
    ("", "serviceaccounts", true),
    ("", "services", true),
    ("", "configmaps", true),
    ("apps", "deployments", true),
    ("apps", "daemonsets", true),
];

async fn permissions(client: &Client, namespace: &str) -> Check {
    let (code, name) = ("AMB1006", "install-permissions");
    let fix = format!(
        "install with a cluster-admin kubeconfig, or grant create on the resources named (cluster-wide, and in namespace {namespace})"
    );
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut denied = Vec::new();
    for (group, resource, namespaced) in INSTALL_RESOURCES {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: namespaced.then(|| namespace.to_owned()),
                    verb: Some("create".into()),
                    group: Some((*group).to_owned()),
                    resource: Some((*resource).to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &review).await {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(r) => {
                let reason = r
                    .status
                    .and_then(|s| s.reason)
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(|| "permission denied".into());
                let what = if group.is_empty() {
                    (*resource).to_owned()
                } else {
                    format!("{resource}.{group}")
                };
                denied.push(format!("{what} ({reason})"));
            }
            Err(e) => {
                let why = match api_code(&e) {
                    Some(404) | Some(405) => {
                        "the API server does not serve SelfSubjectAccessReview (authorization.k8s.io/v1)".to_owned()
                    }
                    _ => chain(&e),
                };
                return Check::unknown(
                    code,
                    name,
                    "Cluster",
                    format!("could not check the install permissions: {why}"),
                    &fix,
                );
            }
        }
    }
    if denied.is_empty() {
        Check::pass(
            code,
            name,
            "Cluster",
            format!("may create every resource the install needs (namespace {namespace})"),
            &fix,
        )
    } else {
        Check::fail(
            code,
            name,
            Level::Error,
            "Cluster",
            format!("may not create: {}", denied.join(", ")),
            fix,
        )
    }
}

async fn control_plane(client: &Client) -> Vec<Check> {
    let mut out = Vec::new();
    let deployments: Api<Deployment> = Api::all(client.clone());
    match list_all(&deployments, ListParams::default()).await {
        Ok(list) => {
            for d in list {
                let name = d.metadata.name.clone().unwrap_or_default();
                let app = d
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("app"))
                    .map(String::as_str);
                if is_istiod(&name, app) {
                    let ns = d.metadata.namespace.clone().unwrap_or_default();
                    out.push(Check::fail(
                        "AMB1007",
                        "istio-control-plane",
                        Level::Warning,
                        &format!("Deployment {ns}/{name}"),
                        format!("an Istio control plane (istiod) is installed in namespace {ns}"),
                        migrate_fix(),
                    ));
                }
            }
            if out.is_empty() {
                out.push(Check::pass(
                    "AMB1007",
                    "istio-control-plane",
                    "Cluster",
                    "no Istio control plane (istiod) installed".into(),
                    &migrate_fix(),
                ));
            }
        }
        Err(e) => out.push(Check::unknown(
            "AMB1007",
            "istio-control-plane",
            "Cluster",
            format!("cannot list Deployments: {}", chain(&e)),
            "precheck with a kubeconfig that may list deployments in every namespace",
        )),
    }
    let daemonsets: Api<DaemonSet> = Api::all(client.clone());
    let before = out.len();
    match list_all(&daemonsets, ListParams::default()).await {
        Ok(list) => {
            for d in list {
                let name = d.metadata.name.clone().unwrap_or_default();
                let labels = d.metadata.labels.clone().unwrap_or_default();
                if let Some(what) = istio_daemonset(&name, &labels) {
                    let ns = d.metadata.namespace.clone().unwrap_or_default();
                    let image = d
                        .spec
                        .template
                        .spec
                        .as_ref()
                        .and_then(|s| s.containers.first())
                        .and_then(|c| c.image.clone())
                        .unwrap_or_else(|| "no image".into());
                    out.push(Check::fail(
                        "AMB1008",
                        "istio-data-plane",
                        Level::Warning,
                        &format!("DaemonSet {ns}/{name}"),
                        format!("an ambient data plane ({what}, image {image}) is installed in namespace {ns}"),
                        migrate_fix(),
                    ));
                }
            }
            if out.len() == before {
                out.push(Check::pass(
                    "AMB1008",
                    "istio-data-plane",
                    "Cluster",
                    "no ztunnel or istio-cni DaemonSet installed".into(),
                    &migrate_fix(),
                ));
            }
        }
        Err(e) => out.push(Check::unknown(
            "AMB1008",
            "istio-data-plane",
            "Cluster",
            format!("cannot list DaemonSets: {}", chain(&e)),
            "precheck with a kubeconfig that may list daemonsets in every namespace",
        )),
    }
    out
}

async fn sidecars(client: &Client) -> Vec<Check> {
    let mut out = Vec::new();
    let ambient_fix = |what: &str| {
        format!(
            "to move {what} to ambient: `kubectl label namespace <ns> istio-injection- istio.io/rev- istio.io/dataplane-mode=ambient`, then restart its pods (`kubectl rollout restart deploy -n <ns>`)"
        )
    };
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match list_all(&namespaces, ListParams::default()).await {
        Ok(list) => {
            let injected: Vec<String> = list
                .iter()
                .filter(|n| {
                    n.metadata.labels.as_ref().is_some_and(|l| {
                        l.get("istio-injection").map(String::as_str) == Some("enabled")
                            || l.contains_key("istio.io/rev")
                    })
                })
                .filter_map(|n| n.metadata.name.clone())
                .collect();
            out.push(if injected.is_empty() {
                Check::pass(
                    "AMB1009",
                    "sidecar-injection",
                    "Cluster",
                    "no namespace has sidecar injection enabled".into(),
                    &ambient_fix("a namespace"),
                )
            } else {
                Check::fail(
                    "AMB1009",
                    "sidecar-injection",
                    Level::Info,
                    "Cluster",
                    format!(
                        "sidecar injection is enabled in namespace(s) {}: their new pods get sidecars, which ambient leaves alone (a pod with a sidecar is not captured by ztunnel)",
                        injected.join(", ")
                    ),
                    ambient_fix("them"),
                )
            });
        }
        Err(e) => out.push(Check::unknown(
            "AMB1009",
            "sidecar-injection",
            "Cluster",
            format!("cannot list Namespaces: {}", chain(&e)),
            "precheck with a kubeconfig that may list namespaces",
        )),
    }
    let pods: Api<Pod> = Api::all(client.clone());
    match list_all(&pods, ListParams::default()).await {
        Ok(list) => {
            let mut per_ns: std::collections::BTreeMap<String, usize> = Default::default();
            for p in list.iter().filter(|p| has_sidecar(p)) {
                *per_ns
                    .entry(p.metadata.namespace.clone().unwrap_or_default())
                    .or_default() += 1;
            }
            out.push(if per_ns.is_empty() {
                Check::pass(
                    "AMB1010",
                    "sidecar-pods",
                    "Cluster",
                    "no pod runs an Istio sidecar".into(),
                    &ambient_fix("a namespace"),
                )
            } else {
                let list: Vec<String> = per_ns.iter().map(|(ns, n)| format!("{ns} ({n})")).collect();
                Check::fail(
                    "AMB1010",
                    "sidecar-pods",
                    Level::Info,
                    "Cluster",
                    format!(
                        "pods with an Istio sidecar (istio-proxy) in {}: ambient skips them, they keep their sidecar's behaviour",
                        list.join(", ")
                    ),
                    ambient_fix("their namespaces"),
                )
            });
        }
        Err(e) => out.push(Check::unknown(
            "AMB1010",
            "sidecar-pods",
            "Cluster",
            format!("cannot list Pods: {}", chain(&e)),
            "precheck with a kubeconfig that may list pods in every namespace",
        )),
    }
    out
}

#[cfg(test)]
mod tests;
