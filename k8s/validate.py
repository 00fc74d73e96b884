#!/usr/bin/env python3
"""Renders the kustomizations in k8s/ and validates every manifest offline.

    python3 k8s/validate.py [--fanout-bin target/debug/fanout]

No kustomize binary is reachable from this project's build machines, so this
renders the subset of kustomize the manifests use (resources, namespace,
labels, images, secretGenerator, generatorOptions) and refuses anything
else, so a new kustomize feature cannot slip through unrendered. Then:

- every object is validated against the Kubernetes OpenAPI schemas carried
  by the `kubernetes-validate` package (strict: unknown fields are errors);
- Prometheus Operator objects (no schema in that package) are checked for
  the fields the operator requires;
- the alerts in k8s/ and deploy/prometheus-rules.yaml must be the same;
- the HPA's custom metric must be the one the prometheus-adapter rule exposes;
- the node configuration in the ConfigMap, with the variables the Deployment
  sets from its Secret, must be accepted by the fanout binary itself.

Exit status 1 with every problem listed when anything fails.
"""

import argparse
import base64
import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
import kubernetes_validate

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.30"
KNOWN = {"apiVersion", "kind", "resources", "namespace", "labels", "images",
         "secretGenerator", "generatorOptions"}

problems = []


def problem(msg):
    problems.append(msg)


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def render(directory):
    """The objects of the kustomization in `directory`."""
    kfile = directory / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text())
    unknown = set(k) - KNOWN
    if unknown:
        problem(f"{kfile.relative_to(ROOT)}: fields this renderer does not handle: {sorted(unknown)}")
    objects = []
    for res in k.get("resources", []):
        target = (directory / res).resolve()
        if target.is_dir():
            objects += render(target)
        else:
            objects += load_docs(target)
    options = k.get("generatorOptions", {})
    for gen in k.get("secretGenerator", []):
        data = {}
        for literal in gen.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = base64.b64encode(value.encode()).decode()
        if set(gen) - {"name", "literals"} or not options.get("disableNameSuffixHash"):
            problem(f"{kfile.relative_to(ROOT)}: secretGenerator supports literals with disableNameSuffixHash only")
        objects.append({"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": gen["name"]}, "type": "Opaque", "data": data})
    for obj in objects:
        meta = obj.setdefault("metadata", {})
        if "namespace" in k and obj["kind"] != "Namespace":
            meta["namespace"] = k["namespace"]
        for entry in k.get("labels", []):
            meta.setdefault("labels", {}).update(entry.get("pairs", {}))
            if entry.get("includeSelectors"):
                problem(f"{kfile.relative_to(ROOT)}: labels.includeSelectors is not handled")
        for image in k.get("images", []):
            for c in containers(obj):
                name, _, tag = c["image"].partition(":")
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"
    return objects


def containers(obj):
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


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


def check_cross_references(objects):
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    rules = next(iter(by_kind.get("PrometheusRule", [])), None)
    shipped = yaml.safe_load((ROOT / "deploy" / "prometheus-rules.yaml").read_text())
    if rules is None or rules["spec"]["groups"] != shipped["groups"]:
        problem("k8s/base/prometheusrule.yaml and deploy/prometheus-rules.yaml differ")
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    exposed = {r["name"]["as"] for r in adapter["rules"]["custom"]}
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        for m in hpa["spec"]["metrics"]:
            if m["type"] == "Pods" and m["pods"]["metric"]["name"] not in exposed:
                problem(f"HPA metric {m['pods']['metric']['name']} is not exposed by prometheus-adapter")
    deployment = by_kind["Deployment"][0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    probes = [container["readinessProbe"]["httpGet"]["path"], container["livenessProbe"]["httpGet"]["path"]]
    if probes != ["/readyz", "/healthz"]:
        problem(f"probes are {probes}, expected /readyz and /healthz")
    return deployment, by_kind


def check_node_config(deployment, by_kind, fanout_bin):
    """The ConfigMap's fanout.toml plus the Deployment's env must satisfy the node."""
    config = by_kind["ConfigMap"][0]["data"]["fanout.toml"]
    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    env = dict(os.environ)
    env = {k: v for k, v in env.items() if not k.startswith(("FANOUT_", "RUST_"))}
    for var in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        source = var.get("valueFrom", {}).get("secretKeyRef")
        if source:
            data = secrets[source["name"]]["data"][source["key"]]
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
        problem(f"the node refuses the Kubernetes configuration: {out.stderr.strip()}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fanout-bin", default=str(ROOT / "target" / "debug" / "fanout"))
    args = parser.parse_args()
    if not Path(args.fanout_bin).exists():
        sys.exit(f"{args.fanout_bin} is missing: build it first (cargo build -p fanout-gateway)")
    base = render(K8S / "base")
    validate_schema(base, "k8s/base")
    overlay = render(K8S / "overlays" / "example")
    validate_schema(overlay, "k8s/overlays/example")
    deployment, by_kind = check_cross_references(overlay)
    check_node_config(deployment, by_kind, args.fanout_bin)
    if problems:
        print("k8s manifests do not validate:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        sys.exit(1)
    print(f"k8s: {len(base)} base and {len(overlay)} overlay objects valid "
          f"(Kubernetes {KUBERNETES_VERSION} schemas, strict)")


if __name__ == "__main__":
    main()
