//! The sections of `ambit ztunnel-config`: which entries each shows (filters, order) and istioctl's summary table
//! of each (`-o short`). The same selection feeds `-o json|yaml`, so a filter means the same in every format.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use time::OffsetDateTime;

use super::certs;
use super::model::{Connection, Dump, Policy, Service, Workload, WorkloadState};
use super::table::Table;
use super::waypoint::{self, Resolver};

/// A table and the warnings that go with it (printed on stderr).
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub text: String,
    pub warnings: Vec<String>,
}

/// `--address`, `--workload-namespace`, `--workload-node`, and the pod argument's name. Case-insensitive, as
/// istioctl.
#[derive(Debug, Clone, Default)]
pub struct WorkloadFilter {
    pub address: Option<String>,
    pub node: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl WorkloadFilter {
    pub fn matches(&self, w: &Workload) -> bool {
        let eq = |want: &Option<String>, have: &str| {
            want.as_ref().is_none_or(|v| v.eq_ignore_ascii_case(have))
        };
        eq(&self.name, &w.name)
            && eq(&self.namespace, &w.namespace)
            && eq(&self.node, &w.node)
            && self
                .address
                .as_ref()
                .is_none_or(|a| w.workload_ips.iter().any(|ip| same_ip(a, ip)))
    }
}

/// Equal as IP addresses (`fd00::1` is `fd00:0::1`), else as strings.
fn same_ip(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.eq_ignore_ascii_case(b),
    }
}

/// `--service-namespace` / `--policy-namespace`.
#[derive(Debug, Clone, Default)]
pub struct NamespaceFilter {
    pub namespace: Option<String>,
}

impl NamespaceFilter {
    fn matches(&self, ns: &str) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|want| want.eq_ignore_ascii_case(ns))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    Inbound,
    Outbound,
}

/// `--workload-namespace`, `--direction`, `--raw`, and the pod argument's name.
#[derive(Debug, Clone, Default)]
pub struct ConnectionsFilter {
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub direction: Option<Direction>,
    /// Addresses as they are, not the names of the services and workloads they belong to.
    pub raw: bool,
}

impl ConnectionsFilter {
    fn matches(&self, s: &WorkloadState) -> bool {
        // istioctl compares the namespace exactly and the name without case.
        self.namespace
            .as_ref()
            .is_none_or(|ns| *ns == s.info.namespace)
            && self
                .workload
                .as_ref()
                .is_none_or(|w| w.eq_ignore_ascii_case(&s.info.name))
    }
}

/// Workloads by namespace and name, then node.
pub fn workloads<'a>(d: &'a Dump, f: &WorkloadFilter) -> Vec<&'a Workload> {
    let mut ws: Vec<&Workload> = d.workloads.iter().filter(|w| f.matches(w)).collect();
    ws.sort_by(|a, b| {
        (format!("{}.{}", a.namespace, a.name), &a.node, &a.uid).cmp(&(
            format!("{}.{}", b.namespace, b.name),
            &b.node,
            &b.uid,
        ))
    });
    ws
}

/// Services by namespace, name, hostname.
pub fn services<'a>(d: &'a Dump, f: &NamespaceFilter) -> Vec<&'a Service> {
    let mut ss: Vec<&Service> = d
        .services
        .iter()
        .filter(|s| f.matches(&s.namespace))
        .collect();
    ss.sort_by(|a, b| {
        (&a.namespace, &a.name, &a.hostname).cmp(&(&b.namespace, &b.name, &b.hostname))
    });
    ss
}

/// Policies by namespace and name.
pub fn policies<'a>(d: &'a Dump, f: &NamespaceFilter) -> Vec<&'a Policy> {
    let mut ps: Vec<&Policy> = d
        .policies
        .iter()
        .filter(|p| f.matches(&p.namespace))
        .collect();
    ps.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    ps
}

/// Proxied pods by namespace and name.
pub fn workload_states<'a>(d: &'a Dump, f: &ConnectionsFilter) -> Vec<&'a WorkloadState> {
    let mut ss: Vec<&WorkloadState> = d.workload_state.iter().filter(|s| f.matches(s)).collect();
    ss.sort_by(|a, b| {
        (&a.info.namespace, &a.info.name, &a.uid).cmp(&(&b.info.namespace, &b.info.name, &b.uid))
    });
    ss
}

/// `NAMESPACE POD NAME ADDRESS NODE WAYPOINT PROTOCOL`.
pub fn workload_table(d: &Dump, f: &WorkloadFilter) -> Summary {
    let r = Resolver::new(d);
    let mut t = Table::new(&[
        "NAMESPACE",
        "POD NAME",
        "ADDRESS",
        "NODE",
        "WAYPOINT",
        "PROTOCOL",
    ]);
    let mut warnings = Vec::new();
    for w in workloads(d, f) {
        let uses = r.for_workload(w);
        warnings.extend(waypoint::warnings(
            &format!("workload {}/{}", w.namespace, w.name),
            &uses,
        ));
        let address = if w.workload_ips.is_empty() {
            w.hostname.clone()
        } else {
            w.workload_ips.join(",")
        };
        t.row(vec![
            w.namespace.clone(),
            w.name.clone(),
            address,
            w.node.clone(),
            waypoint::cell(&uses),
            w.protocol.clone(),
        ]);
    }
    Summary {
        text: t.render(),
        warnings,
    }
}

/// `NAMESPACE SERVICE NAME SERVICE VIP WAYPOINT ENDPOINTS`; ENDPOINTS is healthy/all.
pub fn service_table(d: &Dump, f: &NamespaceFilter) -> Summary {
    let r = Resolver::new(d);
    let mut t = Table::new(&[
        "NAMESPACE",
        "SERVICE NAME",
        "SERVICE VIP",
        "WAYPOINT",
        "ENDPOINTS",
    ]);
    let mut warnings = Vec::new();
    for s in services(d, f) {
        let uses = r.for_service(s);
        warnings.extend(waypoint::warnings(
            &format!("service {}/{}", s.namespace, s.name),
            &uses,
        ));
        let vips: Vec<&str> = s
            .vips
            .iter()
            .map(|v| v.split_once('/').map_or(v.as_str(), |(_, ip)| ip))
            .collect();
        t.row(vec![
            s.namespace.clone(),
            s.name.clone(),
            vips.join(","),
            waypoint::cell(&uses),
            format!("{}/{}", r.healthy_endpoints(s), s.endpoints.len()),
        ]);
    }
    Summary {
        text: t.render(),
        warnings,
    }
}

/// `NAMESPACE POLICY NAME ACTION SCOPE`.
pub fn policy_table(d: &Dump, f: &NamespaceFilter) -> Summary {
    let mut t = Table::new(&["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"]);
    for p in policies(d, f) {
        t.row(vec![
            p.namespace.clone(),
            p.name.clone(),
            p.action.clone(),
            p.scope.clone(),
        ]);
    }
    Summary {
        text: t.render(),
        warnings: Vec::new(),
    }
}

/// `CERTIFICATE NAME TYPE STATUS VALID CERT SERIAL NUMBER NOT AFTER NOT BEFORE`: a row per certificate of each
/// identity (Leaf, Intermediate…, then its roots), one `NA` row for an identity without certificates.
pub fn certificate_table(d: &Dump, now: OffsetDateTime) -> Summary {
    let mut t = Table::with_padding(
        &[
            "CERTIFICATE NAME",
            "TYPE",
            "STATUS",
            "VALID CERT",
            "SERIAL NUMBER",
            "NOT AFTER",
            "NOT BEFORE",
        ],
        5,
    );
    let na = |s: &str| if s.is_empty() { "NA" } else { s }.to_owned();
    for c in &d.certificates {
        let state = if c.state.contains("Unavailable") {
            "Unavailable".to_owned()
        } else {
            c.state.clone()
        };
        if c.cert_chain.is_empty() {
            t.row(vec![
                c.identity.clone(),
                "NA".into(),
                state,
                "false".into(),
                "NA".into(),
                "NA".into(),
                "NA".into(),
            ]);
            continue;
        }
        // Older dumps put the root at the end of the chain and had no `rootCerts`.
        let legacy = c.root_certs.is_empty();
        let last = c.cert_chain.len() - 1;
        let chain = c.cert_chain.iter().enumerate().map(|(i, cert)| {
            let kind = match i {
                0 => "Leaf",
                i if i == last && legacy => "Root",
                _ => "Intermediate",
            };
            (kind, cert)
        });
        for (kind, cert) in chain.chain(c.root_certs.iter().map(|cert| ("Root", cert))) {
            t.row(vec![
                c.identity.clone(),
                kind.into(),
                state.clone(),
                certs::valid_at(cert, now).to_string(),
                certs::serial_hex(cert).unwrap_or_else(|| "NA".into()),
                na(&cert.expiration_time),
                na(&cert.valid_from),
            ]);
        }
    }
    Summary {
        text: t.render(),
        warnings: Vec::new(),
    }
}

/// `WORKLOAD DIRECTION LOCAL REMOTE REMOTE TARGET PROTOCOL`: each proxied pod's inbound, then outbound
/// connections, addresses shown as the service (`<hostname>:<port>`) or workload (`<name>.<namespace>:<port>`)
/// they belong to unless `raw`.
pub fn connections_table(d: &Dump, f: &ConnectionsFilter) -> Summary {
    let names = AddressNames::new(d);
    let show = |addr: &str| {
        if f.raw {
            addr.to_owned()
        } else {
            names.name(addr)
        }
    };
    let mut t = Table::new(&[
        "WORKLOAD",
        "DIRECTION",
        "LOCAL",
        "REMOTE",
        "REMOTE TARGET",
        "PROTOCOL",
    ]);
    let states = workload_states(d, f);
    for s in &states {
        let Some(conns) = &s.connections else {
            continue;
        };
        let workload = format!("{}.{}", s.info.name, s.info.namespace);
        let row = |dir: &str, local: String, remote: String, target: String, c: &Connection| {
            vec![
                workload.clone(),
                dir.to_owned(),
                local,
                remote,
                target,
                c.protocol.clone(),
            ]
        };
        if f.direction != Some(Direction::Outbound) {
            for c in &conns.inbound {
                t.row(row(
                    "Inbound",
                    show(&c.actual_dst),
                    show(&c.src),
                    c.original_dst.clone(),
                    c,
                ));
            }
        }
        if f.direction != Some(Direction::Inbound) {
            for c in &conns.outbound {
                t.row(row(
                    "Outbound",
                    show(&c.src),
                    show(&c.actual_dst),
                    show(&c.original_dst),
                    c,
                ));
            }
        }
    }
    let mut warnings = Vec::new();
    if !states.is_empty() && !d.tracks_connections() {
        warnings.push(
            "this ztunnel does not report connections (no workloadState entry has \"connections\"): \
             the pods it proxies are listed by `-o json`"
                .to_owned(),
        );
    }
    Summary {
        text: t.render(),
        warnings,
    }
}

/// The `all` summary: every table after a blank line, each under a `------ <NAME> INFO ------` header when
/// `with_headers`.
pub fn all_tables(d: &Dump, with_headers: bool, now: OffsetDateTime) -> Summary {
    let sections = [
        (
            "WORKLOAD INFO",
            workload_table(d, &WorkloadFilter::default()),
        ),
        (
            "SERVICE INFO",
            service_table(d, &NamespaceFilter::default()),
        ),
        ("POLICY INFO", policy_table(d, &NamespaceFilter::default())),
        ("SECRET INFO", certificate_table(d, now)),
        (
            "CONNECTIONS INFO",
            connections_table(d, &ConnectionsFilter::default()),
        ),
    ];
    let mut out = Summary::default();
    for (header, s) in sections {
        out.text.push('\n');
        if with_headers {
            out.text.push_str(&format!("------ {header} ------\n\n"));
        }
        out.text.push_str(&s.text);
        out.warnings.extend(s.warnings);
    }
    out
}

/// Service and workload names by IP, as istioctl's connection summary names addresses: a service by the IP of its
/// first VIP, a workload by its first IP.
struct AddressNames {
    by_ip: HashMap<IpAddr, String>,
}

impl AddressNames {
    fn new(d: &Dump) -> Self {
        let mut services = HashMap::new();
        for s in &d.services {
            if let Some(ip) = s
                .vips
                .first()
                .and_then(|v| v.split_once('/'))
                .and_then(|(_, ip)| ip.parse::<IpAddr>().ok())
            {
                services.insert(ip, s.hostname.clone());
            }
        }
        let mut by_ip = HashMap::new();
        for w in &d.workloads {
            if let Some(ip) = w.workload_ips.first().and_then(|ip| ip.parse().ok()) {
                by_ip.insert(ip, format!("{}.{}", w.name, w.namespace));
            }
        }
        // A service's name wins over a workload's.
        by_ip.extend(services);
        AddressNames { by_ip }
    }

    /// `addr` (`<ip>:<port>`) with the IP replaced by its name, or as it is.
    fn name(&self, addr: &str) -> String {
        match addr.parse::<SocketAddr>() {
            Ok(sa) => match self.by_ip.get(&sa.ip()) {
                Some(name) => format!("{name}:{}", sa.port()),
                None => addr.to_owned(),
            },
            Err(_) => addr.to_owned(),
        }
    }
}
