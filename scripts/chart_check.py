"""Checks for the Helm chart in deploy/helm/herald, run by scripts/chart.sh.

Subcommands:
  manifests FILE --kube-version V [...]  validates rendered manifests offline. Built-in kinds
      are checked against the Kubernetes JSON schemas of kubernetes-validate in strict mode.
      The custom resources (ServiceMonitor, PrometheusRule, ScaledObject, TriggerAuthentication)
      are checked for the fields the chart sets. Then come the chart's own rules: security
      settings, probes, and references between objects.
  config FILE HERALD_BINARY  loads each rendered container's configuration file and environment
      with the real `herald` binary, which rejects unknown keys and invalid values.
  values-table README VALUES  checks that the README's values table and values.yaml list the
      same values with the same defaults.
  dockerfile FILE  checks the image's user and labels, since no Docker engine runs in CI.

Each subcommand prints one line per problem and exits with 1 when it found any.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

# Kinds that are not in the Kubernetes schemas, which check_custom_resource checks instead.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
}


def load_documents(path):
    with open(path, encoding="utf-8") as file:
        return [document for document in yaml.safe_load_all(file) if document]


def name_of(document):
    return f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"


# ---------------------------------------------------------------------------------------------
# manifests


def check_manifests(path, kube_versions):
    import kubernetes_validate.utils as kubernetes

    problems = []
    documents = load_documents(path)
    if not documents:
        problems.append("no manifests rendered")
    for document in documents:
        key = (document.get("apiVersion"), document.get("kind"))
        if key in CUSTOM_KINDS:
            problems += [f"{name_of(document)}: {p}" for p in check_custom_resource(document)]
            continue
        for version in kube_versions:
            try:
                kubernetes.validate(document, version, strict=True)
            except kubernetes.ValidationError as error:
                field = ".".join(str(part) for part in error.path)
                problems.append(
                    f"{name_of(document)}: Kubernetes {error.version}: {field}: {error.message}"
                )
            except kubernetes.SchemaNotFoundError as error:
                problems.append(f"{name_of(document)}: {error.message}")
    problems += check_chart_rules(documents)
    return problems


def require(problems, condition, message):
    if not condition:
        problems.append(message)


def is_string_map(value):
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def check_custom_resource(document):
    """Check the fields of the custom resources that the chart sets, as their CRDs define them
    (Prometheus Operator monitoring.coreos.com/v1, KEDA keda.sh/v1alpha1)."""
    problems = []
    kind = document["kind"]
    spec = document.get("spec")
    require(problems, isinstance(spec, dict), "spec must be an object")
    if not isinstance(spec, dict):
        return problems
    if kind == "ServiceMonitor":
        require(problems, isinstance(spec.get("selector"), dict), "spec.selector must be an object")
        endpoints = spec.get("endpoints")
        require(
            problems,
            isinstance(endpoints, list) and endpoints,
            "spec.endpoints must list at least one endpoint",
        )
        for position, endpoint in enumerate(endpoints or []):
            require(
                problems,
                "port" in endpoint or "targetPort" in endpoint,
                f"spec.endpoints[{position}] needs port or targetPort",
            )
            for field in ("interval", "scrapeTimeout"):
                if field in endpoint:
                    require(
                        problems,
                        re.fullmatch(r"(\d+(ms|s|m|h))+", str(endpoint[field])),
                        f"spec.endpoints[{position}].{field} is not a Prometheus duration",
                    )
    elif kind == "PrometheusRule":
        groups = spec.get("groups")
        require(
            problems,
            isinstance(groups, list) and groups,
            "spec.groups must list at least one group",
        )
        for group in groups or []:
            require(problems, isinstance(group.get("name"), str), "every group needs a name")
            for rule in group.get("rules") or []:
                label = rule.get("alert") or rule.get("record")
                require(
                    problems,
                    bool(label),
                    f"group {group.get('name')}: a rule needs alert or record",
                )
                require(
                    problems,
                    isinstance(rule.get("expr"), str) and rule["expr"],
                    f"rule {label}: expr must be a non-empty string",
                )
                for field in ("labels", "annotations"):
                    if field in rule:
                        require(
                            problems,
                            is_string_map(rule[field]),
                            f"rule {label}: {field} values must be strings",
                        )
    elif kind == "ScaledObject":
        target = spec.get("scaleTargetRef") or {}
        require(
            problems, isinstance(target.get("name"), str), "spec.scaleTargetRef.name is required"
        )
        low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        require(
            problems,
            isinstance(low, int) and isinstance(high, int) and low <= high,
            "minReplicaCount must be an integer not above maxReplicaCount",
        )
        triggers = spec.get("triggers")
        require(
            problems,
            isinstance(triggers, list) and triggers,
            "spec.triggers must list at least one trigger",
        )
        for position, trigger in enumerate(triggers or []):
            require(
                problems,
                isinstance(trigger.get("type"), str),
                f"spec.triggers[{position}].type is required",
            )
            # KEDA's CRD types every metadata value as a string.
            require(
                problems,
                is_string_map(trigger.get("metadata")),
                f"spec.triggers[{position}].metadata values must be strings",
            )
    elif kind == "TriggerAuthentication":
        for position, reference in enumerate(spec.get("secretTargetRef") or []):
            for field in ("parameter", "name", "key"):
                require(
                    problems,
                    isinstance(reference.get(field), str) and reference[field],
                    f"spec.secretTargetRef[{position}].{field} is required",
                )
        for position, reference in enumerate(spec.get("env") or []):
            for field in ("parameter", "name"):
                require(
                    problems,
                    isinstance(reference.get(field), str) and reference[field],
                    f"spec.env[{position}].{field} is required",
                )
    return problems


def pod_templates(documents):
    """Yield (workload, pod spec, pod labels) for every Deployment and Job."""
    for document in documents:
        if document.get("kind") in ("Deployment", "Job"):
            template = document["spec"]["template"]
            yield document, template["spec"], template.get("metadata", {}).get("labels", {})


def selects(selector, labels):
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def check_chart_rules(documents):
    """Check the chart's promises: non-root, read-only pods without privileges, probed
    Deployments, and references between the rendered objects that resolve."""
    problems = []
    by_kind = {}
    for document in documents:
        by_kind.setdefault(document["kind"], {})[document["metadata"]["name"]] = document
    pods = list(pod_templates(documents))

    for workload, spec, _ in pods:
        location = name_of(workload)
        require(
            problems,
            spec.get("securityContext", {}).get("runAsNonRoot") is True,
            f"{location}: the pod must set runAsNonRoot",
        )
        require(
            problems,
            spec.get("automountServiceAccountToken") is False,
            f"{location}: the pod must not mount a ServiceAccount token",
        )
        for container in spec["containers"]:
            context = container.get("securityContext", {})
            container_location = f"{location}, container {container['name']}"
            require(
                problems,
                context.get("readOnlyRootFilesystem") is True,
                f"{container_location}: the root filesystem must be read-only",
            )
            require(
                problems,
                context.get("allowPrivilegeEscalation") is False,
                f"{container_location}: privilege escalation must be off",
            )
            require(
                problems,
                "ALL" in context.get("capabilities", {}).get("drop", []),
                f"{container_location}: every capability must be dropped",
            )
            require(
                problems,
                "limits" in container.get("resources", {}),
                f"{container_location}: resource limits are missing",
            )
            if workload["kind"] == "Deployment":
                for probe in ("livenessProbe", "readinessProbe"):
                    require(
                        problems, probe in container, f"{container_location}: {probe} is missing"
                    )
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                require(
                    problems,
                    volume["configMap"]["name"] in by_kind.get("ConfigMap", {}),
                    f"{location}: volume {volume['name']} names ConfigMap {volume['configMap']['name']}, which the chart does not render",
                )

    def require_pods(location, selector):
        require(
            problems,
            any(selects(selector, labels) for _, _, labels in pods),
            f"{location}: its selector {selector} matches no pod the chart renders",
        )

    for name, service in by_kind.get("Service", {}).items():
        require_pods(f"Service/{name}", service["spec"].get("selector", {}))
    for name, budget in by_kind.get("PodDisruptionBudget", {}).items():
        require_pods(f"PodDisruptionBudget/{name}", budget["spec"]["selector"]["matchLabels"])
    for name, policy in by_kind.get("NetworkPolicy", {}).items():
        require_pods(f"NetworkPolicy/{name}", policy["spec"]["podSelector"]["matchLabels"])
    for kind in ("HorizontalPodAutoscaler", "ScaledObject"):
        for name, scaler in by_kind.get(kind, {}).items():
            target = scaler["spec"]["scaleTargetRef"]["name"]
            require(
                problems,
                target in by_kind.get("Deployment", {}),
                f"{kind}/{name}: scales Deployment {target}, which the chart does not render",
            )
            if target in by_kind.get("Deployment", {}):
                require(
                    problems,
                    "replicas" not in by_kind["Deployment"][target]["spec"],
                    f"Deployment/{target}: sets replicas although {kind}/{name} owns them",
                )
    for name, scaled in by_kind.get("ScaledObject", {}).items():
        for trigger in scaled["spec"]["triggers"]:
            reference = trigger.get("authenticationRef", {}).get("name")
            if reference:
                require(
                    problems,
                    reference in by_kind.get("TriggerAuthentication", {}),
                    f"ScaledObject/{name}: names TriggerAuthentication {reference}, which the chart does not render",
                )
    return problems


# ---------------------------------------------------------------------------------------------
# config

# Values for the variables that come from Secrets, in the formats Herald accepts.
FAKE_SECRETS = {
    "HERALD__ENCRYPTION__KEYS": "chart-check:" + "A" * 43 + "=",
    "HERALD__ADMIN__TOKENS": "admin:" + "0123456789abcdef" * 4,
    "HERALD__KAFKA__CLIENT__SASL_PASSWORD": "chart-check-password",
    "HERALD__KAFKA__CLIENT__SASL_USERNAME": "chart-check-user",
}
# Messages with which the herald binary reports configuration it does not accept.
REJECTED = re.compile(
    r"invalid configuration|cannot load configuration|Invalid value .* for configuration property|No such configuration property"
)


def container_environment(container, pod_name):
    environment = {}
    for variable in container.get("env", []):
        name = variable["name"]
        if "value" in variable:
            environment[name] = variable["value"]
        elif "fieldRef" in variable.get("valueFrom", {}):
            environment[name] = pod_name
        elif name in FAKE_SECRETS:
            environment[name] = FAKE_SECRETS[name]
        else:
            environment[name] = "chart-check"
    return environment


def run_herald(binary, environment):
    """Run `herald topics apply` for at most 3 seconds and return what it printed."""
    try:
        result = subprocess.run(
            [binary, "topics", "apply"], env=environment, capture_output=True, text=True, timeout=3
        )
        return result.stdout + result.stderr
    except subprocess.TimeoutExpired as expired:
        return (expired.stdout or b"").decode() + (expired.stderr or b"").decode()


def check_config(path, binary):
    """Run `herald topics apply` with each container's configuration and environment.

    Herald loads and checks its configuration first and exits at once when it rejects it. With
    accepted configuration it goes on to connect to Kafka, which is pointed at a closed loopback
    port, and it is stopped after 3 seconds."""
    problems = []
    documents = load_documents(path)
    config_maps = {d["metadata"]["name"]: d for d in documents if d["kind"] == "ConfigMap"}
    runs = []
    with tempfile.TemporaryDirectory() as directory:
        for workload, spec, _ in pod_templates(documents):
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for container in spec["containers"]:
                container_location = f"{name_of(workload)}, container {container['name']}"
                environment = container_environment(container, workload["metadata"]["name"] + "-0")
                mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
                config_map = config_maps[volumes["config"]["configMap"]["name"]]
                config_path = Path(directory) / f"{len(runs)}.yaml"
                config_path.write_text(config_map["data"]["herald.yaml"], encoding="utf-8")
                require(
                    problems,
                    environment.get("HERALD_CONFIG", "").startswith(mount["mountPath"] + "/"),
                    f"{container_location}: HERALD_CONFIG is not in the mounted ConfigMap",
                )
                environment["HERALD_CONFIG"] = str(config_path)
                # Loopback port 9 (discard) has no broker, so no traffic leaves the machine.
                environment["HERALD__KAFKA__BOOTSTRAP_SERVERS"] = "127.0.0.1:9"
                environment["PATH"] = os.environ.get("PATH", "")
                runs.append((container_location, environment))
        with ThreadPoolExecutor(max_workers=8) as pool:
            outputs = pool.map(lambda run: run_herald(binary, run[1]), runs)
            for (container_location, _), output in zip(runs, outputs):
                if REJECTED.search(output):
                    problems.append(
                        f"{container_location}: herald rejects the configuration: {output.strip()}"
                    )
    if not runs:
        problems.append("no container with a Herald configuration was rendered")
    return problems


# ---------------------------------------------------------------------------------------------
# values-table


def canonical(value):
    return json.dumps(value, separators=(", ", ": "))


def read_values_table(readme):
    """Return {path: default cell} from the table under the README's "## Values" heading."""
    text = Path(readme).read_text(encoding="utf-8")
    section = re.search(r"^## Values\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    if not section:
        return None
    rows = {}
    for line in section.group(1).splitlines():
        match = re.match(r"^\| `([^`]+)` \| (.*?) \| .+ \|$", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def check_values_table(readme, values_file):
    problems = []
    rows = read_values_table(readme)
    if rows is None:
        return [f"{readme}: no '## Values' section"]
    with open(values_file, encoding="utf-8") as file:
        values = yaml.safe_load(file)
    seen = set()

    def walk(node, path):
        if isinstance(node, dict) and node and path not in rows:
            for key, child in node.items():
                walk(child, f"{path}.{key}" if path else key)
            return
        seen.add(path)
        if path not in rows:
            problems.append(f"{values_file}: {path} is missing from the values table of {readme}")
            return
        scalar = not isinstance(node, (dict, list)) or not node
        flat_list = isinstance(node, list) and all(
            not isinstance(item, (dict, list)) for item in node
        )
        if (scalar or flat_list) and rows[path] != f"`{canonical(node)}`":
            problems.append(
                f"{readme}: the default of {path} is {rows[path]}, but values.yaml has `{canonical(node)}`"
            )

    walk(values, "")
    for path in sorted(set(rows) - seen):
        problems.append(f"{readme}: {path} is in the values table but not in {values_file}")
    return problems


# ---------------------------------------------------------------------------------------------
# dockerfile


def check_dockerfile(path):
    """Check the runtime stage's user, labels and entry point by reading the Dockerfile."""
    problems = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    instructions = [
        line.strip() for line in lines if line.strip() and not line.strip().startswith("#")
    ]
    stages = [line for line in instructions if line.upper().startswith("FROM ")]
    require(
        problems, len(stages) >= 2, "the Dockerfile must have a build stage and a runtime stage"
    )
    final_stage = instructions[instructions.index(stages[-1]) :] if stages else []

    users = [line.split(None, 1)[1] for line in final_stage if line.upper().startswith("USER ")]
    require(problems, bool(users), "the runtime stage sets no USER, so the image would run as root")
    if users:
        user = users[-1].split(":")[0]
        require(
            problems,
            user.isdigit() and int(user) != 0,
            f"USER {users[-1]} must be a numeric uid other than 0, so that Kubernetes can check runAsNonRoot",
        )

    text = "\n".join(final_stage)
    for label in ("org.opencontainers.image.version", "org.opencontainers.image.revision"):
        require(
            problems,
            re.search(re.escape(label) + r'="\$\{?[A-Z_]+\}?"', text),
            f"the runtime stage has no {label} label taken from a build argument",
        )
    require(
        problems,
        re.search(r'^ENTRYPOINT \["(/usr/local/bin/)?herald"\]', text, re.M),
        'the runtime stage must have ENTRYPOINT ["herald"]',
    )
    return problems


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    manifests = commands.add_parser("manifests")
    manifests.add_argument("file")
    manifests.add_argument("--kube-version", action="append", required=True)
    config = commands.add_parser("config")
    config.add_argument("file")
    config.add_argument("binary")
    table = commands.add_parser("values-table")
    table.add_argument("readme")
    table.add_argument("values")
    dockerfile = commands.add_parser("dockerfile")
    dockerfile.add_argument("file")
    arguments = parser.parse_args()

    if arguments.command == "manifests":
        problems = check_manifests(arguments.file, arguments.kube_version)
    elif arguments.command == "config":
        problems = check_config(arguments.file, arguments.binary)
    elif arguments.command == "values-table":
        problems = check_values_table(arguments.readme, arguments.values)
    else:
        problems = check_dockerfile(arguments.file)
    for problem in problems:
        print(f"  {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
