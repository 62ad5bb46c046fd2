//! L7 authorization: Istio's `AuthorizationPolicy` (every action and field) as the controller resolves it for the
//! waypoints its `targetRefs` name (`ambit.waypoint.AuthorizationPolicy`), and the explanation behind `ambit authz
//! check`. It lives in core so that the waypoint and the CLI run the very same code.

mod convert;
mod explain;
mod matching;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use ambit_proto::waypoint::ExtAuthzProvider;
use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use serde::Serialize;

pub use convert::PolicyError;
pub use explain::{Explanation, PolicyExplanation, RuleExplanation};
pub use matching::{HostMatch, PathMatch, Segment, StringMatch};

/// A policy's action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Allow,
    Deny,
    Audit,
    Custom,
}

/// What a policy applies to (its resolved `targetRefs`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Every request of the waypoint Gateway `namespace/name`.
    Gateway {
        namespace: String,
        name: String,
        port: u16,
    },
    /// Requests addressed to the Service (or ServiceEntry) with this hostname.
    Service { hostname: String, port: u16 },
    /// Every waypoint of the class (root-namespace policies: mesh-wide waypoint defaults).
    GatewayClass { name: String, port: u16 },
}

impl Target {
    /// The `sectionName`/port restriction; 0 is every port.
    pub fn port(&self) -> u16 {
        match self {
            Target::Gateway { port, .. }
            | Target::Service { port, .. }
            | Target::GatewayClass { port, .. } => *port,
        }
    }
}

/// One AuthorizationPolicy, converted and validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// `namespace/name`.
    pub name: String,
    pub namespace: String,
    pub targets: Vec<Target>,
    pub action: Action,
    /// ORed. None: the policy matches nothing (an ALLOW without rules denies everything it targets).
    pub rules: Vec<Rule>,
    /// CUSTOM: the ext_authz provider.
    pub provider: Option<ExtAuthzProvider>,
    pub dry_run: bool,
}

/// A rule matches when all of its sections match; an empty section matches.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rule {
    /// ORed.
    pub from: Vec<Source>,
    /// ORed.
    pub to: Vec<Operation>,
    /// ANDed.
    pub when: Vec<Condition>,
}

/// `rule.from.source`: every non-empty field must hold; a positive list needs any hit, a `not_` list no hit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Source {
    /// Peer identities without `spiffe://` (`td/ns/<ns>/sa/<sa>`).
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    /// JWT `iss/sub`.
    pub request_principals: Vec<StringMatch>,
    pub not_request_principals: Vec<StringMatch>,
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    pub service_accounts: Vec<ServiceAccount>,
    pub not_service_accounts: Vec<ServiceAccount>,
    pub ip_blocks: Vec<IpNet>,
    pub not_ip_blocks: Vec<IpNet>,
    pub remote_ip_blocks: Vec<IpNet>,
    pub not_remote_ip_blocks: Vec<IpNet>,
}

/// `rule.to.operation`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Operation {
    pub hosts: Vec<HostMatch>,
    pub not_hosts: Vec<HostMatch>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    pub methods: Vec<StringMatch>,
    pub not_methods: Vec<StringMatch>,
    pub paths: Vec<PathMatch>,
    pub not_paths: Vec<PathMatch>,
}

/// A service account `namespace/name`; the trust domain is not compared.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `rule.when`: the attribute must match one of `values` (if any) and none of `not_values`.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub key: ConditionKey,
    pub values: ConditionValues,
    pub not_values: ConditionValues,
}

/// The attribute a condition reads (<https://istio.io/latest/docs/reference/config/security/conditions/>).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConditionKey {
    /// `request.headers[<name>]`.
    RequestHeader(HeaderName),
    /// `request.auth.principal`: the JWT's `iss/sub`.
    AuthPrincipal,
    /// `request.auth.audiences`: the JWT's `aud` (a string or a list).
    AuthAudiences,
    /// `request.auth.presenter`: the JWT's `azp`.
    AuthPresenter,
    /// `request.auth.claims[a][b]...`: a (nested) claim.
    AuthClaims(Vec<String>),
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationIp,
    DestinationPort,
    ConnectionSni,
}

/// A condition's values, typed by its key.
#[derive(Clone, Debug, PartialEq)]
pub enum ConditionValues {
    Strings(Vec<StringMatch>),
    Ips(Vec<IpNet>),
    Ports(Vec<u16>),
}

impl ConditionValues {
    pub fn is_empty(&self) -> bool {
        match self {
            ConditionValues::Strings(v) => v.is_empty(),
            ConditionValues::Ips(v) => v.is_empty(),
            ConditionValues::Ports(v) => v.is_empty(),
        }
    }
}

/// The request's authentication result (a JWT RequestAuthentication accepted).
#[derive(Clone, Copy, Debug)]
pub struct RequestAuth<'a> {
    /// `iss/sub` ([`RequestAuth::principal_of`]).
    pub principal: &'a str,
    /// The token's payload; `aud` and `azp` are read from it.
    pub claims: &'a serde_json::Value,
}

impl RequestAuth<'_> {
    /// Istio's request principal, `<iss>/<sub>`, when both claims are strings.
    pub fn principal_of(claims: &serde_json::Value) -> Option<String> {
        let iss = claims.get("iss")?.as_str()?;
        let sub = claims.get("sub")?.as_str()?;
        Some(format!("{iss}/{sub}"))
    }
}

/// What the waypoint knows about one request, borrowed from it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The waypoint Gateway `(namespace, name)` and its GatewayClass.
    pub gateway: (&'a str, &'a str),
    pub gateway_class: &'a str,
    /// The destination Service hostname, if the request is addressed to one.
    pub service: Option<&'a str>,
    /// The client's SPIFFE identity (`spiffe://td/ns/<ns>/sa/<sa>`, or without the scheme); None for plaintext.
    pub source_principal: Option<&'a str>,
    /// The client's namespace; None: the `ns` segment of `source_principal`.
    pub source_namespace: Option<&'a str>,
    /// The client address (HBONE's `forwarded: for=`).
    pub source_ip: IpAddr,
    /// The original client address (`x-forwarded-for`'s first hop, else `source_ip`).
    pub remote_ip: IpAddr,
    pub destination_ip: IpAddr,
    /// The port the request was addressed to (the service port).
    pub destination_port: u16,
    /// The `:authority`/`Host`, as sent (a port is allowed; see [`HostMatch`]).
    pub host: &'a str,
    pub method: &'a str,
    /// The path as sent; the query string is not matched.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub sni: Option<&'a str>,
    pub auth: Option<RequestAuth<'a>>,
}

impl<'a> Request<'a> {
    /// A request with every attribute empty (unspecified addresses, port 0, no identity, no token).
    pub fn new(headers: &'a HeaderMap) -> Self {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        Request {
            gateway: ("", ""),
            gateway_class: "",
            service: None,
            source_principal: None,
            source_namespace: None,
            source_ip: any,
            remote_ip: any,
            destination_ip: any,
            destination_port: 0,
            host: "",
            method: "",
            path: "",
            headers,
            sni: None,
            auth: None,
        }
    }

    fn at(&self) -> At<'a> {
        At {
            gateway: self.gateway,
            gateway_class: self.gateway_class,
            service: self.service,
            port: self.destination_port,
        }
    }

    /// The peer principal without `spiffe://`, as Istio's policies write it.
    pub fn principal(&self) -> Option<&'a str> {
        self.source_principal
            .map(|p| p.strip_prefix("spiffe://").unwrap_or(p))
    }

    /// The source namespace: given, or the principal's `ns` segment.
    pub fn namespace(&self) -> Option<&'a str> {
        self.source_namespace
            .or_else(|| self.service_account().map(|(ns, _)| ns))
    }

    /// `(namespace, service account)` from the principal `td/ns/<ns>/sa/<sa>`.
    pub fn service_account(&self) -> Option<(&'a str, &'a str)> {
        let p = self.principal()?;
        let (_, rest) = p.split_once("/ns/")?;
        let (ns, sa) = rest.split_once("/sa/")?;
        (!ns.is_empty() && !sa.is_empty() && !sa.contains('/')).then_some((ns, sa))
    }
}

/// A policy named in a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyRef<'p> {
    pub name: &'p str,
    pub action: Action,
}

impl<'p> PolicyRef<'p> {
    fn of(p: &'p Policy) -> Self {
        PolicyRef {
            name: &p.name,
            action: p.action,
        }
    }
}

/// Why the request was allowed or denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No enforced ALLOW policy applies (and no DENY matched).
    NoAllowPolicies,
    /// `by` is the ALLOW policy that matched.
    AllowMatched,
    /// `by` is the DENY policy that matched.
    DenyMatched,
    /// ALLOW policies apply, none matched.
    NoAllowMatched,
}

/// A CUSTOM policy matched: the waypoint must ask `provider` first; its denial wins over `allowed`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomCheck<'p> {
    pub policy: PolicyRef<'p>,
    pub rule: usize,
    pub provider: &'p ExtAuthzProvider,
}

/// The outcome of the DENY/ALLOW policies for one request, plus what CUSTOM, AUDIT and dry-run policies said.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision<'p> {
    pub allowed: bool,
    pub reason: Reason,
    /// The deciding policy and its first matching rule (none for `NoAllowPolicies` and `NoAllowMatched`).
    pub by: Option<PolicyRef<'p>>,
    pub rule: Option<usize>,
    /// The first enforced CUSTOM policy that matched (Istio allows one provider per workload).
    pub custom: Option<CustomCheck<'p>>,
    /// Every enforced AUDIT policy that matched.
    pub audited: Vec<PolicyRef<'p>>,
    /// Whether the dry-run policies alone would deny the request (Envoy's shadow rules: a dry-run DENY
    /// matched, or dry-run ALLOW policies apply and none matched), and the dry-run DENY that would.
    pub dry_run_would_deny: bool,
    pub dry_run_by: Option<PolicyRef<'p>>,
}

impl Decision<'_> {
    /// The response body Istio's waypoint (Envoy RBAC) sends with a 403.
    pub const DENIED_BODY: &'static str = "RBAC: access denied";
}

/// Policies grouped by action, for one target.
#[derive(Debug, Default)]
struct Bucket {
    custom: Vec<Entry>,
    deny: Vec<Entry>,
    allow: Vec<Entry>,
    audit: Vec<Entry>,
    dry_deny: Vec<Entry>,
    dry_allow: Vec<Entry>,
    /// Dry-run CUSTOM and AUDIT: only shown by `explain`.
    dry_other: Vec<Entry>,
}

/// A policy index and the port its target is restricted to (0: every port).
#[derive(Clone, Copy, Debug)]
struct Entry {
    policy: u32,
    port: u16,
}

/// Which list of a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum List {
    Custom,
    Deny,
    Allow,
    Audit,
    DryDeny,
    DryAllow,
    DryOther,
}

impl Bucket {
    fn list(&self, l: List) -> &[Entry] {
        match l {
            List::Custom => &self.custom,
            List::Deny => &self.deny,
            List::Allow => &self.allow,
            List::Audit => &self.audit,
            List::DryDeny => &self.dry_deny,
            List::DryAllow => &self.dry_allow,
            List::DryOther => &self.dry_other,
        }
    }

    fn list_mut(&mut self, p: &Policy) -> &mut Vec<Entry> {
        match (p.action, p.dry_run) {
            (Action::Custom, false) => &mut self.custom,
            (Action::Deny, false) => &mut self.deny,
            (Action::Allow, false) => &mut self.allow,
            (Action::Audit, false) => &mut self.audit,
            (Action::Deny, true) => &mut self.dry_deny,
            (Action::Allow, true) => &mut self.dry_allow,
            (Action::Custom | Action::Audit, true) => &mut self.dry_other,
        }
    }
}

/// The waypoint's policies, indexed by target and action so that a request only visits the policies that
/// target its waypoint, its waypoint's class, or its service.
#[derive(Debug, Default)]
pub struct PolicySet {
    policies: Vec<Policy>,
    classes: HashMap<String, Bucket>,
    /// Gateway namespace → name → bucket (nested so lookups borrow `&str`).
    gateways: HashMap<String, HashMap<String, Bucket>>,
    services: HashMap<String, Bucket>,
}

impl PolicySet {
    /// Indexes `policies`; within a target they are visited in name order, so decisions are deterministic.
    pub fn new(mut policies: Vec<Policy>) -> Self {
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        let mut set = PolicySet::default();
        for (i, p) in policies.iter().enumerate() {
            let Ok(policy) = u32::try_from(i) else { break };
            for t in &p.targets {
                let bucket = match t {
                    Target::GatewayClass { name, .. } => {
                        set.classes.entry(name.clone()).or_default()
                    }
                    Target::Gateway {
                        namespace, name, ..
                    } => set
                        .gateways
                        .entry(namespace.clone())
                        .or_default()
                        .entry(name.clone())
                        .or_default(),
                    Target::Service { hostname, .. } => {
                        set.services.entry(hostname.clone()).or_default()
                    }
                };
                bucket.list_mut(p).push(Entry {
                    policy,
                    port: t.port(),
                });
            }
        }
        set.policies = policies;
        set
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// Every policy of one list that applies at `at`, each once: class first, then gateway, then service.
    fn applicable<'s>(&'s self, at: At<'_>, list: List) -> impl Iterator<Item = &'s Policy> {
        let buckets = [
            self.classes.get(at.gateway_class),
            self.gateways
                .get(at.gateway.0)
                .and_then(|m| m.get(at.gateway.1)),
            at.service.and_then(|s| self.services.get(s)),
        ];
        buckets
            .into_iter()
            .enumerate()
            .flat_map(move |(level, b)| {
                b.map(|b| b.list(list))
                    .unwrap_or(&[])
                    .iter()
                    .map(move |e| (level, e))
            })
            .filter(move |(_, e)| e.port == 0 || e.port == at.port)
            .filter_map(|(level, e)| {
                let idx = usize::try_from(e.policy).ok()?;
                Some((level, self.policies.get(idx)?))
            })
            // A policy that targets several of the request's buckets is visited at the first only.
            .filter(move |(level, p)| !p.targets.iter().any(|t| at.earlier(t, *level)))
            .map(|(_, p)| p)
    }

    /// Every policy (any action, dry-run included) that targets requests to `service` through the waypoint
    /// `gateway` (namespace, name) of `gateway_class` on `port`, each once.
    pub fn for_request<'s, 'a>(
        &'s self,
        gateway: (&'a str, &'a str),
        gateway_class: &'a str,
        service: Option<&'a str>,
        port: u16,
    ) -> impl Iterator<Item = &'s Policy> + use<'s, 'a> {
        let at = At {
            gateway,
            gateway_class,
            service,
            port,
        };
        ALL_LISTS
            .into_iter()
            .flat_map(move |l| self.applicable(at, l))
    }

    /// Authorizes `req`. Allocation-free unless an AUDIT policy matches or a claim that is not a string (or a
    /// repeated header) is compared.
    pub fn evaluate<'p>(&'p self, req: &Request<'_>) -> Decision<'p> {
        self.decide(req, |p| p.first_match(req))
    }

    /// [`PolicySet::evaluate`]'s decision together with every applicable policy and, for each rule, whether it
    /// matched and, if not, the first field that failed and why.
    pub fn explain<'p>(&'p self, req: &Request<'_>) -> Explanation<'p> {
        let policies: Vec<PolicyExplanation<'p>> = ALL_LISTS
            .into_iter()
            .flat_map(|l| self.applicable(req.at(), l))
            .map(|p| PolicyExplanation::of(p, req))
            .collect();
        let decision = self.decide(req, |p| {
            policies
                .iter()
                .find(|e| std::ptr::eq(e.policy, p))
                .and_then(|e| e.matched_rule)
        });
        Explanation { decision, policies }
    }

    /// The evaluation order, given how to match one policy (its first matching rule).
    fn decide<'p>(
        &'p self,
        req: &Request<'_>,
        mut first_match: impl FnMut(&'p Policy) -> Option<usize>,
    ) -> Decision<'p> {
        let mut d = Decision {
            allowed: true,
            reason: Reason::NoAllowPolicies,
            by: None,
            rule: None,
            custom: None,
            audited: Vec::new(),
            dry_run_would_deny: false,
            dry_run_by: None,
        };
        for p in self.applicable(req.at(), List::Custom) {
            if let (Some(rule), Some(provider)) = (first_match(p), p.provider.as_ref()) {
                d.custom = Some(CustomCheck {
                    policy: PolicyRef::of(p),
                    rule,
                    provider,
                });
                break;
            }
        }
        let deny = self
            .applicable(req.at(), List::Deny)
            .find_map(|p| first_match(p).map(|r| (p, r)));
        if let Some((p, rule)) = deny {
            d.allowed = false;
            d.reason = Reason::DenyMatched;
            d.by = Some(PolicyRef::of(p));
            d.rule = Some(rule);
        } else {
            let mut allows = self.applicable(req.at(), List::Allow).peekable();
            if allows.peek().is_some() {
                match allows.find_map(|p| first_match(p).map(|r| (p, r))) {
                    Some((p, rule)) => {
                        d.reason = Reason::AllowMatched;
                        d.by = Some(PolicyRef::of(p));
                        d.rule = Some(rule);
                    }
                    None => {
                        d.allowed = false;
                        d.reason = Reason::NoAllowMatched;
                    }
                }
            }
        }
        for p in self.applicable(req.at(), List::Audit) {
            if first_match(p).is_some() {
                d.audited.push(PolicyRef::of(p));
            }
        }
        if let Some(p) = self
            .applicable(req.at(), List::DryDeny)
            .find(|p| first_match(p).is_some())
        {
            d.dry_run_would_deny = true;
            d.dry_run_by = Some(PolicyRef::of(p));
        } else {
            let mut allows = self.applicable(req.at(), List::DryAllow).peekable();
            if allows.peek().is_some() && !allows.any(|p| first_match(p).is_some()) {
                d.dry_run_would_deny = true;
            }
        }
        d
    }
}

const ALL_LISTS: [List; 7] = [
    List::Custom,
    List::Deny,
    List::Allow,
    List::Audit,
    List::DryDeny,
    List::DryAllow,
    List::DryOther,
];

/// Where a request is: the attributes that select policies.
#[derive(Clone, Copy, Debug)]
struct At<'a> {
    gateway: (&'a str, &'a str),
    gateway_class: &'a str,
    service: Option<&'a str>,
    port: u16,
}

impl At<'_> {
    /// Whether target `t` applies here at a bucket before `level` (0 class, 1 gateway, 2 service).
    fn earlier(&self, t: &Target, level: usize) -> bool {
        let here = match t {
            Target::GatewayClass { name, .. } => level > 0 && name == self.gateway_class,
            Target::Gateway {
                namespace, name, ..
            } => level > 1 && namespace == self.gateway.0 && name == self.gateway.1,
            Target::Service { .. } => false,
        };
        here && (t.port() == 0 || t.port() == self.port)
    }
}

impl Policy {
    /// The index of the first rule that matches `req` (none: the policy does not match).
    pub fn first_match(&self, req: &Request<'_>) -> Option<usize> {
        self.rules
            .iter()
            .position(|r| r.matches(req, &mut matching::Quiet))
    }
}
