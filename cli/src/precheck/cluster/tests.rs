//! The pure cluster checks: versions, Gateway API bundles and served versions, Istio objects.

use super::*;
use crate::precheck::Status;

fn crd(plural: &str, bundle: Option<&str>, served: &[&str]) -> GatewayCrd {
    GatewayCrd {
        plural: plural.into(),
        bundle_version: bundle.map(str::to_owned),
        served: served.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn full(bundle: &str) -> Vec<GatewayCrd> {
    GATEWAY_KINDS
        .iter()
        .map(|(k, v)| crd(k, Some(bundle), &[v]))
        .collect()
}

#[test]
fn semver_orders_releases_and_prereleases() {
    let v = |s| Semver::parse(s).unwrap();
    assert_eq!(
        v("v1.2.1"),
        Semver {
            major: 1,
            minor: 2,
            patch: 1,
            release: true
        }
    );
    assert_eq!(
        v("1.1"),
        Semver {
            major: 1,
            minor: 1,
            patch: 0,
            release: true
        }
    );
    assert!(v("v1.1.0-rc1") < MIN_GATEWAY_API);
    assert!(v("v1.0.0") < MIN_GATEWAY_API);
    assert!(v("v0.8.1") < MIN_GATEWAY_API);
    assert!(v("v1.1.0") >= MIN_GATEWAY_API);
    assert!(v("v1.10.0") > v("v1.9.3"));
    assert!(v("v1.1.0+build") >= MIN_GATEWAY_API);
    assert_eq!(Semver::parse("1"), None);
    assert_eq!(Semver::parse("v1.x.0"), None);
    assert_eq!(Semver::parse("1.2.3.4"), None);
}

#[test]
fn kubernetes_version_from_minor_or_git_version() {
    assert_eq!(kubernetes_minor("33", "v1.33.0"), Some(33));
    assert_eq!(kubernetes_minor("27+", "v1.27.8-eks-1"), Some(27));
    assert_eq!(kubernetes_minor("", "v1.30.2"), Some(30));
    assert_eq!(kubernetes_minor("", "garbage"), None);
    assert_eq!(version_check("33", "v1.33.0").status, Status::Pass);
    assert_eq!(version_check("28", "v1.28.0").status, Status::Pass);
    let old = version_check("27+", "v1.27.8");
    assert_eq!((old.status, old.severity), (Status::Fail, Level::Warning));
    assert!(old.message.contains("older than 1.28"), "{}", old.message);
    assert_eq!(version_check("", "?").status, Status::Unknown);
}

#[test]
fn gateway_api_missing_partial_old_and_current() {
    let none = gateway_api_checks(&[]);
    assert_eq!(none.len(), 1);
    assert_eq!(
        (none[0].code.as_str(), none[0].severity),
        ("AMB1003", Level::Warning)
    );
    assert!(
        none[0].fix.contains("standard-install.yaml"),
        "{}",
        none[0].fix
    );

    let current = gateway_api_checks(&full("v1.2.1"));
    assert!(
        current.iter().all(|c| c.status == Status::Pass),
        "{current:?}"
    );
    assert!(
        current[1].message.contains("v1.2.1"),
        "{}",
        current[1].message
    );

    let old = gateway_api_checks(&[crd("gateways", Some("v0.8.0"), &["v1beta1"])]);
    assert_eq!(old[0].status, Status::Fail);
    assert!(old[0].message.contains("httproutes"), "{}", old[0].message);
    let err = &old[1];
    assert_eq!((err.code.as_str(), err.severity), ("AMB1004", Level::Error));
    assert_eq!(
        err.object,
        "CustomResourceDefinition gateways.gateway.networking.k8s.io"
    );
    assert!(
        err.message.contains("v0.8.0 is older than v1.1.0"),
        "{}",
        err.message
    );
    assert!(
        err.message
            .contains("serves v1beta1, Ambit reads gateways/v1"),
        "{}",
        err.message
    );

    // No annotation: the served versions decide, as istioctl's UnsupportedGatewayAPIVersion.
    let mut unannotated: Vec<GatewayCrd> = GATEWAY_KINDS
        .iter()
        .map(|(k, v)| crd(k, None, &[v]))
        .collect();
    assert!(
        gateway_api_checks(&unannotated)
            .iter()
            .all(|c| c.status == Status::Pass)
    );
    unannotated[3].served = vec!["v1alpha2".into()];
    let grpc = gateway_api_checks(&unannotated);
    assert_eq!(grpc.len(), 2);
    assert_eq!(
        grpc[1].object,
        "CustomResourceDefinition grpcroutes.gateway.networking.k8s.io"
    );
    assert_eq!(grpc[1].severity, Level::Error);
}

#[test]
fn istio_objects_are_recognised() {
    assert!(is_istiod("istiod", None));
    assert!(is_istiod("istiod-1-28", None));
    assert!(is_istiod("pilot", Some("istiod")));
    assert!(!is_istiod("istiodx", None));
    let mut labels = std::collections::BTreeMap::new();
    assert_eq!(istio_daemonset("ztunnel", &labels), Some("ztunnel"));
    assert_eq!(
        istio_daemonset("istio-cni-node", &labels),
        Some("istio-cni")
    );
    assert_eq!(istio_daemonset("kube-proxy", &labels), None);
    labels.insert("app".into(), "ztunnel".into());
    assert_eq!(istio_daemonset("zt", &labels), Some("ztunnel"));

    let pod = |containers: &[&str], init: &[&str]| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": containers.iter().map(|c| serde_json::json!({"name": c})).collect::<Vec<_>>(),
                "initContainers": init.iter().map(|c| serde_json::json!({"name": c})).collect::<Vec<_>>(),
            }
        }))
        .unwrap()
    };
    assert!(has_sidecar(&pod(&["app", "istio-proxy"], &[])));
    assert!(has_sidecar(&pod(&["app"], &["istio-proxy"])));
    assert!(
        !has_sidecar(&pod(&["istio-proxy"], &[])),
        "a ztunnel or gateway pod"
    );
    assert!(!has_sidecar(&pod(&["app"], &[])));
    let istio_crds: BTreeSet<String> = ["security.istio.io", "networking.istio.io"]
        .map(String::from)
        .into();
    assert_eq!(istio_crd_check(&istio_crds).status, Status::Pass);
    let c = istio_crd_check(&BTreeSet::new());
    assert_eq!((c.status, c.severity), (Status::Fail, Level::Info));
}
