//! `ambit authz check`: what would happen to one request, tier by tier, with the very code the proxies run
//! (`ambit_core::authz` as the waypoint, `ambit_core::rbac` as the destination ztunnel, `ambit_core::jwt` for
//! tokens), on the policies the controller computes for a manifest directory (`controller compute`) or for the
//! running local mesh (its `/debug/resources`).
//!
//! The tiers: the source ztunnel enforces nothing in ambient; the waypoint, when the destination is bound to one,
//! authenticates the token and applies the L7 policies; the destination ztunnel applies the L4 policies of each
//! destination workload to the peer it sees (the waypoint's identity when there is one).

mod mesh;
mod request;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use ambit_core::Identity;
use ambit_core::authz::{Policy, PolicySet, Request, RequestAuth};
use ambit_core::jwt::{
    Authenticator, HttpFetcher, JwksCache, JwtRule, KeySource, Outcome, apply_edits,
    rules_from_proto,
};
use ambit_core::rbac::{self, Connection};
use ambit_proto::waypoint as pb;
use clap::{Args, Subcommand, ValueEnum};
use http::HeaderValue;
use serde::Serialize;
use serde_json::Value;

pub use mesh::Mesh;
pub use request::{AuthInput, Dest, RequestSpec, Source, controller_bin};

/// Bad input (flags, files, resources): exit code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

#[derive(Args, Debug)]
pub struct AuthzArgs {
    #[command(subcommand)]
    pub command: AuthzCommand,
}

#[derive(Subcommand, Debug)]
pub enum AuthzCommand {
    /// Explain which tier allows or denies a request, and by which policy and rule. Exit code: 0 allowed, 1
    /// denied, 2 bad input.
    Check(CheckArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// A manifest directory (repeatable): its policies as `controller compute` converts them.
    #[arg(
        long = "manifests",
        required_unless_present = "local",
        conflicts_with = "local"
    )]
    pub manifests: Vec<PathBuf>,
    /// The running local mesh (`ambit local up`): the controller's `/debug/resources`. Needs root.
    #[arg(long)]
    pub local: bool,
    /// The client: `ns/serviceaccount` or `pod/ns/name`.
    #[arg(long)]
    pub from: String,
    /// The destination: `service[:port]` (a hostname or `name.namespace`) or `pod/ns/name:port`.
    #[arg(long)]
    pub to: String,
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// The path, with a query string if any.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// A request header `name=value` (repeatable). `host` defaults to `--to` as written, as curl sends it.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// A JWT, sent as `authorization: Bearer`, verified against the RequestAuthentications of the destination.
    #[arg(long, conflicts_with = "claims")]
    pub jwt: Option<String>,
    /// A JSON file of token claims, taken as verified (no signature check).
    #[arg(long)]
    pub claims: Option<PathBuf>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// The `controller` binary for `--manifests` (default: next to `ambit`, then on PATH).
    #[arg(long, env = "AMBIT_CONTROLLER_BIN")]
    pub controller_bin: Option<PathBuf>,
}

/// One tier's verdict.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tier {
    /// `sourceZtunnel`, `waypoint`, `destinationZtunnel`.
    pub tier: &'static str,
    /// Which proxy: the waypoint `ns/gateway`, the destination workload `ns/name`.
    pub proxy: String,
    pub enforced: bool,
    pub allowed: bool,
    /// One line: `DENY: ALLOW policies apply, none matched`.
    pub decision: String,
    /// The deciding policy and rule, if one decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    /// The peer identity this tier sees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The engine's explanation (`authz::Explanation` or `rbac::L4Explanation`).
    #[serde(skip_serializing_if = "Value::is_null")]
    pub explanation: Value,
    #[serde(skip)]
    pub text: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub request: Value,
    pub allowed: bool,
    pub tiers: Vec<Tier>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

pub fn run(args: AuthzArgs) -> i32 {
    let AuthzCommand::Check(args) = args.command;
    match check_command(&args) {
        Ok(report) => {
            match args.output {
                Output::Json => match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return 2;
                    }
                },
                Output::Text => print!("{}", render_text(&report)),
            }
            if report.allowed { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

fn check_command(args: &CheckArgs) -> Result<Report, InputError> {
    let spec = RequestSpec::from_args(args)?;
    let resources = if args.local {
        request::fetch_local()?
    } else {
        request::compute_manifests(&args.manifests, args.controller_bin.as_deref())?
    };
    let mesh = Mesh::from_resources(&resources)?;
    check(&mesh, &spec, SystemTime::now())
}

const UNSPECIFIED: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// Evaluates `spec` against `mesh` at every tier.
pub fn check(mesh: &Mesh, spec: &RequestSpec, now: SystemTime) -> Result<Report, InputError> {
    let r = request::resolve(mesh, spec)?;
    let mut notes = Vec::new();
    if mesh.placeholders {
        notes.push(
            "addresses are placeholders from `controller compute` (one pod per Deployment): no pod is running"
                .to_owned(),
        );
    }
    let mut tiers = vec![Tier {
        tier: "sourceZtunnel",
        proxy: r.source_name.clone(),
        enforced: false,
        allowed: true,
        decision: "nothing enforced (in ambient, ztunnels enforce policy at the destination only)"
            .into(),
        policy: None,
        rule: None,
        peer: None,
        notes: Vec::new(),
        explanation: Value::Null,
        text: String::new(),
    }];
    let mut peer = (r.source_identity.clone(), r.source_ip);
    if let Some((ns, host)) = &r.waypoint {
        let wp = mesh.waypoint(ns, host);
        tiers.push(waypoint_tier(mesh, spec, &r, &wp, now));
        let td = r.trust_domain.as_str();
        peer = (
            wp.identity(td),
            wp.pod
                .as_ref()
                .and_then(|p| p.ips.first().copied())
                .unwrap_or(UNSPECIFIED),
        );
    }
    if r.endpoints.is_empty() {
        notes.push("no destination workload in the resources: the destination ztunnel's policies are not shown".into());
    }
    for (w, port) in &r.endpoints {
        tiers.push(destination_tier(mesh, w, *port, &peer));
    }
    let allowed = tiers.iter().all(|t| t.allowed);
    let request = serde_json::json!({
        "from": r.source_identity, "sourceIp": r.source_ip.to_string(), "to": r.dest_name,
        "port": r.port, "method": spec.method, "path": spec.path,
    });
    Ok(Report {
        request,
        allowed,
        tiers,
        notes,
    })
}

/// Whether a RequestAuthentication's target applies to a request for `service:port` at its waypoint.
fn targets(p: &pb::RequestAuthentication, service: Option<&str>, port: u16) -> bool {
    use pb::policy_target::Kind;
    p.targets.iter().any(|t| match Kind::try_from(t.kind) {
        Ok(Kind::Gateway | Kind::GatewayClass) => true,
        Ok(Kind::Service) => {
            service == Some(t.name.as_str()) && (t.port == 0 || t.port == u32::from(port))
        }
        _ => false,
    })
}

/// How long `authz check` waits for each `jwksUri` to load.
const JWKS_WAIT: Duration = Duration::from_secs(6);

/// An authenticator for `rules`: inline keys as they are, `jwksUri` keys fetched once (http, https against the
/// system's roots, file) with the waypoint's own cache and fetcher, so a token verifies here exactly when it does
/// there, given the same keys. The notes say which URIs could not be loaded (the waypoint may reach URIs this host
/// cannot, e.g. in-cluster names: then use `--claims`).
fn authenticator_for(rules: &[JwtRule]) -> (Authenticator, Vec<String>) {
    let uris: Vec<&str> = rules
        .iter()
        .filter_map(|r| match &r.keys {
            KeySource::Uri { uri, .. } => Some(uri.as_str()),
            _ => None,
        })
        .collect();
    if uris.is_empty() {
        return (Authenticator::inline_only(), Vec::new());
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return (
                Authenticator::inline_only(),
                vec![format!(
                    "jwksUri keys not fetched (no runtime: {e}): use --claims"
                )],
            );
        }
    };
    let cache = JwksCache::new(std::sync::Arc::new(HttpFetcher::with_system_roots()));
    cache.sync(rules, runtime.handle());
    let mut notes = Vec::new();
    for uri in uris {
        let Some(mut rx) = cache.subscribe(uri) else {
            continue;
        };
        let state = runtime.block_on(async {
            let _ = tokio::time::timeout(JWKS_WAIT, rx.wait_for(|s| s.attempts > 0)).await;
            rx.borrow().clone()
        });
        match (state.keys, state.last_error) {
            (Some(_), _) => notes.push(format!("jwksUri {uri}: keys loaded")),
            (None, Some(e)) => notes.push(format!(
                "jwksUri {uri} could not be loaded here ({e}): tokens for it are rejected; use --claims"
            )),
            (None, None) => notes.push(format!(
                "jwksUri {uri}: no answer within {JWKS_WAIT:?}: tokens for it are rejected; use --claims"
            )),
        }
    }
    // The keys stay in the cache; its refresh tasks stop with the runtime.
    (Authenticator::new(cache), notes)
}

fn waypoint_tier(
    mesh: &Mesh,
    spec: &RequestSpec,
    r: &request::Resolved,
    wp: &mesh::Waypoint,
    now: SystemTime,
) -> Tier {
    let mut tier = Tier {
        tier: "waypoint",
        proxy: wp.key(),
        enforced: true,
        allowed: true,
        decision: String::new(),
        policy: None,
        rule: None,
        peer: Some(r.source_identity.clone()),
        notes: Vec::new(),
        explanation: Value::Null,
        text: String::new(),
    };
    let mut headers = r.headers.clone();
    // Authentication: the RequestAuthentications this waypoint has for the service.
    let mut rules: Vec<JwtRule> = Vec::new();
    for name in mesh
        .request_authn_scopes
        .get(&wp.key())
        .into_iter()
        .flatten()
    {
        let Some(p) = mesh.request_authns.get(name) else {
            continue;
        };
        if !targets(p, r.service.as_deref(), r.port) {
            continue;
        }
        match rules_from_proto(p) {
            Ok(mut rs) => rules.append(&mut rs),
            Err(e) => tier.notes.push(format!(
                "RequestAuthentication {name} is rejected by the waypoint: {e}"
            )),
        }
    }
    let mut claims: Option<Value> = None;
    match &spec.auth {
        AuthInput::None => {}
        AuthInput::Claims(c) => {
            tier.notes.push(
                "--claims: the token is taken as verified (no signature, time or issuer check)"
                    .into(),
            );
            claims = Some(c.clone());
        }
        AuthInput::Token(t) => {
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                headers.insert(http::header::AUTHORIZATION, v);
            }
            if rules.is_empty() {
                tier.notes.push(
                    "no RequestAuthentication applies here: the token is not verified and gives no request principal"
                        .into(),
                );
            } else {
                let refs: Vec<&JwtRule> = rules.iter().collect();
                let query = spec.path.split_once('?').map(|(_, q)| q);
                let (authenticator, fetch_notes) = authenticator_for(&rules);
                tier.notes.extend(fetch_notes);
                match authenticator.authenticate(&refs, &headers, query, now) {
                    Outcome::NoToken => tier.notes.push(
                        "the RequestAuthentications here read tokens elsewhere: no token found"
                            .into(),
                    ),
                    Outcome::Authenticated(a) => {
                        apply_edits(&a.edits, &mut headers);
                        tier.notes.push(format!(
                            "token verified: issuer {}, principal {}",
                            a.jwt.issuer,
                            a.jwt.principal.as_deref().unwrap_or("(none: no sub)")
                        ));
                        claims = Some(a.jwt.claims);
                    }
                    Outcome::Rejected(e) => {
                        tier.allowed = false;
                        tier.decision = format!(
                            "DENY: {} {} (RequestAuthentication)",
                            e.status().as_u16(),
                            e
                        );
                        tier.text = format!("decision: {}\n", tier.decision);
                        return tier;
                    }
                }
            }
        }
    }
    // Authorization: the waypoint's policies, as it indexes and evaluates them.
    let mut policies = Vec::new();
    for name in mesh
        .waypoint_policy_scopes
        .get(&wp.key())
        .into_iter()
        .flatten()
    {
        let Some(p) = mesh.waypoint_policies.get(name) else {
            continue;
        };
        match Policy::from_proto(p) {
            Ok(p) => policies.push(p),
            Err(e) => tier.notes.push(format!(
                "AuthorizationPolicy {name} is rejected by the waypoint: {e}"
            )),
        }
    }
    let set = PolicySet::new(policies);
    let principal = claims.as_ref().and_then(RequestAuth::principal_of);
    let remote_ip = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(r.source_ip);
    let req = Request {
        gateway: (wp.namespace.as_str(), wp.gateway.as_str()),
        gateway_class: &wp.class,
        service: r.service.as_deref(),
        source_principal: Some(&r.source_identity),
        source_namespace: None,
        source_ip: r.source_ip,
        remote_ip,
        destination_ip: r.dest_ip,
        destination_port: r.port,
        host: &r.host,
        method: &spec.method,
        path: &spec.path,
        headers: &headers,
        sni: None,
        auth: match (&principal, &claims) {
            (Some(p), Some(c)) => Some(RequestAuth {
                principal: p,
                claims: c,
            }),
            _ => None,
        },
    };
    let e = set.explain(&req);
    tier.allowed = e.decision.allowed;
    tier.decision = e.decision.to_string();
    tier.policy = e.decision.by.map(|b| b.name.to_owned());
    tier.rule = e.decision.rule;
    if let Some(c) = &e.decision.custom {
        tier.notes.push(format!(
            "CUSTOM {} matched: the waypoint asks ext_authz provider {:?} first; its answer is not predicted here",
            c.policy.name, c.provider.name
        ));
    }
    tier.explanation = serde_json::to_value(&e).unwrap_or(Value::Null);
    tier.text = e.to_string();
    tier
}

fn destination_tier(mesh: &Mesh, w: &mesh::Workload, port: u16, peer: &(String, IpAddr)) -> Tier {
    let (policies, unknown) = mesh.l4_policies_for(w);
    let conn = Connection {
        src: SocketAddr::new(peer.1, 0),
        src_identity: peer.0.parse::<Identity>().ok(),
        dst: SocketAddr::new(w.ips.first().copied().unwrap_or(UNSPECIFIED), port),
    };
    let e = rbac::explain(&policies, &conn);
    let mut notes: Vec<String> = unknown
        .iter()
        .map(|n| format!("the workload names unknown policy {n}; skipped"))
        .collect();
    if conn.src_identity.is_none() {
        notes.push(format!(
            "{} is not a SPIFFE identity: the connection is plaintext",
            peer.0
        ));
    }
    match e.by.as_deref().and_then(|p| p.split_once('/')) {
        Some((_, name)) if !e.allowed && name.starts_with("ambit_waypoint_required_") => {
            notes.push(
                "the pod is bound to a waypoint with `ambit.dev/waypoint-required`: only the waypoint may call it; \
                 call its Service to go through the waypoint (or check that the waypoint is ready)"
                    .into(),
            )
        }
        _ => {}
    }
    let text = e.to_string();
    let decision = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("decision: ")
        .to_owned();
    Tier {
        tier: "destinationZtunnel",
        proxy: format!("{}/{} ({})", w.namespace, w.name, conn.dst),
        enforced: true,
        allowed: e.allowed,
        decision,
        policy: e.by.clone(),
        rule: e.rule,
        peer: Some(peer.0.clone()),
        notes,
        explanation: serde_json::to_value(&e).unwrap_or(Value::Null),
        text,
    }
}

/// The human form: one block per tier, the engine's explanation indented under it.
pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    let q = &r.request;
    let _ = writeln!(
        out,
        "request: {} {} from {} ({}) to {} port {}",
        q["method"].as_str().unwrap_or_default(),
        q["path"].as_str().unwrap_or_default(),
        q["from"].as_str().unwrap_or_default(),
        q["sourceIp"].as_str().unwrap_or_default(),
        q["to"].as_str().unwrap_or_default(),
        q["port"],
    );
    for t in &r.tiers {
        let name = match t.tier {
            "sourceZtunnel" => "source ztunnel",
            "waypoint" => "waypoint",
            _ => "destination ztunnel",
        };
        let _ = writeln!(out, "\n{name} {}: {}", t.proxy, t.decision);
        if let Some(p) = &t.peer {
            let _ = writeln!(out, "  peer: {p}");
        }
        for n in &t.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        for line in t.text.lines().skip(1) {
            let _ = writeln!(out, "  {line}");
        }
    }
    for n in &r.notes {
        let _ = writeln!(out, "\nnote: {n}");
    }
    let _ = writeln!(
        out,
        "\nresult: {}",
        if r.allowed { "ALLOWED" } else { "DENIED" }
    );
    out
}
