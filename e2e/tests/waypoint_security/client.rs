//! The bookinfo security test's client side: curl from the sleep pod and what the replies must be, applying a
//! manifest to the running mesh, and the controller's policy statuses.

use std::collections::BTreeMap;

use ambit_e2e::local::{Echo, LocalMesh, NET_NS, WAIT, condition};
use ambit_e2e::topology::poll;
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use super::{CONTROLLER_STATUS, DENIED, NS, SLEEP};

/// One response as curl reported it, with the response headers the caller asked for.
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Reply {
    pub fn echo(&self) -> Result<Echo> {
        Echo::parse_all(&self.body)
            .pop()
            .with_context(|| format!("{} without an echo body: {}", self.code, self.body))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    pub fn denied(&self) -> bool {
        self.code == 403 && self.body.trim() == DENIED
    }
}

pub const MARK: &str = "##reply ";

/// `count` requests to `url` from `from` in one `curl` (one keep-alive connection), whatever their status;
/// `args` go before the URLs (`-X POST`, `-H ...`), `capture` names response headers to report.
pub fn curl(
    mesh: &LocalMesh,
    from: &str,
    args: &[&str],
    url: &str,
    count: usize,
    capture: &[&str],
) -> Result<Vec<Reply>> {
    let mut write_out = format!("\n{MARK}%{{http_code}}");
    for h in capture {
        write_out.push_str(&format!("\t%header{{{h}}}"));
    }
    write_out.push('\n');
    let mut argv = vec!["curl", "-sS", "--max-time", "10", "-w", &write_out];
    argv.extend_from_slice(args);
    argv.extend(std::iter::repeat_n(url, count));
    let out = mesh.exec(NS, from, &argv)?;
    ensure!(
        out.status.success(),
        "curl {args:?} {url} x{count} from {from}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let mut replies = Vec::new();
    let mut body = String::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(m) = line.strip_prefix(MARK) else {
            body.push_str(line);
            body.push('\n');
            continue;
        };
        let mut fields = m.split('\t');
        let code = fields.next().context("curl -w output")?.parse()?;
        let headers = capture
            .iter()
            .zip(fields)
            .map(|(h, v)| ((*h).to_owned(), v.to_owned()))
            .collect();
        replies.push(Reply {
            code,
            headers,
            body: std::mem::take(&mut body),
        });
    }
    ensure!(
        replies.len() == count,
        "{} replies for {count} requests",
        replies.len()
    );
    Ok(replies)
}

/// One request from the sleep pod.
pub fn one(mesh: &LocalMesh, args: &[&str], url: &str, capture: &[&str]) -> Result<Reply> {
    curl(mesh, SLEEP, args, url, 1, capture)?
        .pop()
        .context("no reply")
}

/// Every reply is a 200 from an `ambit echo` pod of `app` that came through the waypoint.
pub fn expect_served(replies: &[Reply], app: &str) -> Result<Vec<Echo>> {
    let mut echoes = Vec::new();
    for r in replies {
        ensure!(r.code == 200, "{app}: want 200, got {} {}", r.code, r.body);
        let e = r.echo()?;
        ensure!(
            e.pod.starts_with(&format!("{app}-")) && e.headers.contains_key("x-request-id"),
            "{app}: answered by {} or not through the waypoint: {e:?}",
            e.pod
        );
        echoes.push(e);
    }
    Ok(echoes)
}

pub fn expect_denied(replies: &[Reply], what: &str) -> Result<()> {
    for r in replies {
        ensure!(
            r.denied(),
            "{what}: want 403 {DENIED:?}, got {} {:?}",
            r.code,
            r.body
        );
    }
    Ok(())
}

/// Writes `text` into the running mesh's manifest directory as `file` (applied within a second).
pub fn apply(mesh: &LocalMesh, file: &str, text: &str) -> Result<()> {
    Ok(std::fs::write(mesh.manifests.join(file), text)?)
}

pub fn remove(mesh: &LocalMesh, file: &str) -> Result<()> {
    Ok(std::fs::remove_file(mesh.manifests.join(file))?)
}

/// The controller's computed status of `kind` objects in `ns`, by `<kind>/<ns>/<name>`.
pub fn controller_status(
    mesh: &LocalMesh,
    kind: &str,
    ns: &str,
) -> Result<serde_json::Map<String, Value>> {
    let text = mesh.get_in(
        NET_NS,
        &format!("{CONTROLLER_STATUS}?kind={kind}&namespace={ns}"),
    )?;
    match serde_json::from_str(&text)? {
        Value::Object(m) => Ok(m),
        other => bail!("{CONTROLLER_STATUS} for {kind}: {other}"),
    }
}

/// `<kind>/<ns>/<name>` has `WaypointAccepted=True`, reason `Accepted`, with `message`, and no
/// `ZtunnelAccepted` (a targetRefs policy is the waypoint's only).
pub fn expect_waypoint_accepted(
    mesh: &LocalMesh,
    kind: &str,
    ns: &str,
    name: &str,
    message: &str,
) -> Result<()> {
    let c = expect_waypoint_condition(mesh, &format!("{kind}/{ns}/{name}"), "Accepted")?;
    ensure!(c["message"] == message, "{kind}/{ns}/{name}: {c}");
    Ok(())
}

/// Waits for `WaypointAccepted=True` with `reason` on `<kind>/<ns>/<name>` (no `ZtunnelAccepted`); returns it.
pub fn expect_waypoint_condition(mesh: &LocalMesh, key: &str, reason: &str) -> Result<Value> {
    let mut parts = key.splitn(3, '/');
    let (kind, ns) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    poll(&format!("{key} WaypointAccepted {reason}"), WAIT, || {
        let status = controller_status(mesh, kind, ns)?;
        let obj = json!({ "status": status.get(key).cloned().unwrap_or_default() });
        let cond = obj["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "WaypointAccepted"))
            .cloned();
        let Some(c) = cond else {
            bail!("{key}: no WaypointAccepted: {}", obj["status"]);
        };
        ensure!(c["status"] == "True" && c["reason"] == reason, "{key}: {c}");
        ensure!(
            condition(&obj, "ZtunnelAccepted").is_none(),
            "{key} has ZtunnelAccepted: {}",
            obj["status"]
        );
        Ok(Some(c))
    })
}
