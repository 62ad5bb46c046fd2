//! The positional argument of `ambit ztunnel-config`: `[<type>/]<name>[.<namespace>]`, as istioctl reads it (the
//! namespace is after the last dot).

use std::fmt;

/// What kind of object the argument names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A pod: a ztunnel, or an application pod (its node's ztunnel is used).
    Pod,
    /// A Deployment: its first pod.
    Deployment,
    /// A DaemonSet: only `ztunnel`, meaning any ztunnel (istioctl's default lookup, `daemonset/ztunnel`).
    DaemonSet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    pub name: String,
    /// From the argument (`name.namespace`), else from `-n`; `None` when neither says.
    pub namespace: Option<String>,
}

impl Target {
    /// Reads `[<type>/]<name>[.<namespace>]`; `namespace` (`-n`) applies when the argument has none.
    pub fn parse(arg: &str, namespace: Option<&str>) -> Result<Target, String> {
        let (kind, rest) = match arg.split_once('/') {
            Some((t, rest)) => (kind(t)?, rest),
            None => (Kind::Pod, arg),
        };
        let (name, ns) = match rest.rsplit_once('.') {
            Some((name, ns)) if !name.is_empty() && !ns.is_empty() => (name, Some(ns)),
            _ => (rest, None),
        };
        if name.is_empty() || name.contains('/') || name.starts_with('.') || name.ends_with('.') {
            return Err(format!(
                "{arg:?} is not [<type>/]<name>[.<namespace>] (e.g. ztunnel-node-1.istio-system, \
                 productpage-v1-6d8f9c7b5-x2k4p.bookinfo, deploy/reviews-v1.bookinfo)"
            ));
        }
        Ok(Target {
            kind,
            name: name.to_owned(),
            namespace: ns.or(namespace).map(str::to_owned),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Pod => "",
            Kind::Deployment => "deployment/",
            Kind::DaemonSet => "daemonset/",
        };
        write!(f, "{kind}{}", self.name)?;
        if let Some(ns) = &self.namespace {
            write!(f, ".{ns}")?;
        }
        Ok(())
    }
}

fn kind(t: &str) -> Result<Kind, String> {
    match t.to_ascii_lowercase().as_str() {
        "pod" | "pods" | "po" => Ok(Kind::Pod),
        "deployment" | "deployments" | "deploy" => Ok(Kind::Deployment),
        "daemonset" | "daemonsets" | "ds" => Ok(Kind::DaemonSet),
        _ => Err(format!(
            "unsupported resource type {t:?}: use pod/, deployment/ (deploy/) or daemonset/ztunnel"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(kind: Kind, name: &str, ns: Option<&str>) -> Target {
        Target {
            kind,
            name: name.into(),
            namespace: ns.map(Into::into),
        }
    }

    #[test]
    fn type_name_namespace() {
        assert_eq!(
            Target::parse("ztunnel-node-1", None).unwrap(),
            t(Kind::Pod, "ztunnel-node-1", None)
        );
        assert_eq!(
            Target::parse("ztunnel-node-1.istio-system", None).unwrap(),
            t(Kind::Pod, "ztunnel-node-1", Some("istio-system"))
        );
        assert_eq!(
            Target::parse("pod/productpage-v1.bookinfo", None).unwrap(),
            t(Kind::Pod, "productpage-v1", Some("bookinfo"))
        );
        assert_eq!(
            Target::parse("deploy/reviews-v1", Some("bookinfo")).unwrap(),
            t(Kind::Deployment, "reviews-v1", Some("bookinfo"))
        );
        // The argument's namespace beats -n.
        assert_eq!(
            Target::parse("a.b", Some("c"))
                .unwrap()
                .namespace
                .as_deref(),
            Some("b")
        );
        // The namespace is after the last dot.
        assert_eq!(
            Target::parse("a.b.c", None).unwrap(),
            t(Kind::Pod, "a.b", Some("c"))
        );
        assert_eq!(
            Target::parse("DaemonSet/ztunnel", None).unwrap().kind,
            Kind::DaemonSet
        );
        assert_eq!(
            Target::parse("deploy/x.y", None).unwrap().to_string(),
            "deployment/x.y"
        );
    }

    #[test]
    fn bad_arguments() {
        for bad in ["", "pod/", "svc/x", "a/b/c", ".ns"] {
            let e = Target::parse(bad, None).unwrap_err();
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(
            Target::parse("svc/x", None)
                .unwrap_err()
                .contains("unsupported resource type \"svc\"")
        );
    }
}
