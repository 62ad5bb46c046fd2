//! `ambit.waypoint.AuthorizationPolicy` → [`Policy`], validated as istiod validates AuthorizationPolicy: an
//! invalid value rejects the whole policy with the path of the field (`rules[0].to[1].operation.ports[0]`), in
//! the YAML's field names, so the NACK and the `WaypointAccepted` condition can say exactly what is wrong.

use std::fmt;
use std::net::IpAddr;

use ambit_proto::waypoint as pb;
use http::HeaderName;
use ipnet::IpNet;

use super::matching::Segment;
use super::{
    Action, Condition, ConditionKey, ConditionValues, HostMatch, Operation, PathMatch, Policy,
    Rule, ServiceAccount, Source, StringMatch, Target,
};

/// Why a policy was rejected: the field (`rules[0].when[1].key`) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for PolicyError {}

fn err<T>(path: impl Into<String>, message: impl Into<String>) -> Result<T, PolicyError> {
    Err(PolicyError {
        path: path.into(),
        message: message.into(),
    })
}

impl TryFrom<&pb::AuthorizationPolicy> for Policy {
    type Error = PolicyError;
    fn try_from(p: &pb::AuthorizationPolicy) -> Result<Self, Self::Error> {
        Policy::from_proto(p)
    }
}

impl Policy {
    /// Converts and validates one policy.
    pub fn from_proto(p: &pb::AuthorizationPolicy) -> Result<Policy, PolicyError> {
        use pb::authorization_policy::Action as A;
        let action = match A::try_from(p.action) {
            Ok(A::Allow) => Action::Allow,
            Ok(A::Deny) => Action::Deny,
            Ok(A::Audit) => Action::Audit,
            Ok(A::Custom) => Action::Custom,
            Err(_) => return err("action", format!("unknown action {}", p.action)),
        };
        let provider = match (action, &p.provider) {
            (Action::Custom, None) => return err("provider", "a CUSTOM policy needs a provider"),
            (Action::Custom, Some(prov)) => Some(prov.clone()),
            _ => None,
        };
        if p.targets.is_empty() {
            return err("targets", "a waypoint policy needs at least one target");
        }
        let targets = p
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| target(t, &p.namespace, &format!("targets[{i}]")))
            .collect::<Result<_, _>>()?;
        let rules = p
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| rule(r, &p.namespace, &format!("rules[{i}]")))
            .collect::<Result<_, _>>()?;
        let name = if p.name.contains('/') || p.namespace.is_empty() {
            p.name.clone()
        } else {
            format!("{}/{}", p.namespace, p.name)
        };
        Ok(Policy {
            name,
            namespace: p.namespace.clone(),
            targets,
            action,
            rules,
            provider,
            dry_run: p.dry_run,
        })
    }
}

fn target(t: &pb::PolicyTarget, policy_ns: &str, path: &str) -> Result<Target, PolicyError> {
    use pb::policy_target::Kind;
    let Ok(port) = u16::try_from(t.port) else {
        return err(format!("{path}.port"), format!("{} is not a port", t.port));
    };
    if t.name.is_empty() {
        return err(format!("{path}.name"), "a target needs a name");
    }
    match Kind::try_from(t.kind) {
        Ok(Kind::Gateway) => Ok(Target::Gateway {
            namespace: if t.namespace.is_empty() {
                policy_ns.to_owned()
            } else {
                t.namespace.clone()
            },
            name: t.name.clone(),
            port,
        }),
        Ok(Kind::Service) => Ok(Target::Service {
            hostname: t.name.clone(),
            port,
        }),
        Ok(Kind::GatewayClass) => Ok(Target::GatewayClass {
            name: t.name.clone(),
            port,
        }),
        Ok(Kind::Route) => err(
            format!("{path}.kind"),
            "ROUTE targets are for rate limits only",
        ),
        Err(_) => err(format!("{path}.kind"), format!("unknown kind {}", t.kind)),
    }
}

fn rule(r: &pb::AuthzRule, ns: &str, path: &str) -> Result<Rule, PolicyError> {
    let from = r
        .from
        .iter()
        .enumerate()
        .map(|(i, s)| source(s, ns, &format!("{path}.from[{i}].source")))
        .collect::<Result<_, _>>()?;
    let to =
        r.to.iter()
            .enumerate()
            .map(|(i, o)| operation(o, &format!("{path}.to[{i}].operation")))
            .collect::<Result<_, _>>()?;
    let when = r
        .when
        .iter()
        .enumerate()
        .map(|(i, c)| condition(c, &format!("{path}.when[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Rule { from, to, when })
}

/// Each value through `f`, with `path.field[j]` in errors; empty strings are rejected.
fn each<T>(
    values: &[String],
    path: &str,
    field: &str,
    f: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, PolicyError> {
    values
        .iter()
        .enumerate()
        .map(|(j, v)| {
            let r = if v.is_empty() {
                Err("empty value".to_owned())
            } else {
                f(v)
            };
            r.map_err(|message| PolicyError {
                path: format!("{path}.{field}[{j}]"),
                message,
            })
        })
        .collect()
}

fn strings(values: &[String], path: &str, field: &str) -> Result<Vec<StringMatch>, PolicyError> {
    each(values, path, field, |v| Ok(StringMatch::parse(v)))
}

/// Peer principals, with an optional `spiffe://` removed (Istio writes them without it).
fn principals(values: &[String], path: &str, field: &str) -> Result<Vec<StringMatch>, PolicyError> {
    each(values, path, field, |v| {
        Ok(match StringMatch::parse(v) {
            StringMatch::Exact(s) => StringMatch::Exact(strip_spiffe(s)),
            StringMatch::Prefix(s) => StringMatch::Prefix(strip_spiffe(s)),
            other => other,
        })
    })
}

fn strip_spiffe(s: String) -> String {
    match s.strip_prefix("spiffe://") {
        Some(rest) => rest.to_owned(),
        None => s,
    }
}

/// `ns/name`, or a bare name in the policy's namespace.
fn service_accounts(
    values: &[String],
    ns: &str,
    path: &str,
    field: &str,
) -> Result<Vec<ServiceAccount>, PolicyError> {
    each(values, path, field, |v| {
        if v.contains('*') {
            return Err(format!(
                "{v:?}: wildcards are not supported in service accounts"
            ));
        }
        let (namespace, name) = v.split_once('/').unwrap_or((ns, v));
        if namespace.is_empty() || name.is_empty() || name.contains('/') {
            return Err(format!(
                "{v:?} is not a service account (<namespace>/<name>)"
            ));
        }
        Ok(ServiceAccount {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    })
}

fn cidr(v: &str) -> Result<IpNet, String> {
    v.parse::<IpNet>()
        .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{v:?} is not a CIDR or IP address"))
}

fn cidrs(values: &[String], path: &str, field: &str) -> Result<Vec<IpNet>, PolicyError> {
    each(values, path, field, cidr)
}

fn port(v: &str) -> Result<u16, String> {
    match v.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("{v:?} is not a port")),
    }
}

fn ports(values: &[String], path: &str, field: &str) -> Result<Vec<u16>, PolicyError> {
    each(values, path, field, port)
}

fn paths(values: &[String], path: &str, field: &str) -> Result<Vec<PathMatch>, PolicyError> {
    each(values, path, field, |v| {
        if !v.contains('{') {
            return Ok(PathMatch::Value(StringMatch::parse(v)));
        }
        let Some(rest) = v.strip_prefix('/') else {
            return Err(format!("{v:?}: a path template must start with /"));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let last = parts.len().saturating_sub(1);
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| match *p {
                "{*}" => Ok(Segment::One),
                "{**}" if i == last => Ok(Segment::Rest),
                "{**}" => Err(format!("{v:?}: {{**}} must be the last segment")),
                p if p.contains(['{', '}', '*']) => {
                    Err(format!("{v:?}: a template segment must be {{*}} or {{**}}"))
                }
                p => Ok(Segment::Literal(p.to_owned())),
            })
            .collect::<Result<_, _>>()
            .map(PathMatch::Template)
    })
}

fn hosts(values: &[String], path: &str, field: &str) -> Result<Vec<HostMatch>, PolicyError> {
    each(values, path, field, |v| Ok(HostMatch::parse(v)))
}

fn source(s: &pb::Source, ns: &str, path: &str) -> Result<Source, PolicyError> {
    if *s == pb::Source::default() {
        return err(path, "must not be empty");
    }
    Ok(Source {
        principals: principals(&s.principals, path, "principals")?,
        not_principals: principals(&s.not_principals, path, "notPrincipals")?,
        request_principals: strings(&s.request_principals, path, "requestPrincipals")?,
        not_request_principals: strings(&s.not_request_principals, path, "notRequestPrincipals")?,
        namespaces: strings(&s.namespaces, path, "namespaces")?,
        not_namespaces: strings(&s.not_namespaces, path, "notNamespaces")?,
        service_accounts: service_accounts(&s.service_accounts, ns, path, "serviceAccounts")?,
        not_service_accounts: service_accounts(
            &s.not_service_accounts,
            ns,
            path,
            "notServiceAccounts",
        )?,
        ip_blocks: cidrs(&s.ip_blocks, path, "ipBlocks")?,
        not_ip_blocks: cidrs(&s.not_ip_blocks, path, "notIpBlocks")?,
        remote_ip_blocks: cidrs(&s.remote_ip_blocks, path, "remoteIpBlocks")?,
        not_remote_ip_blocks: cidrs(&s.not_remote_ip_blocks, path, "notRemoteIpBlocks")?,
    })
}

fn operation(o: &pb::Operation, path: &str) -> Result<Operation, PolicyError> {
    if *o == pb::Operation::default() {
        return err(path, "must not be empty");
    }
    Ok(Operation {
        hosts: hosts(&o.hosts, path, "hosts")?,
        not_hosts: hosts(&o.not_hosts, path, "notHosts")?,
        ports: ports(&o.ports, path, "ports")?,
        not_ports: ports(&o.not_ports, path, "notPorts")?,
        methods: strings(&o.methods, path, "methods")?,
        not_methods: strings(&o.not_methods, path, "notMethods")?,
        paths: paths(&o.paths, path, "paths")?,
        not_paths: paths(&o.not_paths, path, "notPaths")?,
    })
}

/// `[a][b]` ⇒ `["a", "b"]`; each name non-empty, nothing after the last `]`.
fn bracketed(mut s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let rest = s.strip_prefix('[')?;
        let (name, after) = rest.split_once(']')?;
        if name.is_empty() || name.contains('[') {
            return None;
        }
        out.push(name.to_owned());
        s = after;
    }
    (!out.is_empty()).then_some(out)
}

fn key(k: &str) -> Result<ConditionKey, String> {
    if let Some(rest) = k.strip_prefix("request.headers") {
        return match bracketed(rest).as_deref() {
            Some([name]) => HeaderName::from_bytes(name.as_bytes())
                .map(ConditionKey::RequestHeader)
                .map_err(|_| format!("{name:?} is not a header name")),
            _ => Err(format!("{k:?}: the form is request.headers[<name>]")),
        };
    }
    if let Some(rest) = k.strip_prefix("request.auth.claims") {
        return bracketed(rest)
            .map(ConditionKey::AuthClaims)
            .ok_or_else(|| {
                format!("{k:?}: the form is request.auth.claims[<name>] (nested: [a][b])")
            });
    }
    Ok(match k {
        "request.auth.principal" => ConditionKey::AuthPrincipal,
        "request.auth.audiences" => ConditionKey::AuthAudiences,
        "request.auth.presenter" => ConditionKey::AuthPresenter,
        "source.ip" => ConditionKey::SourceIp,
        "remote.ip" => ConditionKey::RemoteIp,
        "source.namespace" => ConditionKey::SourceNamespace,
        "source.principal" => ConditionKey::SourcePrincipal,
        "destination.ip" => ConditionKey::DestinationIp,
        "destination.port" => ConditionKey::DestinationPort,
        "connection.sni" => ConditionKey::ConnectionSni,
        k if k.starts_with("experimental.envoy.filters.") => {
            return Err(format!("{k:?} is not supported"));
        }
        k => return Err(format!("unknown key {k:?}")),
    })
}

fn condition(c: &pb::Condition, path: &str) -> Result<Condition, PolicyError> {
    let key = key(&c.key).map_err(|message| PolicyError {
        path: format!("{path}.key"),
        message,
    })?;
    if c.values.is_empty() && c.not_values.is_empty() {
        return err(path, "needs values or notValues");
    }
    let typed = |values: &[String], field: &str| -> Result<ConditionValues, PolicyError> {
        Ok(match key {
            ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp => {
                ConditionValues::Ips(cidrs(values, path, field)?)
            }
            ConditionKey::DestinationPort => ConditionValues::Ports(ports(values, path, field)?),
            ConditionKey::SourcePrincipal => {
                ConditionValues::Strings(principals(values, path, field)?)
            }
            _ => ConditionValues::Strings(strings(values, path, field)?),
        })
    };
    Ok(Condition {
        values: typed(&c.values, "values")?,
        not_values: typed(&c.not_values, "notValues")?,
        key,
    })
}
