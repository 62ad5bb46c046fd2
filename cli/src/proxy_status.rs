//! `ambit proxy-status`: every ztunnel and waypoint connected to the controller, from its `/debug/connections`
//! (controller/src/xds.rs `ConnectionInfo`): istioctl's columns `NAME CLUSTER ISTIOD VERSION SUBSCRIBED TYPES`,
//! then Ambit's `STATUS` — `SYNCED` when every subscribed type ACKed the controller's current generation, `STALE`
//! with the types behind, or `NACK` with the type and the proxy's error. `-o json` prints the controller's view
//! as it is. The local mesh is the back end today (the controller's monitoring port on the mesh bridge); a
//! cluster's controller can be read the same way once the CLI talks to Kubernetes.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::local::{self, State, net::GATEWAY};
use crate::zc::table::Table;

/// The controller's monitoring port.
const MONITORING_PORT: u16 = 15014;

#[derive(clap::Args, Debug, Clone)]
pub struct ProxyStatusArgs {
    /// Only the proxy whose name (`<pod>.<namespace>`) starts with this.
    pub proxy: Option<String>,
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
    /// The local mesh's state directory.
    #[arg(long, env = "AMBIT_LOCAL_DIR", default_value = local::DEFAULT_DIR)]
    pub dir: PathBuf,
}

/// One connection as the controller reports it (unknown fields ignored, missing ones empty).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Connection {
    pub node_id: String,
    pub node_type: String,
    pub version: String,
    pub peer: String,
    pub generation: u64,
    pub waypoint: Option<String>,
    pub types: std::collections::BTreeMap<String, TypeStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TypeStatus {
    pub resources: usize,
    pub sent_nonce: String,
    pub sent_generation: u64,
    pub acked_nonce: String,
    pub acked_generation: u64,
    pub nacked_nonce: String,
    pub nack_error: String,
}

/// istioctl's short names for the types ztunnels and waypoints subscribe to.
fn short_type(type_url: &str) -> String {
    match type_url.rsplit('/').next().unwrap_or(type_url) {
        "istio.workload.Address" => "WDS".to_owned(),
        "istio.security.Authorization" => "WADS".to_owned(),
        other => other.rsplit('.').next().unwrap_or(other).to_owned(),
    }
}

/// `<pod>.<namespace>` from a node id `<type>~<ip>~<pod>.<namespace>~<domain>`, else the id.
fn proxy_name(node_id: &str) -> String {
    node_id.split('~').nth(2).unwrap_or(node_id).to_owned()
}

/// `SYNCED`, `STALE (<types>)` or `NACK <type>: <error>`.
pub fn sync_status(c: &Connection) -> String {
    let nacked: Vec<String> = c
        .types
        .iter()
        .filter(|(_, t)| !t.nacked_nonce.is_empty() && t.nacked_nonce == t.sent_nonce)
        .map(|(k, t)| format!("{}: {}", short_type(k), t.nack_error))
        .collect();
    if !nacked.is_empty() {
        return format!("NACK {}", nacked.join("; "));
    }
    let stale: Vec<String> = c
        .types
        .iter()
        .filter(|(_, t)| !t.sent_nonce.is_empty() && t.acked_nonce != t.sent_nonce)
        .map(|(k, _)| short_type(k))
        .collect();
    if stale.is_empty() {
        "SYNCED".to_owned()
    } else {
        format!("STALE ({})", stale.join(","))
    }
}

/// The table, sorted by proxy name.
pub fn render(conns: &[Connection], filter: Option<&str>) -> String {
    let mut rows: Vec<&Connection> = conns
        .iter()
        .filter(|c| !c.node_id.is_empty())
        .filter(|c| filter.is_none_or(|f| proxy_name(&c.node_id).starts_with(f)))
        .collect();
    rows.sort_by_key(|c| proxy_name(&c.node_id));
    let mut t = Table::new(&[
        "NAME",
        "CLUSTER",
        "ISTIOD",
        "VERSION",
        "SUBSCRIBED TYPES",
        "STATUS",
    ]);
    for c in rows {
        let mut types: Vec<String> = c.types.keys().map(|k| short_type(k)).collect();
        types.sort();
        t.row(vec![
            proxy_name(&c.node_id),
            "Kubernetes".to_owned(),
            "ambit-controller".to_owned(),
            if c.version.is_empty() {
                "unknown".to_owned()
            } else {
                c.version.clone()
            },
            format!("{} ({})", types.len(), types.join(",")),
            sync_status(c),
        ]);
    }
    t.render()
}

/// The controller's `/debug/connections` of the running local mesh.
fn fetch_local(dir: &std::path::Path) -> Result<Value> {
    State::load(dir).with_context(|| {
        format!(
            "no local mesh in {} (start one with `ambit local up -f <dir>`, or set --dir)",
            dir.display()
        )
    })?;
    let addr = SocketAddr::from((GATEWAY, MONITORING_PORT));
    let (status, body) = local::http::get_in(local::net::NET_NS, addr, "/debug/connections")
        .with_context(|| {
            format!("the controller at {addr} did not answer (is the local mesh running? this needs root)")
        })?;
    if status != 200 {
        bail!("the controller answered {status} for /debug/connections");
    }
    serde_json::from_slice(&body).context("the controller's /debug/connections is not JSON")
}

pub fn run(args: &ProxyStatusArgs) -> Result<i32> {
    let raw = fetch_local(&args.dir)?;
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&raw)?);
        return Ok(0);
    }
    let conns: Vec<Connection> =
        serde_json::from_value(raw).context("unexpected /debug/connections shape")?;
    let text = render(&conns, args.proxy.as_deref());
    if text.lines().count() <= 1 {
        match &args.proxy {
            Some(p) => bail!("no proxy named {p}* is connected to the controller"),
            None => bail!("no proxy is connected to the controller"),
        }
    }
    print!("{text}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: &str, types: &[(&str, &str, &str, &str)]) -> Connection {
        Connection {
            node_id: id.to_owned(),
            node_type: id.split('~').next().unwrap_or_default().to_owned(),
            types: types
                .iter()
                .map(|(t, sent, acked, nacked)| {
                    (
                        format!("type.googleapis.com/{t}"),
                        TypeStatus {
                            sent_nonce: (*sent).to_owned(),
                            acked_nonce: (*acked).to_owned(),
                            nacked_nonce: (*nacked).to_owned(),
                            nack_error: if nacked.is_empty() {
                                String::new()
                            } else {
                                "bad address".to_owned()
                            },
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn table_with_sync_states() {
        let conns = [
            conn(
                "ztunnel~10.0.0.1~ztunnel-node-1.istio-system~istio-system.svc.cluster.local",
                &[
                    ("istio.workload.Address", "1-4", "1-4", ""),
                    ("istio.security.Authorization", "1-2", "1-2", ""),
                ],
            ),
            conn(
                "router~10.0.1.5~waypoint-0.demo~demo.svc.cluster.local",
                &[
                    ("istio.workload.Address", "2-7", "2-6", ""),
                    ("ambit.waypoint.Route", "2-3", "2-3", ""),
                ],
            ),
            conn(
                "ztunnel~10.0.0.2~ztunnel-node-2.istio-system~istio-system.svc.cluster.local",
                &[("istio.workload.Address", "3-2", "3-1", "3-2")],
            ),
            Connection::default(),
        ];
        assert_eq!(
            render(&conns, None),
            "NAME                        CLUSTER    ISTIOD           VERSION SUBSCRIBED TYPES STATUS\n\
             waypoint-0.demo             Kubernetes ambit-controller unknown 2 (Route,WDS)    STALE (WDS)\n\
             ztunnel-node-1.istio-system Kubernetes ambit-controller unknown 2 (WADS,WDS)     SYNCED\n\
             ztunnel-node-2.istio-system Kubernetes ambit-controller unknown 1 (WDS)          NACK WDS: bad address\n"
        );
        assert_eq!(render(&conns, Some("waypoint")).lines().count(), 2);
    }

    #[test]
    fn the_controllers_json_parses() {
        let v = serde_json::json!([{
            "id": 1, "node_id": "ztunnel~1~z.istio-system~x", "peer": "10.0.0.1:1", "responses": 2, "acks": 2,
            "nacks": 0, "last_nack": null, "waypoint": null, "resources": {}, "node_type": "ztunnel",
            "version": "", "connected_at": 1, "generation": 3,
            "types": {"type.googleapis.com/istio.workload.Address": {"resources": 4, "sent_nonce": "1-2",
              "sent_generation": 3, "acked_nonce": "1-2", "acked_generation": 3, "nacked_nonce": "", "nack_error": ""}}
        }]);
        let conns: Vec<Connection> = serde_json::from_value(v).unwrap_or_default();
        assert_eq!(conns.len(), 1);
        assert_eq!(sync_status(&conns[0]), "SYNCED");
        assert_eq!(conns[0].types.values().next().map(|t| t.resources), Some(4));
    }
}
