"""Chart tests: render (real Helm engine), lint, Kubernetes schema validation, golden diff, and a cross-check
that env vars / flags the charts set are read by the binaries."""
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

# Negative: a bad failure mode is a clear render error.
try:
    render("cni", {"failureMode": "maybe"})
    fail("cni: failureMode=maybe rendered")
except helm.HelmError as e:
    assert "failureMode must be open or closed" in str(e), e

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
