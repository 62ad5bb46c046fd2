//! What an L7 policy (`RequestAuthentication`, `RateLimitPolicy`) applies to at this waypoint, from its resolved
//! `targetRefs`, and an index that finds a request's policies without scanning the others.
//!
//! The controller sends a waypoint only the policies that concern it, so a `GATEWAY` target (this waypoint's
//! Gateway) and a `GATEWAY_CLASS` target (mesh-wide waypoint defaults) apply to every request here; a `SERVICE`
//! target to requests addressed to that service (and port, when set); a `ROUTE` target to requests that the named
//! route rule (or any rule of the named route) matched.

use std::collections::HashMap;
use std::sync::Arc;

use ambit_proto::waypoint as pb;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum TargetRef {
    /// This waypoint, or every waypoint of its class.
    Waypoint,
    Service {
        hostname: String,
        port: Option<u16>,
    },
    /// A route rule's resource name, or a route's name prefix (`<ns>/<kind>/<name>`) for all of its rules.
    Route(String),
}

pub fn targets_from_proto(ts: &[pb::PolicyTarget]) -> Result<Vec<TargetRef>, String> {
    if ts.is_empty() {
        return Err("targets: empty (a waypoint policy needs targetRefs)".into());
    }
    ts.iter()
        .enumerate()
        .map(|(i, t)| {
            use pb::policy_target::Kind;
            let port = match t.port {
                0 => None,
                p => Some(
                    u16::try_from(p).map_err(|_| format!("targets[{i}].port: {p} out of range"))?,
                ),
            };
            if t.name.is_empty() {
                return Err(format!("targets[{i}].name: empty"));
            }
            match Kind::try_from(t.kind) {
                Ok(Kind::Gateway | Kind::GatewayClass) => Ok(TargetRef::Waypoint),
                Ok(Kind::Service) => Ok(TargetRef::Service {
                    hostname: t.name.clone(),
                    port,
                }),
                Ok(Kind::Route) => Ok(TargetRef::Route(t.name.clone())),
                Err(_) => Err(format!("targets[{i}].kind: unknown kind {}", t.kind)),
            }
        })
        .collect()
}

/// The policies targeting one service, each with the port it is limited to.
type ByPort<T> = Vec<(Option<u16>, Arc<T>)>;

/// Policies of one kind by what they target.
#[derive(Debug)]
pub struct TargetIndex<T> {
    all: Vec<Arc<T>>,
    by_service: HashMap<String, ByPort<T>>,
    by_route: Vec<(String, Arc<T>)>,
}

impl<T> Default for TargetIndex<T> {
    fn default() -> Self {
        TargetIndex {
            all: Vec::new(),
            by_service: HashMap::new(),
            by_route: Vec::new(),
        }
    }
}

impl<T> TargetIndex<T> {
    /// `items`: each policy with its targets, in the order policies should apply (by name).
    pub fn new<'a>(items: impl IntoIterator<Item = (&'a [TargetRef], Arc<T>)>) -> TargetIndex<T>
    where
        T: 'a,
    {
        let mut ix = TargetIndex::default();
        for (targets, item) in items {
            for t in targets {
                match t {
                    TargetRef::Waypoint => ix.all.push(item.clone()),
                    TargetRef::Service { hostname, port } => ix
                        .by_service
                        .entry(hostname.clone())
                        .or_default()
                        .push((*port, item.clone())),
                    TargetRef::Route(r) => ix.by_route.push((r.clone(), item.clone())),
                }
            }
        }
        ix
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty() && self.by_service.is_empty() && self.by_route.is_empty()
    }

    /// The policies that apply to a request for `service:port` that `rule` matched (a policy targeting it twice
    /// comes twice: callers that care dedupe by identity).
    pub fn for_request<'a, 'b>(
        &'a self,
        service: Option<(&'b str, u16)>,
        rule: Option<&'b str>,
    ) -> impl Iterator<Item = &'a Arc<T>> + use<'a, 'b, T> {
        let by_service = service
            .and_then(|(h, p)| self.by_service.get(h).map(move |v| (v, p)))
            .into_iter()
            .flat_map(|(v, port)| {
                v.iter()
                    .filter(move |(p, _)| p.is_none_or(|p| p == port))
                    .map(|(_, t)| t)
            });
        let by_route = rule.into_iter().flat_map(move |r| {
            self.by_route
                .iter()
                .filter(move |(name, _)| route_matches(name, r))
                .map(|(_, t)| t)
        });
        self.all.iter().chain(by_service).chain(by_route)
    }
}

/// `target` names rule `rule` itself, or the route it belongs to (`<ns>/<kind>/<name>` of
/// `<ns>/<kind>/<name>/<index>`).
fn route_matches(target: &str, rule: &str) -> bool {
    rule == target
        || rule
            .strip_prefix(target)
            .is_some_and(|rest| rest.starts_with('/') && !rest[1..].contains('/'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn target(kind: pb::policy_target::Kind, name: &str, port: u32) -> pb::PolicyTarget {
        pb::PolicyTarget {
            kind: kind as i32,
            name: name.into(),
            namespace: "demo".into(),
            port,
        }
    }

    #[test]
    fn index_finds_what_targets_the_request() {
        use pb::policy_target::Kind;
        let p = |name: &str, ts: Vec<pb::PolicyTarget>| {
            (targets_from_proto(&ts).unwrap(), Arc::new(name.to_owned()))
        };
        let items = [
            p("gw", vec![target(Kind::Gateway, "waypoint", 0)]),
            p(
                "svc",
                vec![target(Kind::Service, "a.demo.svc.cluster.local", 0)],
            ),
            p(
                "svc-80",
                vec![target(Kind::Service, "a.demo.svc.cluster.local", 80)],
            ),
            p("route", vec![target(Kind::Route, "demo/httproute/r", 0)]),
            p("rule1", vec![target(Kind::Route, "demo/httproute/r/1", 0)]),
        ];
        let ix = TargetIndex::new(items.iter().map(|(t, i)| (t.as_slice(), i.clone())));
        let names = |svc: Option<(&str, u16)>, rule: Option<&str>| {
            ix.for_request(svc, rule)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(None, None), ["gw"]);
        assert_eq!(
            names(Some(("a.demo.svc.cluster.local", 80)), None),
            ["gw", "svc", "svc-80"]
        );
        assert_eq!(
            names(Some(("a.demo.svc.cluster.local", 81)), None),
            ["gw", "svc"]
        );
        assert_eq!(names(Some(("b.demo.svc.cluster.local", 80)), None), ["gw"]);
        assert_eq!(names(None, Some("demo/httproute/r/0")), ["gw", "route"]);
        assert_eq!(
            names(None, Some("demo/httproute/r/1")),
            ["gw", "route", "rule1"]
        );
        assert_eq!(
            names(None, Some("demo/httproute/rr/1")),
            ["gw"],
            "not a prefix of another route"
        );
    }

    #[test]
    fn targets_must_be_valid() {
        assert!(
            targets_from_proto(&[])
                .unwrap_err()
                .contains("targets: empty")
        );
        let e = targets_from_proto(&[pb::PolicyTarget {
            kind: 9,
            name: "x".into(),
            ..Default::default()
        }])
        .unwrap_err();
        assert!(e.contains("targets[0].kind"), "{e}");
        let e = targets_from_proto(&[pb::PolicyTarget::default()]).unwrap_err();
        assert!(e.contains("targets[0].name"), "{e}");
    }
}
