//! The status the controller writes back by server-side apply, read with `kubectl get -o json` and compared with
//! its `/debug/status`.

use std::path::Path;

use super::*;

/// A waypoint (no pod yet, so not programmed), a Service that uses it and a route with the Service as parent.
const MESH: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: mesh}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE, allowedRoutes: {namespaces: {from: Same}}}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: mesh}
spec: {clusterIP: 10.96.20.1, ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-echo, namespace: mesh}
spec:
  parentRefs: [{group: \"\", kind: Service, name: echo, port: 80}]
  rules: [{backendRefs: [{name: echo, port: 80}]}]
";

/// `kubectl get <what> <name> -n mesh -o json`.
fn get_json(kc: &Path, what: &str, name: &str) -> Result<Value> {
    let out = kubectl(
        kc,
        &[
            "get",
            what,
            name,
            "-n",
            "mesh",
            "-o",
            "json",
            "--show-managed-fields",
        ],
        None,
    )?;
    Ok(serde_json::from_str(&out)?)
}

/// The condition of `type` in a `conditions` list.
fn find_condition<'a>(conditions: &'a Value, kind: &str) -> Option<&'a Value> {
    conditions.as_array()?.iter().find(|c| c["type"] == kind)
}

/// Polls `kubectl get` until `check` returns something.
fn until_object<T>(
    what: &str,
    kc: &Path,
    resource: &str,
    name: &str,
    mut check: impl FnMut(&Value) -> Option<T>,
) -> Result<T> {
    let mut last = Value::Null;
    poll(what, WAIT, || {
        last = get_json(kc, resource, name)?;
        Ok(check(&last))
    })
    .with_context(|| format!("last {resource} {name}: {}", last["status"]))
}

/// The controller's computed status of `<kind>/mesh/<name>`.
fn debug_status(monitoring: SocketAddr, kind: &str, name: &str) -> Result<Value> {
    let (code, body) = http_get(
        monitoring,
        &format!("/debug/status?kind={kind}&namespace=mesh&name={name}"),
    )?;
    ensure!(code == 200, "/debug/status: {code} {body}");
    let v: Value = serde_json::from_str(&body)?;
    Ok(v[format!("{kind}/mesh/{name}")].clone())
}

/// `type`, `status`, `reason`, `message` of each condition: what the controller computes.
fn computed_part(conditions: &Value) -> Vec<Value> {
    conditions
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            serde_json::json!({"type": c["type"], "status": c["status"], "reason": c["reason"],
                "message": c["message"]})
        })
        .collect()
}

/// The objects' `resourceVersion`s.
fn resource_versions(kc: &Path, objects: &[(&str, &str)]) -> Result<Vec<Value>> {
    objects
        .iter()
        .map(|(resource, name)| {
            Ok(get_json(kc, resource, name)?["metadata"]["resourceVersion"].clone())
        })
        .collect()
}

/// Checks that each object's `resourceVersion` stays `before` for a second: nothing rewrote them.
fn stay_unwritten(kc: &Path, objects: &[(&str, &str)], before: &[Value]) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(150));
        for ((resource, name), rv) in objects.iter().zip(before) {
            let now = get_json(kc, resource, name)?;
            ensure!(
                &now["metadata"]["resourceVersion"] == rv,
                "{resource} {name} was rewritten without a change: {}",
                now["status"]
            );
        }
    }
    Ok(())
}

fn status_scenario(cluster: &mut Cluster) -> Result<()> {
    let kc = cluster.apiserver.kubeconfig().to_owned();
    let kc = kc.as_path();
    apply(kc, GATEWAY_API_CRDS)?;
    poll("the Gateway API CRDs served", WAIT, || {
        Ok(kubectl(kc, &["get", "httproutes", "-A"], None)
            .is_ok()
            .then_some(()))
    })?;
    apply(kc, MESH)?;
    let monitoring = cluster.start_controller()?;
    let started = Instant::now();

    // The Gateway: Accepted, not Programmed (no waypoint pod), its address; as /debug/status computes it.
    let gw = until_object(
        "the Gateway's Accepted condition",
        kc,
        "gateways",
        "waypoint",
        |g| find_condition(&g["status"]["conditions"], "Accepted").map(|_| g.clone()),
    )?;
    eprintln!(
        "Gateway status written {:?} after the controller was ready",
        started.elapsed()
    );
    let computed = debug_status(monitoring, "gateway", "waypoint")?;
    let accepted = find_condition(&gw["status"]["conditions"], "Accepted").context("Accepted")?;
    ensure!(
        accepted["status"] == "True" && accepted["reason"] == "Accepted",
        "Accepted: {accepted}"
    );
    ensure!(
        computed_part(&gw["status"]["conditions"]) == computed_part(&computed["conditions"]),
        "written {} vs computed {}",
        gw["status"]["conditions"],
        computed["conditions"]
    );
    let programmed =
        find_condition(&gw["status"]["conditions"], "Programmed").context("Programmed")?;
    ensure!(
        programmed["status"] == "False" && programmed["reason"] == "Pending",
        "{programmed}"
    );
    ensure!(
        gw["status"]["addresses"] == computed["addresses"],
        "addresses: {}",
        gw["status"]
    );
    ensure!(
        gw["status"]["listeners"][0]["name"] == "mesh",
        "listeners: {}",
        gw["status"]
    );
    let generation = &gw["metadata"]["generation"];
    ensure!(
        accepted["observedGeneration"] == *generation && accepted["lastTransitionTime"].is_string(),
        "{accepted} (generation {generation})"
    );
    let managers = gw["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        managers.iter().any(|m| m["manager"] == "ambit-controller"
            && m["operation"] == "Apply"
            && m["subresource"] == "status"),
        "managedFields: {managers:?}"
    );

    // The route: one parent (the Service), Accepted and ResolvedRefs.
    let route = until_object(
        "the route's parent status",
        kc,
        "httproutes",
        "to-echo",
        |r| {
            find_condition(&r["status"]["parents"][0]["conditions"], "ResolvedRefs")
                .map(|_| r.clone())
        },
    )?;
    let parent = &route["status"]["parents"][0];
    ensure!(
        parent["controllerName"] == "istio.io/mesh-controller"
            && parent["parentRef"]["kind"] == "Service"
            && parent["parentRef"]["name"] == "echo",
        "parent: {parent}"
    );
    for (kind, reason) in [("Accepted", "Accepted"), ("ResolvedRefs", "ResolvedRefs")] {
        let c = find_condition(&parent["conditions"], kind).context(kind)?;
        ensure!(
            c["status"] == "True" && c["reason"] == reason,
            "{kind}: {c}"
        );
    }
    let route_accepted_at = find_condition(&parent["conditions"], "Accepted")
        .map(|c| c["lastTransitionTime"].clone())
        .unwrap_or_default();

    // The Service that uses the waypoint: istio.io/WaypointBound as computed.
    let svc = until_object("the Service's WaypointBound", kc, "services", "echo", |s| {
        find_condition(&s["status"]["conditions"], "istio.io/WaypointBound").map(|_| s.clone())
    })?;
    let computed = debug_status(monitoring, "service", "echo")?;
    ensure!(
        computed_part(&svc["status"]["conditions"]) == computed_part(&computed["conditions"]),
        "Service: written {} vs computed {}",
        svc["status"],
        computed
    );

    // An unrelated change is computed but rewrites nothing.
    let both = [("gateways", "waypoint"), ("httproutes", "to-echo")];
    let before = resource_versions(kc, &both)?;
    apply(
        kc,
        "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: default}\nspec: {clusterIP: 10.96.20.9, ports: [{port: 81}]}\n",
    )?;
    until("the unrelated Service computed", monitoring, |r| {
        r["addresses"]
            .get("default/other.default.svc.cluster.local")
            .map(|_| ())
    })?;
    stay_unwritten(kc, &both, &before)?;

    // The route's backend goes missing: ResolvedRefs flips; Accepted keeps its transition time; the condition
    // observes the new generation.
    kubectl(
        kc,
        &[
            "patch",
            "httproute",
            "to-echo",
            "-n",
            "mesh",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/rules/0/backendRefs/0/name","value":"nowhere"}]"#,
        ],
        None,
    )?;
    let route = until_object("ResolvedRefs=False", kc, "httproutes", "to-echo", |r| {
        find_condition(&r["status"]["parents"][0]["conditions"], "ResolvedRefs")
            .filter(|c| c["status"] == "False")
            .map(|_| r.clone())
    })?;
    let conditions = &route["status"]["parents"][0]["conditions"];
    let resolved = find_condition(conditions, "ResolvedRefs").context("ResolvedRefs")?;
    ensure!(resolved["reason"] == "BackendNotFound", "{resolved}");
    let accepted = find_condition(conditions, "Accepted").context("Accepted")?;
    ensure!(
        accepted["status"] == "True" && accepted["lastTransitionTime"] == route_accepted_at,
        "Accepted moved: {accepted}, was {route_accepted_at}"
    );
    let generation = &route["metadata"]["generation"];
    ensure!(
        generation.as_i64() >= Some(2)
            && resolved["observedGeneration"] == *generation
            && accepted["observedGeneration"] == *generation,
        "generation {generation}: {conditions}"
    );

    // A restarted controller reads the status back and does not rewrite it.
    let before = resource_versions(kc, &both)?;
    let monitoring = cluster.start_controller()?;
    until("the restarted controller's route status", monitoring, |r| {
        r.get("routes").map(|_| ())
    })?;
    stay_unwritten(kc, &both, &before)?;

    // --write-status=false: a flip stays unwritten.
    let monitoring = cluster.start_controller_with(&["--write-status=false"])?;
    kubectl(
        kc,
        &[
            "patch",
            "httproute",
            "to-echo",
            "-n",
            "mesh",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/rules/0/backendRefs/0/name","value":"echo"}]"#,
        ],
        None,
    )?;
    let route_only = [("httproutes", "to-echo")];
    let before = resource_versions(kc, &route_only)?;
    poll("ResolvedRefs=True computed", WAIT, || {
        let s = debug_status(monitoring, "httproute", "to-echo")?;
        Ok(
            find_condition(&s["parents"][0]["conditions"], "ResolvedRefs")
                .filter(|c| c["status"] == "True")
                .map(|_| ()),
        )
    })?;
    stay_unwritten(kc, &route_only, &before)?;
    let written = get_json(kc, "httproutes", "to-echo")?;
    ensure!(
        find_condition(
            &written["status"]["parents"][0]["conditions"],
            "ResolvedRefs"
        )
        .is_some_and(|c| c["status"] == "False"),
        "--write-status=false wrote: {}",
        written["status"]
    );
    let log = cluster.controller_log();
    if log.contains("panicked") {
        bail!("the controller panicked: {log}");
    }
    Ok(())
}

#[test]
fn controller_writes_status_by_server_side_apply() {
    let started = Instant::now();
    let dir = TestDir::new("controller-kube-status").expect("test directory");
    let report = dir.path().to_owned();
    let mut cluster = match Cluster::start(dir) {
        Ok(c) => c,
        Err(e) => panic!(
            "starting the API server (logs in {}): {e:#}",
            report.display()
        ),
    };
    let outcome = status_scenario(&mut cluster);
    cluster.controller.take();
    if let Err(e) = outcome {
        cluster.dir.report();
        panic!("controller_kube status failed: {e:#}");
    }
    eprintln!("controller_kube status: {:?}", started.elapsed());
}
