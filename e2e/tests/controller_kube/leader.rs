//! Two controller replicas against one API server, with a 3 s leader Lease: one holds the Lease and writes
//! status, the other serves and computes but writes nothing; SIGKILL of the leader hands the Lease (and the status
//! writes) to the standby after the lease expires, SIGTERM of a leader hands it over at once (it releases it).

use std::path::Path;

use nix::sys::signal::Signal;

use super::*;

const LEASE_SECONDS: u64 = 3;

const MESH: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: lead, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: lead}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: lead}
spec: {clusterIP: 10.96.30.1, ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-echo, namespace: lead}
spec:
  parentRefs: [{group: \"\", kind: Service, name: echo, port: 80}]
  rules: [{backendRefs: [{name: echo, port: 80}]}]
";

/// One replica: its process, monitoring address and Lease identity.
struct Replica {
    process: Process,
    monitoring: SocketAddr,
    identity: String,
}

impl Replica {
    fn start(cluster: &Cluster, name: &str) -> Result<Replica> {
        let lease = LEASE_SECONDS.to_string();
        let (process, monitoring) = cluster.spawn_controller(
            name,
            &["--leader-lease-seconds", &lease],
            // Status writes are logged at debug: the standby's log shows it wrote none.
            &[(
                "RUST_LOG",
                "info,kube=warn,ambit_controller::status_writer=debug",
            )],
        )?;
        let identity = poll("the replica's Lease identity", WAIT, || {
            Ok(logged_field(&process, "leader election", "identity"))
        })?;
        Ok(Replica {
            process,
            monitoring,
            identity,
        })
    }

    fn log(&self) -> String {
        plain(&self.process.output())
    }

    fn status_writes(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("status written"))
            .count()
    }
}

/// The value of `<field>=` on the first log line containing `message`.
fn logged_field(p: &Process, message: &str, field: &str) -> Option<String> {
    let needle = format!("{field}=");
    plain(&p.output())
        .lines()
        .filter(|l| l.contains(message))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(needle.as_str()))
                .map(str::to_owned)
        })
}

/// The Lease's `holderIdentity` (`None`: no Lease or no holder).
fn lease_holder(kc: &Path) -> Result<Option<String>> {
    let out = kubectl(
        kc,
        &[
            "get",
            "lease",
            "-n",
            "istio-system",
            "ambit-controller",
            "-o",
            "json",
        ],
        None,
    )?;
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

fn until_holder(kc: &Path, who: &Replica, within: Duration) -> Result<Duration> {
    let started = Instant::now();
    poll(
        &format!("{} to hold the Lease", who.identity),
        within,
        || Ok((lease_holder(kc)?.as_deref() == Some(who.identity.as_str())).then_some(())),
    )
    .with_context(|| format!("holder: {:?}", lease_holder(kc)))?;
    Ok(started.elapsed())
}

/// The route's written `ResolvedRefs` status, once it is `want`.
fn until_resolved_refs(kc: &Path, want: &str) -> Result<()> {
    let mut last = Value::Null;
    poll(
        &format!("the route's ResolvedRefs={want} written"),
        WAIT,
        || {
            let out = kubectl(
                kc,
                &["get", "httproute", "to-echo", "-n", "lead", "-o", "json"],
                None,
            )?;
            last = serde_json::from_str(&out)?;
            let conditions = last["status"]["parents"][0]["conditions"].as_array();
            Ok(conditions
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "ResolvedRefs" && c["status"] == want)
                .then_some(()))
        },
    )
    .with_context(|| format!("last route status: {}", last["status"]))
}

fn point_route_at(kc: &Path, backend: &str) -> Result<()> {
    let patch = format!(
        r#"[{{"op":"replace","path":"/spec/rules/0/backendRefs/0/name","value":"{backend}"}}]"#
    );
    kubectl(
        kc,
        &[
            "patch",
            "httproute",
            "to-echo",
            "-n",
            "lead",
            "--type=json",
            "-p",
            &patch,
        ],
        None,
    )?;
    Ok(())
}

fn leader_scenario(cluster: &Cluster, replicas: &mut Vec<Replica>) -> Result<()> {
    let kc = cluster.apiserver.kubeconfig().to_owned();
    let kc = kc.as_path();
    apply(kc, GATEWAY_API_CRDS)?;
    poll("the Gateway API CRDs served", WAIT, || {
        Ok(kubectl(kc, &["get", "httproutes", "-A"], None)
            .is_ok()
            .then_some(()))
    })?;
    let lease = Duration::from_secs(LEASE_SECONDS);

    // Two replicas (one after the other: they share the CA state directory); the first takes the Lease.
    replicas.push(Replica::start(cluster, "controller-a")?);
    until_holder(kc, &replicas[0], WAIT)?;
    replicas.push(Replica::start(cluster, "controller-b")?);
    let (a, b) = (&replicas[0], &replicas[1]);
    ensure!(a.identity != b.identity, "identities: {}", a.identity);
    poll("the second replica standing by", WAIT, || {
        Ok(b.log().contains("standing by").then_some(()))
    })?;
    ensure!(
        a.log().contains("became leader") && !b.log().contains("became leader"),
        "exactly one leader: a {}\nb {}",
        a.log(),
        b.log()
    );
    ensure!(
        lease_holder(kc)?.as_deref() == Some(a.identity.as_str()),
        "holder"
    );
    let (_, config) = http_get(b.monitoring, "/debug/config")?;
    let config: Value = serde_json::from_str(&config)?;
    ensure!(
        config["source"]["leaderElection"]["identity"] == b.identity.as_str(),
        "identity at /debug/config: {}",
        config["source"]
    );

    // Only the leader writes: the Gateway's status appears with our field manager; the standby computed the same
    // status (and serves) but wrote nothing.
    apply(kc, MESH)?;
    poll("the Gateway's status written", WAIT, || {
        let out = kubectl(
            kc,
            &[
                "get",
                "gateway",
                "waypoint",
                "-n",
                "lead",
                "-o",
                "json",
                "--show-managed-fields",
            ],
            None,
        )?;
        let gw: Value = serde_json::from_str(&out)?;
        let managed = gw["metadata"]["managedFields"].as_array().is_some_and(|m| {
            m.iter()
                .any(|f| f["manager"] == "ambit-controller" && f["subresource"] == "status")
        });
        Ok((managed && gw["status"]["conditions"].is_array()).then_some(()))
    })?;
    until_resolved_refs(kc, "True")?;
    poll("the standby's computed Gateway status", WAIT, || {
        let (_, body) = http_get(
            b.monitoring,
            "/debug/status?kind=gateway&namespace=lead&name=waypoint",
        )?;
        let v: Value = serde_json::from_str(&body)?;
        Ok(v["gateway/lead/waypoint"]["conditions"]
            .is_array()
            .then_some(()))
    })?;
    ensure!(a.status_writes() > 0, "the leader wrote: {}", a.log());
    ensure!(b.status_writes() == 0, "the standby wrote: {}", b.log());
    ensure!(
        http_get(b.monitoring, "/ready")?.0 == 200,
        "the standby serves"
    );

    // SIGKILL: no release; the standby takes over once the Lease expires (within two lease durations).
    replicas[0].process.signal(Signal::SIGKILL)?;
    let took = until_holder(kc, &replicas[1], lease * 2 + Duration::from_secs(1))?;
    eprintln!("leader killed -> standby holds the Lease after {took:?}");
    let b = &replicas[1];
    poll("the standby to lead", WAIT, || {
        Ok(b.log().contains("became leader").then_some(()))
    })?;
    // A status change after the takeover is written by the new leader.
    point_route_at(kc, "nowhere")?;
    until_resolved_refs(kc, "False")?;
    ensure!(b.status_writes() > 0, "the new leader wrote: {}", b.log());

    // SIGTERM: the leader releases the Lease; a third replica takes it well before the lease would expire (it
    // would take at least the lease duration less a retry period without the release).
    replicas.push(Replica::start(cluster, "controller-c")?);
    poll("the third replica standing by", WAIT, || {
        Ok(replicas[2].log().contains("standing by").then_some(()))
    })?;
    replicas[1].process.signal(Signal::SIGTERM)?;
    let took = until_holder(kc, &replicas[2], lease * 2 / 3)?;
    eprintln!("leader stopped -> standby holds the Lease after {took:?}");
    let exited = replicas[1]
        .process
        .stop_with(Signal::SIGTERM, Duration::from_secs(5));
    ensure!(
        exited.is_some_and(|s| s.success()),
        "graceful stop: {exited:?}"
    );
    ensure!(
        replicas[1].log().contains("released the Lease"),
        "release logged: {}",
        replicas[1].log()
    );
    point_route_at(kc, "echo")?;
    until_resolved_refs(kc, "True")?;
    for r in replicas.iter() {
        let log = r.log();
        if log.contains("panicked") {
            bail!("{} panicked: {log}", r.identity);
        }
    }
    Ok(())
}

#[test]
fn one_leader_writes_status_and_a_standby_takes_over() {
    let started = Instant::now();
    let dir = TestDir::new("controller-kube-leader").expect("test directory");
    let report = dir.path().to_owned();
    let cluster = match Cluster::start(dir) {
        Ok(c) => c,
        Err(e) => panic!(
            "starting the API server (logs in {}): {e:#}",
            report.display()
        ),
    };
    let mut replicas = Vec::new();
    let outcome = leader_scenario(&cluster, &mut replicas);
    // The replicas stop before the API server, so their logs are complete.
    drop(replicas);
    if let Err(e) = outcome {
        cluster.dir.report();
        panic!("controller_kube leader failed: {e:#}");
    }
    eprintln!("controller_kube leader: {:?}", started.elapsed());
}
