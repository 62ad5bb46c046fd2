//! Gateway API ReferenceGrant: whether a reference from an object in one namespace to an object in another is
//! permitted. It is, exactly when a ReferenceGrant in the *target's* namespace has a `from` entry naming the
//! referrer's group, kind and namespace and a `to` entry naming the target's group and kind (and its name, when
//! the entry has one). Same-namespace references need no grant. Groups compare as written, with `""` and `core`
//! both meaning the core group; kinds and names compare exactly.
//!
//! The grant is read on every compute, so creating or deleting one takes effect on the next computation (the
//! index reports every change of a ReferenceGrant, which recomputes everything).

use crate::index::Index;
use crate::sources::reference_grant::ReferenceGrant;

/// The object making a reference.
#[derive(Clone, Copy, Debug)]
pub struct Referrer<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
}

/// The object referred to.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

fn same_group(a: &str, b: &str) -> bool {
    a == b || (a.is_empty() && b == "core") || (a == "core" && b.is_empty())
}

/// Whether this one grant permits the reference (it must live in the target's namespace).
pub fn grant_permits(grant: &ReferenceGrant, from: Referrer<'_>, to: Target<'_>) -> bool {
    grant.metadata.namespace.as_deref().unwrap_or_default() == to.namespace
        && grant.spec.from.iter().any(|f| {
            same_group(&f.group, from.group) && f.kind == from.kind && f.namespace == from.namespace
        })
        && grant.spec.to.iter().any(|t| {
            same_group(&t.group, to.group)
                && t.kind == to.kind
                && t.name
                    .as_deref()
                    .is_none_or(|n| n.is_empty() || n == to.name)
        })
}

/// Whether the reference is permitted: same namespace, or granted by a ReferenceGrant in the target's namespace.
pub fn permitted(index: &Index, from: Referrer<'_>, to: Target<'_>) -> bool {
    from.namespace == to.namespace
        || index
            .reference_grants
            .range((to.namespace.to_owned(), String::new())..)
            .take_while(|((ns, _), _)| ns == to.namespace)
            .any(|(_, g)| grant_permits(g, from, to))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::sources::{Document, Event, Object, parse_document};

    const ROUTE_GROUP: &str = "gateway.networking.k8s.io";

    fn grant(yaml: &str) -> Object {
        match parse_document(serde_yaml::from_str(yaml).unwrap()).unwrap() {
            Document::Object(o) => o,
            other => panic!("{other:?}"),
        }
    }

    fn http_route_in(ns: &str) -> Referrer<'_> {
        Referrer {
            group: ROUTE_GROUP,
            kind: "HTTPRoute",
            namespace: ns,
        }
    }

    fn service<'a>(ns: &'a str, name: &'a str) -> Target<'a> {
        Target {
            group: "",
            kind: "Service",
            namespace: ns,
            name,
        }
    }

    const GRANT: &str = "apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: g, namespace: backend}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: front}]
  to: [{group: '', kind: Service}]
";

    #[test]
    fn a_grant_permits_exactly_what_it_names() {
        let mut idx = Index::default();
        assert!(
            permitted(&idx, http_route_in("front"), service("front", "a")),
            "same namespace needs no grant"
        );
        assert!(!permitted(
            &idx,
            http_route_in("front"),
            service("backend", "a")
        ));
        assert!(idx.apply(Event::Apply(grant(GRANT))));
        let cases = [
            (http_route_in("front"), service("backend", "a"), true),
            (http_route_in("front"), service("backend", "other"), true),
            // Another from-namespace, another kind, another group, a target in another namespace.
            (http_route_in("elsewhere"), service("backend", "a"), false),
            (
                Referrer {
                    kind: "GRPCRoute",
                    ..http_route_in("front")
                },
                service("backend", "a"),
                false,
            ),
            (
                Referrer {
                    group: "example.com",
                    ..http_route_in("front")
                },
                service("backend", "a"),
                false,
            ),
            (http_route_in("front"), service("third", "a"), false),
            (
                http_route_in("front"),
                Target {
                    group: "networking.istio.io",
                    kind: "ServiceEntry",
                    ..service("backend", "a")
                },
                false,
            ),
            // `core` is the core group too.
            (
                http_route_in("front"),
                Target {
                    group: "core",
                    ..service("backend", "a")
                },
                true,
            ),
        ];
        for (from, to, want) in cases {
            assert_eq!(permitted(&idx, from, to), want, "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn a_name_restricts_the_grant_to_that_object() {
        let mut idx = Index::default();
        idx.apply(Event::Apply(grant(
            &GRANT.replace("kind: Service}", "kind: Service, name: a}"),
        )));
        assert!(permitted(
            &idx,
            http_route_in("front"),
            service("backend", "a")
        ));
        assert!(!permitted(
            &idx,
            http_route_in("front"),
            service("backend", "b")
        ));
    }

    #[test]
    fn v1_grants_and_several_entries() {
        let mut idx = Index::default();
        idx.apply(Event::Apply(grant(
            "apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {name: g, namespace: backend}
spec:
  from:
  - {group: gateway.networking.k8s.io, kind: TCPRoute, namespace: a}
  - {group: gateway.networking.k8s.io, kind: GRPCRoute, namespace: b}
  to:
  - {group: '', kind: Secret}
  - {group: '', kind: Service, name: s}
  extra: ignored
",
        )));
        let grpc = |ns| Referrer {
            group: ROUTE_GROUP,
            kind: "GRPCRoute",
            namespace: ns,
        };
        assert!(permitted(&idx, grpc("b"), service("backend", "s")));
        assert!(!permitted(&idx, grpc("a"), service("backend", "s")));
        assert!(!permitted(&idx, grpc("b"), service("backend", "t")));
    }

    #[test]
    fn deleting_the_grant_revokes_it_and_is_a_change() {
        let mut idx = Index::default();
        let g = grant(GRANT);
        assert!(idx.apply(Event::Apply(g.clone())));
        assert!(
            !idx.apply(Event::Apply(g.clone())),
            "no change, no recompute"
        );
        assert!(permitted(
            &idx,
            http_route_in("front"),
            service("backend", "a")
        ));
        assert!(idx.apply(Event::Delete(g.key())));
        assert!(!permitted(
            &idx,
            http_route_in("front"),
            service("backend", "a")
        ));
    }
}
