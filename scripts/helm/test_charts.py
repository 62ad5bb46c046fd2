"""Chart tests: render (real Helm engine), lint, Kubernetes schema validation, golden diff, values.schema.json refusals,
and a cross-check that env vars / flags the charts set are read by the binaries."""
import os, re, sys, pathlib, yaml
import helm_python as helm
import kubernetes_validate

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHARTS = ["base", "controller", "cni", "ztunnel"]
VALUES = {"default": {}}
for f in (ROOT / "scripts/helm/values").glob("*.yaml"):
    VALUES[f.stem] = yaml.safe_load(f.read_text())
K8S = "1.33"
# Env set for a component that its binary does not read yet (reason each).
ALLOW = {
    "*": {"RUST_LOG"},  # read by tracing-subscriber's EnvFilter
}
SRC = {"controller": ["controller/src", "core/src"], "ztunnel": ["ztunnel/src", "core/src"], "cni": ["cni/src", "core/src"]}
failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg)


def read_names(comp):
    """Env names and --flags the component's Rust sources read."""
    env, flags = set(), set()
    for d in SRC[comp]:
        for p in (ROOT / d).rglob("*.rs"):
            t = p.read_text()
            env |= set(re.findall(r'env = "([A-Z0-9_]+)"', t))
            env |= set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', t))  # settings lookups e.string("X", ..)
            for m in re.finditer(r'#\[arg\(([^\]]*)\)\]\s*(?:///[^\n]*\n\s*)*\s*(\w+):', t, re.S):
                lm = re.search(r'long\s*=\s*"([a-z0-9-]+)"', m.group(1))
                if lm:
                    flags.add(lm.group(1))
                elif re.search(r'\blong\b', m.group(1)):
                    flags.add(m.group(2).replace("_", "-"))
    return env, flags


def chart_values(chart, vals):
    """Umbrella-style values file: top-level keys plus the chart's own section (as `ambient` passes them)."""
    if chart == "ambient":
        return vals
    top = {k: v for k, v in vals.items() if k not in CHARTS}
    top.update(vals.get(chart, {}))
    return top


def render(chart, values):
    values = chart_values(chart, values)
    c = helm.Chart.load(str(ROOT / "helm" / chart))
    out = c.render(values, name="ambit", namespace="istio-system", is_install=True)
    docs = []
    for path in sorted(out):
        if path.endswith("NOTES.txt"):  # shown to the user after install, not an object
            if "dataplane-mode=ambient" not in out[path]:
                fail(f"{chart}: NOTES.txt lost its enrollment hint")
            continue
        for d in yaml.safe_load_all(out[path]):
            if d:
                docs.append(d)
    return docs


def check_containers(chart, docs):
    comp = chart
    if comp not in SRC:
        return
    env_ok, flags_ok = read_names(comp)
    for d in docs:
        if d["kind"] not in ("Deployment", "DaemonSet"):
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                n = e["name"]
                if n not in env_ok and n not in ALLOW.get(comp, set()) and n not in ALLOW["*"]:
                    fail(f"{chart}: env {n} is not read by {comp}")
            for a in c.get("args", []):
                if a.startswith("--"):
                    f = a[2:].split("=", 1)[0]
                    if f not in flags_ok:
                        fail(f"{chart}: flag --{f} is not a {comp} flag")
            for p in c.get("ports", []):
                if p["containerPort"] not in PORTS[comp]:
                    fail(f"{chart}: port {p['containerPort']} is not a {comp} default")


def code_ports():
    zt = (ROOT / "ztunnel/src/config.rs").read_text()
    ctl = (ROOT / "controller/src/main.rs").read_text()
    ports = {"ztunnel": {int(p) for p in re.findall(r"\b(150\d\d)\b", zt)},
             "controller": {int(p) for p in re.findall(r"default_value_t = (150\d\d)", ctl)}, "cni": set()}
    return ports


PORTS = code_ports()
assert {15010, 15012, 15014} <= PORTS["controller"], PORTS
assert {15020, 15021} <= PORTS["ztunnel"], PORTS

update = os.environ.get("UPDATE_GOLDEN") == "1"
(ROOT / "helm/golden").mkdir(exist_ok=True)
for chart in CHARTS + ["ambient"]:
    if chart == "ambient":
        try:
            helm.dependency_build(str(ROOT / "helm/ambient"))
        except Exception as e:  # noqa: BLE001
            fail(f"ambient: dependency build: {e}")
            continue
    lint = helm.lint(str(ROOT / "helm" / chart), {}, with_subcharts=True)
    for m in lint["messages"]:
        if m["severity"] >= 2:
            fail(f"{chart}: lint: {m}")
    for e in lint.get("errors", []):
        fail(f"{chart}: lint error: {e}")
    for vname, vals in VALUES.items():
        try:
            docs = render(chart, vals)
        except helm.HelmError as e:
            fail(f"{chart}/{vname}: render: {e}")
            continue
        if not docs:
            fail(f"{chart}/{vname}: rendered nothing")
        for d in docs:
            try:
                kubernetes_validate.validate(d, K8S, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                print(f"note: {chart}/{vname}: no schema for {d['apiVersion']} {d['kind']}, skipped")
            except kubernetes_validate.ValidationError as e:
                fail(f"{chart}/{vname}: {d['kind']}/{d['metadata'].get('name')}: {e.message}")
        if chart != "ambient":
            check_containers(chart, docs)
        text = yaml.safe_dump_all(docs, sort_keys=True)
        g = ROOT / "helm/golden" / f"{chart}-{vname}.yaml"
        if update:
            g.write_text(text)
        elif not g.exists() or g.read_text() != text:
            fail(f"{chart}/{vname}: differs from {g.relative_to(ROOT)} (UPDATE_GOLDEN=1 rewrites)")
        print(f"ok: {chart}/{vname}: {len(docs)} objects")

# Negative: the validator rejects a field Kubernetes does not have (so the passes above mean something).
try:
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                                  "spec": {"portz": []}}, K8S, strict=True)
    fail("kubernetes-validate accepted an unknown field")
except kubernetes_validate.ValidationError:
    pass

# Values schemas: every chart ships a draft-07 values.schema.json, and the keys the three component charts share are
# described the same way in each.
D7 = "http://json-schema.org/draft-07/schema#"
SCHEMAS = {c: helm.Chart.load(str(ROOT / "helm" / c)).schema for c in CHARTS + ["ambient"]}
for chart, schema in SCHEMAS.items():
    if not schema or schema.get("$schema") != D7:
        fail(f"{chart}: helm/{chart}/values.schema.json missing or not draft-07")
SHARED = ["hub", "tag", "image", "imagePullPolicy", "revision", "logLevel", "logAsJson", "env", "podLabels",
          "podAnnotations", "global", "resources", "terminationGracePeriodSeconds", "tolerations"]
for k in SHARED:
    if len({repr(SCHEMAS[c]["properties"].get(k)) for c in ("controller", "cni", "ztunnel") if SCHEMAS[c]}) > 1:
        fail(f"schema for {k} differs between controller, cni and ztunnel")

# Negative: wrong types and out-of-range values are refused, and the error names the field. helm_python renders with
# Helm's own engine, which validates values.schema.json before rendering (as helm install/upgrade/template/lint do),
# so these check what `helm` itself enforces; no separate JSON Schema validator is involved. Values are given as to
# `helm template ambit helm/<chart> -f` (not reshaped as the umbrella's), and the expected text is Helm's
# "<chart>:\n- at '<field>': <reason>" with the line break folded. (cni's template still fails on a bad failureMode
# by itself, for installs run with --skip-schema-validation.)
BAD = [
    ("base", {"gatewayAPI": {"enabled": "true"}}, "base: at '/gatewayAPI/enabled': got string, want boolean"),
    ("base", {"gatewayAPI": True}, "base: at '/gatewayAPI': got boolean, want object"),
    ("base", {"base": ["VirtualService"]}, "base: at '/base': got array, want object"),
    ("base", {"base": {"excludedCRDs": "VirtualService"}}, "base: at '/base/excludedCRDs': got string, want array"),
    ("base", {"base": {"excludedCRDs": [1]}}, "base: at '/base/excludedCRDs/0': got number, want string"),
    ("controller", {"replicaCount": "3"}, "controller: at '/replicaCount': got string, want integer"),
    ("controller", {"replicaCount": -1}, "controller: at '/replicaCount': minimum: got -1, want 0"),
    ("controller", {"replicaCount": 1.5}, "controller: at '/replicaCount': got number, want integer"),
    ("controller", {"pluginCA": {"enabled": "true"}}, "controller: at '/pluginCA/enabled': got string, want boolean"),
    ("controller", {"logAsJson": 1}, "controller: at '/logAsJson': got number, want boolean"),
    ("controller", {"resources": ["500m"]}, "controller: at '/resources': got array, want object"),
    ("controller", {"tolerations": "NoSchedule"}, "controller: at '/tolerations': got string, want array"),
    ("controller", {"imagePullPolicy": "Sometimes"},
     "controller: at '/imagePullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'"),
    ("controller", {"revision": "Canary_1"}, "controller: at '/revision': 'Canary_1' does not match pattern"),
    ("controller", {"terminationGracePeriodSeconds": "30s"},
     "controller: at '/terminationGracePeriodSeconds': got string, want integer"),
    ("cni", {"failureMode": "maybe"}, "cni: at '/failureMode': value must be one of 'open', 'closed'"),
    ("cni", {"chained": "false"}, "cni: at '/chained': got string, want boolean"),  # a string would be truthy
    ("cni", {"excludeNamespaces": "kube-system"}, "cni: at '/excludeNamespaces': got string, want array"),
    ("cni", {"ambient": {"dnsCapture": "no"}}, "cni: at '/ambient/dnsCapture': got string, want boolean"),
    ("cni", {"podAnnotations": {"prometheus.io/scrape": True}},
     "cni: at '/podAnnotations/prometheus.io~1scrape': got boolean, want string"),
    ("cni", {"updateStrategy": {"type": "Rolling"}},
     "cni: at '/updateStrategy/type': value must be one of 'RollingUpdate', 'OnDelete'"),
    ("cni", {"env": {"X": {"a": 1}}}, "cni: at '/env/X': got object, want boolean or number or string"),
    ("cni", {"terminationGracePeriodSeconds": -5}, "cni: at '/terminationGracePeriodSeconds': minimum: got -5, want 0"),
    ("ztunnel", {"caAddress": 15012}, "ztunnel: at '/caAddress': got number, want string"),
    ("ztunnel", {"logAsJson": "yes"}, "ztunnel: at '/logAsJson': got string, want boolean"),
    ("ztunnel", {"multiCluster": "east"}, "ztunnel: at '/multiCluster': got string, want object"),
    ("ztunnel", {"podLabels": ["team=mesh"]}, "ztunnel: at '/podLabels': got array, want object"),
    ("ztunnel", {"tag": 1.2}, "ztunnel: at '/tag': got number, want integer or string"),  # YAML 1.20 is 1.2
    ("ztunnel", {"istioNamespace": ""}, "ztunnel: at '/istioNamespace': minLength: got 0, want 1"),
    ("ztunnel", {"resources": {"requests": {"cpu": [1]}}},
     "ztunnel: at '/resources/requests/cpu': got array, want number or string"),
    ("ztunnel", {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 0.5}}},
     "ztunnel: at '/updateStrategy/rollingUpdate/maxUnavailable': got number, want integer or string"),
    # The umbrella: Helm checks each subchart's section (and the global it receives) against that subchart's schema.
    ("ambient", {"controller": {"replicaCount": "2"}}, "controller: at '/replicaCount': got string, want integer"),
    ("ambient", {"cni": {"failureMode": "maybe"}}, "cni: at '/failureMode': value must be one of 'open', 'closed'"),
    ("ambient", {"ztunnel": {"logAsJson": "yes"}}, "ztunnel: at '/logAsJson': got string, want boolean"),
    ("ambient", {"ztunnel": {"podLabels": {"team": 5}}}, "ztunnel: at '/podLabels/team': got number, want string"),
    ("ambient", {"base": {"gatewayAPI": {"enabled": "yes"}}},
     "base: at '/gatewayAPI/enabled': got string, want boolean"),
    ("ambient", {"global": {"platform": 1}}, "ztunnel: at '/global/platform': got number, want string"),
]
refused = {}
for chart, vals, want in BAD:
    try:
        c = helm.Chart.load(str(ROOT / "helm" / chart))
        c.render(vals, name="ambit", namespace="istio-system", is_install=True)
        fail(f"{chart}: {vals} rendered")
    except helm.HelmError as e:
        if want not in str(e).replace(":\n- at ", ": at "):
            fail(f"{chart}: {vals}: error does not say {want!r}: {e}")
        else:
            refused[chart] = refused.get(chart, 0) + 1
for chart in CHARTS + ["ambient"]:
    if refused.get(chart, 0) < 5:
        fail(f"{chart}: fewer than 5 bad values refused")
print("ok: bad values refused: " + ", ".join(f"{c} {n}" for c, n in refused.items()))

# Negative: the plugin only chains (the node agent refuses CHAINED_CNI_PLUGIN=false too).
try:
    render("cni", {"chained": False})
    fail("cni: chained=false rendered")
except helm.HelmError as e:
    assert "chained: false is not supported" in str(e), e

# Negative: several controller replicas without a shared CA would each mint their own root.
try:
    render("controller", {"replicaCount": 2})
    fail("controller: replicaCount=2 without pluginCA rendered")
except helm.HelmError as e:
    assert "needs pluginCA.enabled" in str(e), e

if failures:
    print(f"{len(failures)} failure(s)")
    sys.exit(1)
print("all chart checks passed")
