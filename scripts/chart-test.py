#!/usr/bin/env python3
"""Checks the Helm chart charts/shoal, for every scenario in charts/shoal/ci/:

1. lints it strictly with the Helm SDK (no warnings allowed);
2. renders it and validates every manifest against the Kubernetes 1.31 schemas
   (kubernetes-validate --strict; the prometheus-operator ServiceMonitor, whose schema is a
   CRD's, is checked for its few fields here);
3. checks that the chart cannot drift from the code: every container running a Shoal
   binary gets exactly the flags and environment the rendered manifests give it, and the
   real binary (target/debug) must accept them with --check-config; every SHOAL_* variable
   must be one the binary reads.

It also checks that the values schema refuses bad values. Run by scripts/test.sh after
the binaries are built; installs its Python tools first.
"""

import glob
import os
import subprocess
import sys
import tempfile

subprocess.run(
    [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
     "helm-python-sdk", "kubernetes-validate", "pyyaml"],
    check=True,
)

import helm_python  # noqa: E402
import yaml  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "charts", "shoal")
BINARIES = os.path.join(ROOT, "target", "debug")
KUBERNETES = "1.31.0"
# Environment the chart may set that no Shoal flag reads: logging, the standard AWS
# credentials the S3 client picks up itself, the standard OpenTelemetry settings (checked
# by --check-config all the same), and the pod fields those refer to.
FOREIGN_ENV = {
    "RUST_LOG", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_RESOURCE_ATTRIBUTES", "POD_NAME", "POD_NAMESPACE",
}
SEVERITY_WARNING = 2
# What a Secret-sourced variable the daemons parse looks like, for --check-config.
SECRET_SHAPES = {"SHOAL_STORE": "postgres://shoal:password@database.example:5432/shoal"}

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}")


def lint(name, values):
    result = helm_python.lint(CHART, values, strict=True)
    for message in result.get("messages", []):
        if message["severity"] >= SEVERITY_WARNING:
            fail(f"{name}: lint: {message['path']}: {message['error'].strip()}")
    for error in result.get("errors", []):
        fail(f"{name}: lint: {error.strip()}")


def render(values):
    chart = helm_python.Chart.load(CHART)
    files = chart.render(values, name="ci", namespace="shoal", is_install=True)
    documents = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            if "ci-shoal-orchestrator" not in text:
                fail(f"NOTES.txt does not name the orchestrator: {text}")
            continue
        documents.extend(d for d in yaml.safe_load_all(text) if d)
    return documents


def validate(name, documents):
    standard = [d for d in documents if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    for monitor in (d for d in documents if d["kind"] == "ServiceMonitor"):
        endpoints = monitor.get("spec", {}).get("endpoints", [])
        if monitor["apiVersion"] != "monitoring.coreos.com/v1" or not endpoints or \
                any(e.get("port") != "metrics" for e in endpoints):
            fail(f"{name}: malformed ServiceMonitor {monitor}")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as out:
        yaml.safe_dump_all(standard, out)
    result = subprocess.run(
        ["kubernetes-validate", "--strict", "--quiet", "-k", KUBERNETES, out.name],
        capture_output=True, text=True,
    )
    os.unlink(out.name)
    if result.returncode != 0:
        fail(f"{name}: kubernetes-validate:\n{result.stdout}{result.stderr}")
    return len(standard)


def help_text(binary, args=()):
    result = subprocess.run([os.path.join(BINARIES, binary), *args, "--help"],
                            capture_output=True, text=True)
    return " ".join(result.stdout.split())


def check_containers(name, documents):
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in documents
                   if d["kind"] == "ConfigMap"}
    checked = 0
    for document in documents:
        spec = document.get("spec", {})
        pod = spec.get("template", {}).get("spec") if document["kind"] != "Pod" else spec
        for container in (pod or {}).get("containers", []):
            command = container.get("command", [])
            if not command or not command[0].startswith("shoal"):
                continue
            binary, args = command[0], command[1:] + container.get("args", [])
            env = {}
            for source in container.get("envFrom", []):
                env.update(config_maps[source["configMapRef"]["name"]])
            for variable in container.get("env", []):
                if "value" in variable:
                    env[variable["name"]] = variable["value"]
                elif variable["name"] in SECRET_SHAPES:  # a Secret whose value is parsed
                    env[variable["name"]] = SECRET_SHAPES[variable["name"]]
                else:  # from a Secret or the pod's fields: any text will do here
                    env[variable["name"]] = "from-the-cluster"
            where = f"{name}: {document['kind']} {document['metadata']['name']} ({binary})"
            known = help_text(binary)
            for variable in env:
                if variable not in FOREIGN_ENV and f"env: {variable}=" not in known:
                    fail(f"{where}: {binary} reads no {variable}")
            run_env = {"PATH": os.environ["PATH"], **env}
            if binary == "shoal":
                # The CLI: the subcommand must exist with these arguments' shape.
                result = subprocess.run([os.path.join(BINARIES, binary), *args[:2], "--help"],
                                        env=run_env, capture_output=True, text=True)
            else:
                result = subprocess.run([os.path.join(BINARIES, binary), *args, "--check-config"],
                                        env=run_env, capture_output=True, text=True)
            if result.returncode != 0:
                fail(f"{where}: refused its settings:\n{result.stderr}")
            checked += 1
    return checked


def main():
    scenarios = sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml")))
    if not scenarios:
        fail("no scenarios in charts/shoal/ci")
    for path in scenarios:
        name = os.path.basename(path)
        values = yaml.safe_load(open(path)) or {}
        failed_before = len(failures)
        lint(name, values)
        documents = render(values)
        manifests = validate(name, documents)
        containers = check_containers(name, documents)
        if containers == 0:
            fail(f"{name}: no Shoal container found")
        if len(failures) > failed_before:
            continue
        print(f"ok   {name}: lint clean, {manifests} manifests valid for Kubernetes "
              f"{KUBERNETES}, {containers} containers accepted by their binaries")

    # The schema refuses what the daemons would refuse later, at install time.
    for bad in [
        {"executor": {"drainTimeout": "soon"}},
        {"executor": {"memory": "lots"}},
        {"orchestrator": {"contentStore": "http://not-s3"}},
        {"orchestrator": {"persistance": {"enabled": False}}},  # a typo
        {"logFormat": "xml"},
        {"tracing": {"otlpEndpoint": "collector:4317"}},  # no scheme: the exporter refuses it
        {"tracing": {"sampleRatio": 2}},
        {"orchestrator": {"replicas": 0}},
        {"orchestrator": {"antiAffinity": "sometimes"}},
    ]:
        errors = helm_python.lint(CHART, bad, strict=True).get("errors", [])
        if not errors:
            fail(f"the values schema accepted {bad}")
    print("ok   the values schema refuses bad values")

    # Replicas: executors and the test pod get every pod's stable name, which is what each
    # replica advertises when it leads; one pod may be evicted at a time; spread by node.
    documents = render(yaml.safe_load(open(os.path.join(CHART, "ci", "replicas-values.yaml"))))
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    statefulset = by_kind[("StatefulSet", "ci-shoal-orchestrator")]
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    advertised = next(e["value"] for e in container["env"] if e["name"] == "SHOAL_ADVERTISE_ADDRESS")
    executors = by_kind[("ConfigMap", "ci-shoal-executor")]["data"]["SHOAL_ORCHESTRATOR"].split(",")
    expected = [f"http://{advertised.replace('$(POD_NAME)', f'ci-shoal-orchestrator-{i}').replace('$(POD_NAMESPACE)', 'shoal')}"
                for i in range(3)]
    if statefulset["spec"]["replicas"] != 3 or executors != expected:
        fail(f"replicas: executors dial {executors}, replicas advertise {expected}")
    budget = by_kind[("PodDisruptionBudget", "ci-shoal-orchestrator")]
    if budget["spec"]["maxUnavailable"] != 1:
        fail(f"replicas: the disruption budget is {budget['spec']}")
    anti = statefulset["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    if "requiredDuringSchedulingIgnoredDuringExecution" not in anti:
        fail(f"replicas: antiAffinity hard rendered {anti}")
    print("ok   replicas: executors follow every pod's advertised name; one eviction at a time")

    # Replicas without a shared store would each keep a state of their own: refused.
    try:
        render({"orchestrator": {"replicas": 2}})
        fail("replicas > 1 without orchestrator.store.urlSecret rendered")
    except Exception as error:  # the template's fail() stops rendering
        if "store.urlSecret" not in str(error):
            fail(f"replicas without a store failed for another reason: {error}")
    print("ok   replicas without a shared store are refused")

    if failures:
        print(f"chart: {len(failures)} problem(s)")
        sys.exit(1)
    print("chart: all checks passed")


main()
