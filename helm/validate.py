"""Strict offline validation of rendered chart manifests (run by helm/check.sh).

Every document must validate against the Kubernetes OpenAPI schemas of each requested version
(kubernetes-validate, strict: unknown fields are errors, and so is a kind with no schema unless
this file carries one). Then the chart's own rules, which no schema knows:
  - every container is non-root, read-only, without privilege escalation, capabilities dropped,
    under the RuntimeDefault seccomp profile;
  - the registry's terminationGracePeriodSeconds exceeds its drain (NRL_SHUTDOWN_GRACE_SECS plus
    the preStop sleep), so Kubernetes never kills calls still draining;
  - every Service selects a workload of the release, and no helm test pod is selected by one;
  - a Service port's named targetPort is a container port of every workload it selects;
  - no two resources share a kind and name, and no YAML mapping repeats a key.

Usage: validate.py --kube-version 1.30.0 [--kube-version ...] rendered.yaml [...]
"""

import argparse
import sys

import jsonschema
import kubernetes_validate
import yaml

# Prometheus Operator CRDs have no schema in kubernetes-validate: the fields the chart renders.
DURATION = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"}
LOCAL_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["matchLabels"],
                        "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["port"],
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "interval": DURATION,
                                "scrapeTimeout": DURATION,
                            },
                        },
                    },
                },
            },
        },
    },
}

STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
LOCAL_SCHEMAS[("monitoring.coreos.com/v1", "PrometheusRule")] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": LOCAL_SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")]["properties"]["metadata"],
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": DURATION,
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["expr"],
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                    "properties": {
                                        "alert": {"type": "string", "minLength": 1},
                                        "record": {"type": "string", "minLength": 1},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": DURATION,
                                        "labels": STRING_MAP,
                                        "annotations": STRING_MAP,
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping with a repeated key (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"repeated key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def pod_specs(doc):
    """(where, pod spec, pod labels) of a workload or pod."""
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        template = doc["spec"]["template"]
        yield name_of(doc), template["spec"], template.get("metadata", {}).get("labels", {})
    elif kind == "Pod":
        yield name_of(doc), doc["spec"], doc.get("metadata", {}).get("labels", {})


def check_pod(where, spec, problems):
    pod = spec.get("securityContext", {})
    for container in spec.get("initContainers", []) + spec.get("containers", []):
        at = f"{where} container {container['name']}"
        ctx = container.get("securityContext", {})
        if not (ctx.get("runAsNonRoot") or pod.get("runAsNonRoot")):
            problems.append(f"{at}: runAsNonRoot is not set")
        if ctx.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{at}: readOnlyRootFilesystem must be true")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{at}: allowPrivilegeEscalation must be false")
        if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
            problems.append(f"{at}: capabilities must drop ALL")
        seccomp = ctx.get("seccompProfile") or pod.get("seccompProfile") or {}
        if seccomp.get("type") != "RuntimeDefault":
            problems.append(f"{at}: seccompProfile must be RuntimeDefault")


def check_drain(docs, problems):
    """The registry's grace period must outlast its drain."""
    env = {}
    for doc in docs:
        if doc.get("kind") == "ConfigMap" and "NRL_SHUTDOWN_GRACE_SECS" in doc.get("data", {}):
            env = doc["data"]
    for doc in docs:
        if doc.get("kind") != "Deployment":
            continue
        spec = doc["spec"]["template"]["spec"]
        for container in spec["containers"]:
            if container.get("args", [None])[0] != "serve":
                continue
            grace = int(env.get("NRL_SHUTDOWN_GRACE_SECS", 20))
            sleep = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            termination = spec.get("terminationGracePeriodSeconds", 30)
            if termination <= grace + sleep:
                problems.append(
                    f"{name_of(doc)}: terminationGracePeriodSeconds {termination} must exceed "
                    f"NRL_SHUTDOWN_GRACE_SECS {grace} + preStop sleep {sleep}"
                )


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_selectors(docs, problems):
    pods = [(where, labels, doc.get("kind")) for doc in docs for where, _, labels in pod_specs(doc)]
    for doc in docs:
        if doc.get("kind") != "Service":
            continue
        selector = doc["spec"].get("selector", {})
        matched = [(where, kind) for where, labels, kind in pods if selects(selector, labels)]
        if not any(kind != "Pod" for _, kind in matched):
            problems.append(f"{name_of(doc)}: its selector {selector} matches no workload")
        for where, kind in matched:
            if kind == "Pod":
                problems.append(f"{name_of(doc)} would send traffic to the test pod {where}")
        for where, spec, labels in (p for d in docs for p in pod_specs(d)):
            if not selects(selector, labels):
                continue
            named = {p.get("name") for c in spec.get("containers", []) for p in c.get("ports", [])}
            for port in doc["spec"].get("ports", []):
                target = port.get("targetPort")
                if isinstance(target, str) and target not in named:
                    problems.append(f"{name_of(doc)} port {port.get('name')}: targetPort {target} is no container port of {where}")


def validate(path, versions):
    problems = []
    try:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.load_all(f, Loader=UniqueKeyLoader) if d]
    except yaml.YAMLError as e:
        return [f"not valid YAML: {e}"], 0
    seen = set()
    for doc in docs:
        key = (doc.get("kind"), doc.get("metadata", {}).get("name"))
        if key in seen:
            problems.append(f"{name_of(doc)}: defined twice")
        seen.add(key)
        local = LOCAL_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
        if local is not None:
            for error in jsonschema.Draft7Validator(local).iter_errors(doc):
                where = ".".join(str(p) for p in error.absolute_path) or "(root)"
                problems.append(f"{name_of(doc)}: {where}: {error.message}")
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path) or "(root)"
                problems.append(f"{name_of(doc)} (Kubernetes {version}): {where}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{name_of(doc)} (Kubernetes {version}): no schema: {e}")
    for doc in docs:
        for where, spec, _ in pod_specs(doc):
            check_pod(where, spec, problems)
    check_drain(docs, problems)
    check_selectors(docs, problems)
    return problems, len(docs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kube-version", action="append", required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    failed = False
    for path in args.files:
        problems, count = validate(path, args.kube_version)
        if problems:
            failed = True
            print(f"FAIL {path}")
            for problem in problems:
                print(f"  {problem}")
        else:
            print(f"ok   {path}: {count} resources valid against Kubernetes {', '.join(args.kube_version)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
