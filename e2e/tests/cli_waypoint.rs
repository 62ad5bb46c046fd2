//! The istioctl-like CLI against a running `ambit local` (issue 13's end-to-end checks): `ambit waypoint apply
//! --enroll-namespace --wait` on a mesh without a waypoint, traffic then through it, `waypoint list` and `status`,
//! `zc service` naming it, a per-service-account waypoint (`--service-account`) that `zc workload` shows on that
//! account's pods only, `proxy-status` listing both nodes' ztunnels and the waypoints in sync, and `analyze` on the
//! live mesh finding nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_e2e::e2e_test;
use ambit_e2e::local::{DEMO_APPS, Echo, LocalMesh, WAIT, run_on_mesh};
use ambit_e2e::topology::poll;
use anyhow::{Result, ensure};

const NS: &str = "demo";
const UP: Duration = Duration::from_secs(90);

fn manifests(dir: &Path) -> Result<PathBuf> {
    let m = dir.join("manifests");
    std::fs::create_dir_all(&m)?;
    std::fs::write(m.join("demo.yaml"), DEMO_APPS)?;
    Ok(m)
}

/// `ambit <args>`: (exit code, stdout, stderr).
fn cli(mesh: &LocalMesh, args: &[&str]) -> Result<(i32, String, String)> {
    let out = mesh.ambit_cli(args)?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// One request from the client to the server Service; whether it passed a waypoint (its `x-request-id`).
fn through_waypoint(mesh: &LocalMesh) -> Result<bool> {
    let body = mesh.curl(NS, "deploy/client", "http://server.demo/")?;
    Ok(Echo::parse_all(&body)
        .iter()
        .any(|e| e.headers.contains_key("x-request-id")))
}

fn scenario(mesh: &LocalMesh) -> Result<()> {
    mesh.one_pod(NS, "server", UP)?;
    mesh.one_pod(NS, "client", UP)?;
    ensure!(
        !through_waypoint(mesh)?,
        "a waypoint before one was applied"
    );

    let (code, out, err) = cli(
        mesh,
        &[
            "waypoint",
            "apply",
            "-n",
            NS,
            "--enroll-namespace",
            "--wait",
        ],
    )?;
    ensure!(code == 0, "waypoint apply: exit {code}\n{out}{err}");
    ensure!(
        out.contains("✅ waypoint demo/waypoint applied")
            && out.contains("labeled with \"istio.io/use-waypoint: waypoint\""),
        "waypoint apply said:\n{out}{err}"
    );
    poll("traffic through the applied waypoint", WAIT, || {
        Ok(through_waypoint(mesh)?.then_some(()))
    })?;

    let (code, out, err) = cli(mesh, &["waypoint", "list", "-n", NS])?;
    ensure!(
        code == 0
            && out
                .lines()
                .any(|l| l.starts_with("waypoint") && l.contains("True")),
        "waypoint list: exit {code}\n{out}{err}"
    );
    let (code, out, err) = cli(mesh, &["waypoint", "status", "-n", NS])?;
    ensure!(
        code == 0 && out.contains("Service demo/server"),
        "waypoint status does not name the bound Service: exit {code}\n{out}{err}"
    );
    let (code, out, err) = cli(mesh, &["zc", "service", "--service-namespace", NS])?;
    ensure!(
        code == 0
            && out.lines().any(|l| l.starts_with("demo ")
                && l.contains("server")
                && l.contains("demo/waypoint")),
        "zc service does not show the waypoint: exit {code}\n{out}{err}"
    );

    // A waypoint for the server's service account: pod-addressed traffic of those pods only.
    let (code, out, err) = cli(
        mesh,
        &[
            "waypoint",
            "apply",
            "-n",
            NS,
            "--service-account",
            "server",
            "--wait",
        ],
    )?;
    ensure!(
        code == 0,
        "waypoint apply --service-account: exit {code}\n{out}{err}"
    );
    let last = std::cell::RefCell::new(String::new());
    let rows = poll(
        "zc workload shows the service-account waypoint",
        WAIT,
        || {
            let (code, out, err) = cli(mesh, &["zc", "workload", "-n", NS])?;
            *last.borrow_mut() = format!("exit {code}\n{out}{err}");
            let server_rows: Vec<String> = out
                .lines()
                .filter(|l| l.contains(" server-") && !l.contains(" server-waypoint-"))
                .map(str::to_owned)
                .collect();
            let ok = code == 0
                && !server_rows.is_empty()
                && server_rows
                    .iter()
                    .all(|l| l.contains("demo/server-waypoint"));
            Ok(ok.then_some(out))
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}; last zc workload:\n{}", last.borrow()))?;
    ensure!(
        rows.lines()
            .filter(|l| l.contains(" client-"))
            .all(|l| !l.contains("server-waypoint")),
        "the client's pods got the server's waypoint:\n{rows}"
    );

    let text = poll(
        "proxy-status: two ztunnels and two waypoints in sync",
        WAIT,
        || {
            let (code, out, _) = cli(mesh, &["proxy-status"])?;
            let rows: Vec<&str> = out.lines().skip(1).collect();
            let ok = code == 0 && rows.len() == 4 && rows.iter().all(|r| r.ends_with("SYNCED"));
            Ok(ok.then_some(out))
        },
    )?;
    ensure!(
        text.lines().filter(|l| l.starts_with("ztunnel-")).count() == 2,
        "proxy-status:\n{text}"
    );

    let (code, out, err) = cli(mesh, &["analyze", "-A"])?;
    ensure!(
        code == 0 && err.contains("No validation issues found"),
        "analyze on the live mesh: exit {code}\n{out}{err}"
    );
    Ok(())
}

#[test]
fn cli_waypoint_zc_proxy_status_and_analyze_on_the_local_mesh() {
    e2e_test("local-cli-waypoint", |dir| {
        let manifests = manifests(dir.path())?;
        run_on_mesh(dir.path(), &manifests, 2, scenario, |_| String::new())
    });
}
