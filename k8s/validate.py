#!/usr/bin/env python3
"""Renders the kustomizations in k8s/ with kustomize and validates every manifest offline.

    python3 k8s/validate.py [--fanout-bin target/debug/fanout]

k8s/base and every overlay under k8s/overlays/ are rendered by
`kubectl kustomize` (Kustomize v5, which kubectl embeds); without kubectl
the validation fails, it is never skipped. Then:

- every object is validated against the Kubernetes OpenAPI schemas carried
  by the `kubernetes-validate` package (strict: unknown fields are errors);
- Prometheus Operator objects (no schema in that package) are checked for
  the fields the operator requires;
- the alerts in k8s/ and deploy/prometheus-rules.yaml must be the same;
- the HPA's custom metric must be the one the prometheus-adapter rule exposes;
- the node configuration in each overlay's ConfigMap, with the variables the
  Deployment sets from its Secret, must be accepted by the fanout binary itself.

Exit status 1 with every problem listed when anything fails.
"""

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
import kubernetes_validate

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.30"
KUSTOMIZE_MAJOR = 5
INSTALL_KUBECTL = ("install kubectl with Kustomize v5 built in (kubectl 1.27 or later), e.g. "
                   "the `kubectl` package of the Google Cloud SDK apt repository (Debian)")

problems = []


def problem(msg):
    problems.append(msg)


def find_kubectl():
    """The kubectl to render with; exits with what to install when there is none (or too old a one)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        sys.exit(f"k8s/validate.py: kubectl is not on PATH; it renders the kustomizations. "
                 f"To validate the manifests, {INSTALL_KUBECTL}")
    out = subprocess.run([kubectl, "version", "--client", "-o", "json"],
                         capture_output=True, text=True, timeout=60)
    try:
        version = json.loads(out.stdout).get("kustomizeVersion", "")
    except json.JSONDecodeError:
        version = ""
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        major = 0
    if out.returncode != 0:
        sys.exit(f"k8s/validate.py: `{kubectl} version --client` failed ({out.stderr.strip()}); "
                 f"Kustomize v{KUSTOMIZE_MAJOR} is needed: {INSTALL_KUBECTL}")
    if major < KUSTOMIZE_MAJOR:
        sys.exit(f"k8s/validate.py: {kubectl} has Kustomize {version or 'of an unknown version'}, "
                 f"Kustomize v{KUSTOMIZE_MAJOR} is needed: {INSTALL_KUBECTL}")
    return kubectl, version


def render(kubectl, directory):
    """The objects `kubectl kustomize` renders from the kustomization in `directory` (None if it fails)."""
    where = directory.relative_to(ROOT)
    out = subprocess.run([kubectl, "kustomize", str(directory)],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        problem(f"{where}: kubectl kustomize failed: {out.stderr.strip()}")
        return None
    try:
        return [d for d in yaml.safe_load_all(out.stdout) if d]
    except yaml.YAMLError as e:
        problem(f"{where}: the output of kubectl kustomize is not YAML: {e}")
        return None


def validate_schema(objects, where):
    for obj in objects:
        name = f"{where}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if obj.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            check_prometheus_operator(obj, name)
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problem(f"{name}: {e.message} at {'.'.join(str(p) for p in e.path)}")
        except Exception as e:  # noqa: BLE001 - report every kind of failure
            problem(f"{name}: {e}")


def check_prometheus_operator(obj, name):
    spec = obj.get("spec", {})
    if obj["kind"] == "PodMonitor":
        if not spec.get("selector") or not spec.get("podMetricsEndpoints"):
            problem(f"{name}: needs spec.selector and spec.podMetricsEndpoints")
        for ep in spec.get("podMetricsEndpoints", []):
            if "port" not in ep:
                problem(f"{name}: every podMetricsEndpoint needs a port")
    elif obj["kind"] == "PrometheusRule":
        for group in spec.get("groups", []):
            for rule in group.get("rules", []):
                if "expr" not in rule or not ({"alert", "record"} & set(rule)):
                    problem(f"{name}: rule {rule} needs expr and alert or record")
    else:
        problem(f"{name}: unknown Prometheus Operator kind")


def check_cross_references(objects, where):
    """The overlay's Deployment (None when it renders none) and its objects by kind."""
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    rules = next(iter(by_kind.get("PrometheusRule", [])), None)
    shipped = yaml.safe_load((ROOT / "deploy" / "prometheus-rules.yaml").read_text())
    if rules is None or rules["spec"]["groups"] != shipped["groups"]:
        problem(f"{where}: the PrometheusRule (k8s/base/prometheusrule.yaml) and deploy/prometheus-rules.yaml differ")
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    exposed = {r["name"]["as"] for r in adapter["rules"]["custom"]}
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        for m in hpa["spec"]["metrics"]:
            if m["type"] == "Pods" and m["pods"]["metric"]["name"] not in exposed:
                problem(f"{where}: HPA metric {m['pods']['metric']['name']} is not exposed by prometheus-adapter")
    if "Deployment" not in by_kind:
        problem(f"{where}: renders no Deployment")
        return None, by_kind
    deployment = by_kind["Deployment"][0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    probes = [container["readinessProbe"]["httpGet"]["path"], container["livenessProbe"]["httpGet"]["path"]]
    if probes != ["/readyz", "/healthz"]:
        problem(f"{where}: probes are {probes}, expected /readyz and /healthz")
    return deployment, by_kind


def check_node_config(deployment, by_kind, fanout_bin, where):
    """The ConfigMap's fanout.toml plus the Deployment's env must satisfy the node."""
    configs = [c for c in by_kind.get("ConfigMap", []) if "fanout.toml" in c.get("data", {})]
    if not configs:
        problem(f"{where}: renders no ConfigMap with fanout.toml")
        return
    config = configs[0]["data"]["fanout.toml"]
    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    env = dict(os.environ)
    env = {k: v for k, v in env.items() if not k.startswith(("FANOUT_", "RUST_"))}
    for var in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        source = var.get("valueFrom", {}).get("secretKeyRef")
        if source:
            data = secrets.get(source["name"], {}).get("data", {}).get(source["key"])
            if data is None:
                problem(f"{where}: {var['name']} comes from Secret {source['name']} key {source['key']}, "
                        f"which the kustomization does not render")
                continue
            env[var["name"]] = base64.b64decode(data).decode()
        elif "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = "fanout-0"  # fieldRef: the pod name
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(config)
        f.flush()
        out = subprocess.run([fanout_bin, "--config", f.name, "token", "--sub", "check", "--tenant", "check"],
                             env=env, capture_output=True, text=True)
    if out.returncode != 0:
        problem(f"{where}: the node refuses the Kubernetes configuration: {out.stderr.strip()}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fanout-bin", default=str(ROOT / "target" / "debug" / "fanout"))
    args = parser.parse_args()
    kubectl, kustomize_version = find_kubectl()
    if not Path(args.fanout_bin).exists():
        sys.exit(f"{args.fanout_bin} is missing: build it first (cargo build -p fanout-gateway)")
    base = render(kubectl, K8S / "base") or []
    validate_schema(base, "k8s/base")
    overlays = sorted(d for d in (K8S / "overlays").iterdir() if (d / "kustomization.yaml").is_file())
    if not overlays:
        problem("k8s/overlays: no overlay to validate")
    counts = []
    for directory in overlays:
        where = str(directory.relative_to(ROOT))
        objects = render(kubectl, directory)
        if objects is None:
            continue  # the kustomize error is reported; nothing else to check
        validate_schema(objects, where)
        deployment, by_kind = check_cross_references(objects, where)
        if deployment is not None:
            check_node_config(deployment, by_kind, args.fanout_bin, where)
        counts.append(f"{len(objects)} in {where}")
    if problems:
        print("k8s manifests do not validate:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        sys.exit(1)
    print(f"k8s: {len(base)} objects in k8s/base, {', '.join(counts)} valid "
          f"(rendered by kubectl kustomize, Kustomize {kustomize_version}; "
          f"Kubernetes {KUBERNETES_VERSION} schemas, strict; rules, HPA metric and node config checked)")


if __name__ == "__main__":
    main()
