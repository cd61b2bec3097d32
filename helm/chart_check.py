"""Offline checks of the keyhouse Helm chart; run through helm/check, which installs the tools.

1. lint      `helm lint --strict` (Helm's Go SDK) with the default values and each ci/ values file.
2. render    `helm template` with the default values and each helm/keyhouse/ci/*-values.yaml.
3. schemas   every rendered manifest against the Kubernetes JSON schemas in strict mode (unknown
             fields are errors), for the oldest Kubernetes the chart supports and the newest the
             schemas cover; the ServiceMonitor against a strict schema derived from the Prometheus
             Operator's CRD models. No manifest is skipped: a kind with no schema is a failure.
4. wiring    chart-specific invariants: Services, HPAs, PDBs, NetworkPolicies and the
             ServiceMonitor select the pods they are meant to; probes are gRPC health checks on
             the right service names; the pods are locked down; the migration Job is a
             pre-install/pre-upgrade hook running `keyhouse migrate`; Ingress paths reach the
             service that serves them; every Secret a pod reads exists or is named in the values.
5. image     the Dockerfile builds the image the chart expects: the three binaries in
             /usr/local/bin, uid 10001, the container port and KEYHOUSE_LISTEN on every interface.
6. negative  values.schema.json (and the templates' own checks) reject bad values: each case must
             make the render fail.

Exit status 0 only if every check passes.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import yaml

import helm_python as helm
import kubernetes_validate
from kubernetes_validate import utils as kv_utils

RELEASE = "keyhouse"
NAMESPACE = "keyhouse"

# Which REST and gRPC paths each service serves (the Ingress must route them there); the admin
# ones only with ingress.includeAdminPaths.
EXPECTED_ROUTES = {
    "user-key-service": [
        # The web console (every binary serves it, like the browser login).
        "/",
        "/api/v1/account/uc-api-keys",
        "/api/v1/byok",
        "/api/v1/auth/validate-key",
        # The browser login (every binary serves it; one service's replicas are enough).
        "/auth",
        "/keyhouse.v1.UserKeyService/",
    ],
    "platform-key-service": [],
}
ADMIN_ROUTES = {
    "user-key-service": [],
    "platform-key-service": [
        "/api/v1/admin/platform-keys",
        "/api/v1/admin/audit-events",
        "/api/v1/llm/providers",
        "/keyhouse.v1.PlatformKeyService/",
    ],
}
# Helm's default --timeout: a hook Job must give up before Helm does, with its own error.
HELM_TIMEOUT_SECONDS = 300
GRPC_SERVICE = {
    "user-key-service": "keyhouse.v1.UserKeyService",
    "platform-key-service": "keyhouse.v1.PlatformKeyService",
}

# Values the schema (or a template) must refuse. Each case is (description, values); the field
# made bad is the path to the one leaf of `values` that is not a default, or the `field` given
# as a third element where a case sets several, and the refusal must name it.
BAD_VALUES: list[tuple[str, dict[str, Any]]] = [
    ("replicas given as a string", {"userKeyService": {"replicaCount": "3"}}),
    ("unknown top-level key (typo of a real one)", {"replicaCount": 3}),
    ("NetworkPolicy that would block the ServiceMonitor's scrape (template check)",
     {"networkPolicy": {"enabled": True, "allowedFrom": [{"podSelector": {}}]},
      "serviceMonitor": {"enabled": True}}, "networkPolicy.prometheusFrom"),
    ("unknown nested key", {"platformKeyService": {"replicas": 2}}),
    ("image.pullPolicy not Always/IfNotPresent/Never", {"image": {"pullPolicy": "Sometimes"}}),
    ("log format other than json/pretty", {"config": {"logFormat": "text"}}),
    ("bcrypt cost below 4", {"config": {"bcryptCost": 3}}),
    ("privileged container port", {"containerPort": 80}),
    ("CORS origin with a path", {"config": {"corsOrigins": ["https://ops.example.com/app"]}}),
    ("outbound allowed network that is not a CIDR", {"config": {"outboundAllowedNetworks": ["internal.example.com"]}}),
    ("OIDC issuer over plain http", {"config": {"oidc": {"issuer": "http://keycloak:8080/realms/ops"}}}),
    ("OIDC role claim that is no dotted path", {"config": {"oidc": {"roleClaim": "realm_access..roles"}}}),
    ("OIDC issuer without an audience (template check)",
     {"config": {"oidc": {"issuer": "https://sso.example.com/realms/ops", "userRoles": ["keyhouse-user"]}}},
     "config.oidc.audience"),
    ("OIDC issuer with no role mapped (template check)",
     {"config": {"oidc": {"issuer": "https://sso.example.com/realms/ops", "audience": "keyhouse"}}},
     "config.oidc.userRoles"),
    ("OIDC redirect URL over plain http", {"config": {"oidc": {"redirectUrl": "http://keyhouse.example.com/auth/callback"}}}),
    ("OIDC login client without a redirect URL (template check)",
     {"config": {"oidc": {"issuer": "https://sso.example.com/realms/ops", "audience": "keyhouse",
                          "userRoles": ["keyhouse-user"], "clientId": "keyhouse-web"}}},
     "config.oidc.redirectUrl"),
    ("DATABASE_URL that is not PostgreSQL", {"secret": {"databaseUrl": "mysql://u:p@db/keyhouse"}}),
    ("malformed Fernet key", {"secret": {"encryptionKeys": "not-a-fernet-key"}}),
    ("ingress host that is not a DNS name", {"ingress": {"hosts": ["Keyhouse_Example.com"]}}),
    ("ServiceMonitor interval that is not a duration", {"serviceMonitor": {"interval": "30 seconds"}}),
    ("PDB minAvailable that is neither a number nor a percentage",
     {"userKeyService": {"podDisruptionBudget": {"minAvailable": "half"}}}),
    ("env var value that is not a string", {"extraEnv": [{"name": "FOO", "value": 1}]}, "extraEnv.0.value"),
    ("HPA minReplicas above maxReplicas (template check)",
     {"userKeyService": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
     "userKeyService.autoscaling.minReplicas"),
    ("existingSecret together with an inline DATABASE_URL (template check)",
     {"secret": {"existingSecret": "keyhouse-secrets", "databaseUrl": "postgres://u:p@db:5432/keyhouse"}},
     "secret.databaseUrl"),
    ("headless Service switch that is not a boolean", {"service": {"headless": {"enabled": "yes"}}}),
    ("grace period shorter than the preStop sleep (template check)",
     {"preStopSleepSeconds": 30, "terminationGracePeriodSeconds": 10}, "terminationGracePeriodSeconds"),
    ("native gRPC Ingress without TLS (template check)",
     {"ingress": {"enabled": True, "includeAdminPaths": True, "grpc": {"enabled": True}}}, "ingress.tls"),
    ("rotation Job without a database or keys (template check)", {"rotation": {"enabled": True}}),
    ("Ops-Center session Redis URL that is not redis://",
     {"secret": {"opsCenterSessionRedisUrl": "http://redis.cache.svc:6379"}}),
    ("Ops-Center admin group holding a comma", {"config": {"opsCenter": {"adminGroups": ["admins,ops"]}}}),
    ("empty Ops-Center session key prefix", {"config": {"opsCenter": {"sessionPrefix": ""}}}),
    ("sync agent without the LiteLLM URL (template check)",
     {"syncLitellm": {"enabled": True, "existingSecret": "litellm-sync"}}, "syncLitellm.litellmUrl"),
    ("sync agent without its Secret (template check)",
     {"syncLitellm": {"enabled": True, "litellmUrl": "http://litellm:4000"}}, "syncLitellm.existingSecret"),
    ("sync agent LiteLLM URL with credentials", {"syncLitellm": {"litellmUrl": "http://admin:pw@litellm:4000"}}),
    ("unknown key in syncLitellm", {"syncLitellm": {"replicaCount": 2}}),
    ("Ops-Center group given both roles (template check)",
     {"config": {"opsCenter": {"adminGroups": ["ops"], "userGroups": ["ops"]}}},
     "config.opsCenter.userGroups"),
]


def leaf_path(values: Any) -> list[str]:
    """The path to the one leaf of a bad-values case; a case with several names its field."""
    path: list[str] = []
    while isinstance(values, (dict, list)):
        items = list(values.items()) if isinstance(values, dict) else list(enumerate(values))
        if len(items) != 1:
            raise ValueError(f"several fields at {'.'.join(path) or 'the top'}: name the bad one")
        key, values = items[0]
        path.append(str(key))
    return path


def names_field(message: str, path: list[str]) -> bool:
    """Whether a refusal names the field: as a.b.c, as the schema's /a/b/c, or as the schema's
    "at '/a/b': additional properties 'c'" for an unknown key."""
    parent = "/" + "/".join(path[:-1]) if len(path) > 1 else ""
    return (".".join(path) in message or "/" + "/".join(path) in message
            or (f"'{path[-1]}'" in message and f"at '{parent}'" in message))


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (the API server refuses them too)."""


def _construct_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def add(self, check: str, ok: bool, detail: str) -> None:
        self.rows.append((check, "PASS" if ok else "FAIL", detail))
        print(f"  [{'PASS' if ok else 'FAIL'}] {check}: {detail}")

    @property
    def failed(self) -> int:
        return sum(1 for _, status, _ in self.rows if status == "FAIL")

    def summary(self) -> None:
        width = max(len(c) for c, _, _ in self.rows)
        print("\n== Summary")
        for check, status, detail in self.rows:
            print(f"  {status}  {check.ljust(width)}  {detail}")
        passed = len(self.rows) - self.failed
        print(f"\n{passed} passed, {self.failed} failed")


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


# ------------------------------------------------------------------------------------------------
# Schemas


def min_kube_version(chart_dir: Path) -> str:
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    match = re.search(r">=\s*v?(\d+\.\d+)", chart.get("kubeVersion", ""))
    if not match:
        raise SystemExit("Chart.yaml has no kubeVersion lower bound")
    return match.group(1)


def strictify(schema: Any) -> Any:
    """Forbid unknown fields in every object that lists its fields (what strict mode means)."""
    if isinstance(schema, dict):
        out = {k: strictify(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strictify(v) for v in schema]
    return schema


def servicemonitor_validator() -> Callable[[dict], list[str]]:
    import jsonschema
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    schema = strictify(ServiceMonitor.model_json_schema(by_alias=True, mode="validation"))
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    validator = jsonschema.Draft202012Validator(schema)

    def validate(doc: dict) -> list[str]:
        return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                for e in validator.iter_errors(doc)]

    return validate


def kubernetes_errors(doc: dict, version: str) -> list[str]:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kv_utils.ValidationError as e:
        path = "/".join(map(str, e.absolute_path)) or "<root>"
        return [f"{path}: {e.message}"]
    return []


# ------------------------------------------------------------------------------------------------
# Rendering


def render(chart_dir: Path, values: dict | None) -> dict[str, str]:
    with helm.Chart.load(str(chart_dir)) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests_of(rendered: dict[str, str]) -> list[tuple[str, dict]]:
    docs = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in yaml.load_all(text, Loader=UniqueKeyLoader):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise ValueError(f"{template}: a document is not a mapping")
            docs.append((template, doc))
    return docs


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ------------------------------------------------------------------------------------------------
# Wiring checks: return a list of problems.


def matches(selector: dict, labels: dict) -> bool:
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        val = labels.get(expr["key"])
        op = expr["operator"]
        if op == "In" and val not in expr.get("values", []):
            return False
        if op == "NotIn" and val in expr.get("values", []):
            return False
        if op == "Exists" and val is None:
            return False
        if op == "DoesNotExist" and val is not None:
            return False
    return True


def container_security_problems(name: str, c: dict, psc: dict) -> list[str]:
    sc = c.get("securityContext", {})
    checks = {
        "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem") is True,
        "allowPrivilegeEscalation false": sc.get("allowPrivilegeEscalation") is False,
        "capabilities drop ALL": "ALL" in (sc.get("capabilities") or {}).get("drop", []),
        "seccomp RuntimeDefault": (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        == "RuntimeDefault",
    }
    return [f"Deployment {name}: container {c['name']} lacks {what}" for what, ok in checks.items() if not ok]


def agent_problems(agents: dict[str, dict], services: dict[str, dict], values: dict) -> list[str]:
    """The LiteLLM sync agent: rendered only when enabled, one pod at a time, `keyhouse sync
    litellm` with its token and LiteLLM's master key from a Secret, and nothing of the database."""
    p: list[str] = []
    sync = values["syncLitellm"]
    if len(agents) != (1 if sync["enabled"] else 0):
        p.append(f"{len(agents)} sync-litellm Deployments rendered, expected {1 if sync['enabled'] else 0}")
    for name, dep in agents.items():
        spec = dep["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        if not matches(spec["selector"], labels):
            p.append(f"Deployment {name}: selector does not match its pod labels")
        if spec.get("replicas") != 1 or (spec.get("strategy") or {}).get("type") != "Recreate":
            p.append(f"Deployment {name}: not one replica with the Recreate strategy")
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            p.append(f"Deployment {name}: pod runAsNonRoot is not true")
        if pod.get("automountServiceAccountToken") is not False:
            p.append(f"Deployment {name}: mounts a service account token it never uses")
        for c in pod["containers"]:
            p += container_security_problems(name, c, psc)
            if c.get("command", []) + c.get("args", [])[:2] != ["/usr/local/bin/keyhouse", "sync", "litellm"]:
                p.append(f"Deployment {name}: does not run `keyhouse sync litellm`")
            env = {e["name"]: e for e in c.get("env", [])}
            for var in ("KEYHOUSE_SYNC_SERVICE_TOKEN", "LITELLM_MASTER_KEY"):
                ref = (env.get(var, {}).get("valueFrom") or {}).get("secretKeyRef") or {}
                if ref.get("name") != sync["existingSecret"]:
                    p.append(f"Deployment {name}: {var} is not read from syncLitellm.existingSecret")
            for var in ("DATABASE_URL", "KEYHOUSE_ENCRYPTION_KEYS"):
                if var in env:
                    p.append(f"Deployment {name}: gets {var}, which the agent does not need")
            if env.get("KEYHOUSE_SYNC_LITELLM_URL", {}).get("value") != sync["litellmUrl"]:
                p.append(f"Deployment {name}: KEYHOUSE_SYNC_LITELLM_URL is not syncLitellm.litellmUrl")
            if env.get("KEYHOUSE_SYNC_LITELLM_MAPPING", {}).get("value") != sync["mapping"]:
                p.append(f"Deployment {name}: KEYHOUSE_SYNC_LITELLM_MAPPING is not syncLitellm.mapping")
            url = env.get("KEYHOUSE_SYNC_KEYHOUSE_URL", {}).get("value", "")
            if sync["keyhouseUrl"]:
                if url != sync["keyhouseUrl"]:
                    p.append(f"Deployment {name}: KEYHOUSE_SYNC_KEYHOUSE_URL is not syncLitellm.keyhouseUrl")
            else:
                platform = [n for n, svc in services.items()
                            if svc["metadata"]["labels"].get("app.kubernetes.io/component") == "platform-key-service"
                            and svc["spec"].get("clusterIP") != "None"]
                want = [f"http://{n}:{values['service']['port']}" for n in platform]
                if url not in want:
                    p.append(f"Deployment {name}: KEYHOUSE_SYNC_KEYHOUSE_URL {url!r} is not the platform-key "
                             f"Service ({want})")
    return p


def wiring_problems(docs: list[dict], values: dict) -> list[str]:
    p: list[str] = []
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    seen = set()
    for d in docs:
        key = (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])
        if key in seen:
            p.append(f"duplicate {key}")
        seen.add(key)
        if len(d["metadata"]["name"]) > 63 and d["kind"] in ("Service", "Deployment"):
            p.append(f"{d['kind']} name longer than 63 characters: {d['metadata']['name']}")

    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    services = {d["metadata"]["name"]: d for d in by_kind.get("Service", [])}
    secrets = {d["metadata"]["name"] for d in by_kind.get("Secret", [])}
    external_secrets = {values["secret"]["existingSecret"], values["providerKeys"]["existingSecret"]} - {""}
    container_port = values["containerPort"]

    def pod_labels(dep: dict) -> dict:
        return dep["spec"]["template"]["metadata"]["labels"]

    # The LiteLLM sync agent is a Deployment of its own kind: no port, no database; checked apart.
    agents = {n: d for n, d in deployments.items()
              if pod_labels(d).get("app.kubernetes.io/component") == "sync-litellm"}
    deployments = {n: d for n, d in deployments.items() if n not in agents}
    p += agent_problems(agents, services, values)

    enabled = {c for c, k in (("user-key-service", "userKeyService"),
                              ("platform-key-service", "platformKeyService")) if values[k]["enabled"]}
    components = {pod_labels(d).get("app.kubernetes.io/component") for d in deployments.values()}
    if components != enabled:
        p.append(f"Deployments for {sorted(components)}, expected {sorted(enabled)}")

    def secret_refs(pod_spec: dict) -> set[str]:
        refs = set()
        for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    refs.add(ref["name"])
            for e in c.get("envFrom", []):
                if "secretRef" in e and not e["secretRef"].get("optional"):
                    refs.add(e["secretRef"]["name"])
        return refs

    for name, dep in deployments.items():
        spec = dep["spec"]
        if not matches(spec["selector"], pod_labels(dep)):
            p.append(f"Deployment {name}: selector does not match its pod labels")
        pod = spec["template"]["spec"]
        component = pod_labels(dep).get("app.kubernetes.io/component")
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            p.append(f"Deployment {name}: pod runAsNonRoot is not true")
        for tsc in pod.get("topologySpreadConstraints", []):
            if not matches(tsc.get("labelSelector", {}), pod_labels(dep)):
                p.append(f"Deployment {name}: a topologySpreadConstraint selects none of its pods")
        for c in pod["containers"]:
            p += container_security_problems(name, c, psc)
            if c.get("command") != [f"/usr/local/bin/{component}"]:
                p.append(f"Deployment {name}: command {c.get('command')} does not run {component}")
            ports = {pp["name"]: pp["containerPort"] for pp in c.get("ports", [])}
            if ports.get("grpc") != container_port:
                p.append(f"Deployment {name}: no container port 'grpc' = {container_port}")
            env = {e["name"]: e for e in c.get("env", [])}
            listen = env.get("KEYHOUSE_LISTEN", {}).get("value", "")
            if not listen.endswith(f":{container_port}"):
                p.append(f"Deployment {name}: KEYHOUSE_LISTEN={listen!r} does not use port {container_port}")
            for var in ("DATABASE_URL", "KEYHOUSE_ENCRYPTION_KEYS"):
                if "secretKeyRef" not in (env.get(var, {}).get("valueFrom") or {}):
                    p.append(f"Deployment {name}: {var} is not read from a Secret")
            if env.get("KEYHOUSE_LOG_FORMAT", {}).get("value") != values["config"]["logFormat"]:
                p.append(f"Deployment {name}: KEYHOUSE_LOG_FORMAT is not the configured one")
            oidc = values["config"].get("oidc") or {}
            if env.get("KEYHOUSE_OIDC_ISSUER", {}).get("value", "") != oidc.get("issuer", ""):
                p.append(f"Deployment {name}: KEYHOUSE_OIDC_ISSUER is not the configured issuer")
            if env.get("KEYHOUSE_OIDC_CLIENT_ID", {}).get("value", "") != oidc.get("clientId", ""):
                p.append(f"Deployment {name}: KEYHOUSE_OIDC_CLIENT_ID is not the configured client")
            secret_ref = (env.get("KEYHOUSE_OIDC_CLIENT_SECRET", {}).get("valueFrom") or {}).get("secretKeyRef")
            if "KEYHOUSE_OIDC_CLIENT_SECRET" in env and not secret_ref:
                p.append(f"Deployment {name}: KEYHOUSE_OIDC_CLIENT_SECRET is not read from a Secret")
            if values["secret"].get("oidcClientSecret") and not secret_ref:
                p.append(f"Deployment {name}: the configured OIDC client secret does not reach the pod")
            for probe, service in (("livenessProbe", ""), ("readinessProbe", GRPC_SERVICE.get(component))):
                if not values["probes"][probe.replace("Probe", "")]["enabled"]:
                    continue
                grpc = (c.get(probe) or {}).get("grpc")
                if not grpc:
                    p.append(f"Deployment {name}: {probe} is not a gRPC probe")
                elif grpc.get("port") != container_port or grpc.get("service", "") != service:
                    p.append(f"Deployment {name}: {probe} asks {grpc} (expected port {container_port}, "
                             f"service {service!r})")
        for ref in secret_refs(pod):
            if ref not in secrets and ref not in external_secrets:
                p.append(f"Deployment {name}: reads Secret {ref}, which is neither rendered nor an existingSecret")

    for name, svc in services.items():
        ports = svc["spec"].get("ports", [])
        grpc = [pp for pp in ports if pp.get("name") == "grpc"]
        if not grpc or grpc[0].get("appProtocol") != "grpc":
            p.append(f"Service {name}: no port named grpc with appProtocol grpc")
        if grpc and grpc[0].get("port") != values["service"]["port"]:
            p.append(f"Service {name}: port is not service.port")
        targets = [d for d in deployments.values() if matches({"matchLabels": svc["spec"]["selector"]}, pod_labels(d))]
        if len(targets) != 1:
            p.append(f"Service {name}: selects {len(targets)} Deployments, expected 1")
        elif grpc:
            target_port = grpc[0].get("targetPort")
            cports = [pp["name"] for c in targets[0]["spec"]["template"]["spec"]["containers"] for pp in c.get("ports", [])]
            if target_port not in cports:
                p.append(f"Service {name}: targetPort {target_port} is not a container port of its pods")

    headless = {name for name, svc in services.items() if svc["spec"].get("clusterIP") == "None"}
    for name in headless:
        if not name.endswith("-headless"):
            p.append(f"Service {name}: headless but not named <service>-headless")
    for c in enabled:
        want = any(n.endswith(f"{c}-headless") for n in headless)
        if want != values["service"]["headless"]["enabled"]:
            p.append(f"{c}: headless Service {'missing' if not want else 'rendered while service.headless.enabled is false'}")

    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        dep = deployments.get(ref["name"])
        if ref["kind"] != "Deployment" or dep is None:
            p.append(f"HPA {hpa['metadata']['name']}: scales {ref}, which is not rendered")
        elif "replicas" in dep["spec"]:
            p.append(f"Deployment {ref['name']}: sets replicas although an HPA scales it")

    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for obj in by_kind.get(kind, []):
            selector = obj["spec"]["selector"] if kind == "PodDisruptionBudget" else obj["spec"]["podSelector"]
            hits = [d for d in deployments.values() if matches(selector, pod_labels(d))]
            if len(hits) != 1:
                p.append(f"{kind} {obj['metadata']['name']}: selects {len(hits)} Deployments, expected 1")

    for np_ in by_kind.get("NetworkPolicy", []):
        for rule in np_["spec"].get("ingress", []):
            ports = [pp.get("port") for pp in rule.get("ports", [])]
            if ports != ["grpc"]:
                p.append(f"NetworkPolicy {np_['metadata']['name']}: an ingress rule opens {ports}, not just grpc")

    for sm in by_kind.get("ServiceMonitor", []):
        hits = [s for s in services.values() if matches(sm["spec"]["selector"], s["metadata"]["labels"])]
        if len(hits) != len(services) or not hits:
            p.append(f"ServiceMonitor: selects {len(hits)} of {len(services)} Services")
        for ep in sm["spec"]["endpoints"]:
            if ep.get("path") != "/metrics" or ep.get("port") != "grpc":
                p.append(f"ServiceMonitor: endpoint {ep} is not grpc:/metrics")

    for ing in by_kind.get("Ingress", []):
        grpc_only = ing["metadata"].get("annotations", {}).get("nginx.ingress.kubernetes.io/backend-protocol") == "GRPC"
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                if grpc_only and not path["path"].startswith("/keyhouse.v1."):
                    p.append(f"Ingress {ing['metadata']['name']}: native gRPC Ingress routes {path['path']}")
        svc_component = {n: s["metadata"]["labels"]["app.kubernetes.io/component"] for n, s in services.items()}
        routed: dict[str, set[str]] = {}
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                if backend["name"] not in services:
                    p.append(f"Ingress: path {path['path']} goes to missing Service {backend['name']}")
                    continue
                if backend["port"].get("name") != "grpc":
                    p.append(f"Ingress: path {path['path']} does not use the grpc port")
                routed.setdefault(svc_component[backend["name"]], set()).add(path["path"])
        for component in enabled:
            expected = set(EXPECTED_ROUTES[component])
            if values["ingress"]["includeAdminPaths"]:
                expected |= set(ADMIN_ROUTES[component])
            if grpc_only:
                expected = {e for e in expected if e.startswith("/keyhouse.v1.")}
            got = routed.get(component, set())
            if got != expected:
                p.append(f"Ingress: {component} gets {sorted(got)}, expected {sorted(expected)}")

    def component_of(d: dict) -> str:
        return d["metadata"]["labels"].get("app.kubernetes.io/component", "")

    all_jobs = by_kind.get("Job", [])
    jobs = [j for j in all_jobs if component_of(j) == "migrate"]
    for job in all_jobs:
        spec = job["spec"]
        name = job["metadata"]["name"]
        if "activeDeadlineSeconds" not in spec:
            p.append(f"Job {name}: no activeDeadlineSeconds")
        if spec["template"]["metadata"].get("annotations", {}).get("sidecar.istio.io/inject") != "false":
            p.append(f"Job {name}: does not opt out of sidecar injection")
    guards = [j for j in all_jobs if component_of(j) == "rollback-guard"]
    if values["rollbackGuard"]["enabled"]:
        for job in guards:
            c = job["spec"]["template"]["spec"]["containers"][0]
            script = " ".join(c.get("args", []))
            if job["metadata"]["annotations"].get("helm.sh/hook") != "pre-rollback" \
                    or "exit 1" not in script or "roll forward" not in script:
                p.append(f"Job {job['metadata']['name']}: not a pre-rollback hook refusing with the reason")
        if len(guards) != 1:
            p.append(f"{len(guards)} rollback guard Jobs rendered, expected 1")
    elif guards:
        p.append("a rollback guard Job is rendered although rollbackGuard.enabled is false")
    rotations = [j for j in all_jobs if component_of(j) == "rotate"]
    if values["rotation"]["enabled"]:
        for job in rotations:
            c = job["spec"]["template"]["spec"]["containers"][0]
            env = {e["name"] for e in c.get("env", [])}
            if job["metadata"]["annotations"].get("helm.sh/hook") != "post-upgrade" \
                    or c.get("command", []) + c.get("args", [])[:2] != ["/usr/local/bin/keyhouse", "encryption", "rotate"] \
                    or not {"DATABASE_URL", "KEYHOUSE_ENCRYPTION_KEYS"} <= env:
                p.append(f"Job {job['metadata']['name']}: not a post-upgrade `keyhouse encryption rotate` with the Secret")
        if len(rotations) != 1:
            p.append(f"{len(rotations)} rotation Jobs rendered, expected 1")
    elif rotations:
        p.append("a rotation Job is rendered although rotation.enabled is false")

    checksum = values["secret"].get("checksum")
    for dep in deployments.values():
        ann = dep["spec"]["template"]["metadata"].get("annotations", {})
        if checksum and ann.get("checksum/existing-secret") != checksum:
            p.append(f"Deployment {dep['metadata']['name']}: secret.checksum is not a pod annotation")
        if not values["secret"]["existingSecret"] and "checksum/secret" not in ann:
            p.append(f"Deployment {dep['metadata']['name']}: no checksum/secret of the chart's Secret")

    if values["migration"]["enabled"]:
        if len(jobs) != 1:
            p.append(f"{len(jobs)} migration Jobs rendered, expected 1")
        for job in jobs:
            ann = job["metadata"].get("annotations", {})
            hooks = set(ann.get("helm.sh/hook", "").split(","))
            if hooks != {"pre-install", "pre-upgrade"}:
                p.append(f"Job {job['metadata']['name']}: hooks {sorted(hooks)}, expected pre-install,pre-upgrade")
            c = job["spec"]["template"]["spec"]["containers"][0]
            sec = values["secret"]
            configured = bool(sec["existingSecret"] or (sec["databaseUrl"] and sec["encryptionKeys"]))
            if configured and c.get("command", []) + c.get("args", []) != ["/usr/local/bin/keyhouse", "migrate"]:
                p.append(f"Job {job['metadata']['name']}: does not run `keyhouse migrate`")
            if not configured and not (c.get("command") == ["/bin/sh", "-c"] and "exit 1" in " ".join(c.get("args", []))
                                       and job["spec"].get("backoffLimit") == 0):
                p.append(f"Job {job['metadata']['name']}: without a configured database it must fail at once")
            if job["spec"]["template"]["spec"].get("restartPolicy") != "Never":
                p.append(f"Job {job['metadata']['name']}: restartPolicy is not Never")
            weight = int(ann.get("helm.sh/hook-weight", "0"))
            for ref in secret_refs(job["spec"]["template"]["spec"]):
                if ref in external_secrets:
                    continue
                hook_secret = [s for s in by_kind.get("Secret", []) if s["metadata"]["name"] == ref]
                s_ann = hook_secret[0]["metadata"].get("annotations", {}) if hook_secret else {}
                if not hook_secret or "pre-install" not in s_ann.get("helm.sh/hook", "") \
                        or int(s_ann.get("helm.sh/hook-weight", "0")) >= weight:
                    p.append(f"Job {job['metadata']['name']}: Secret {ref} is not created by an earlier hook")
    elif jobs:
        p.append("a Job is rendered although migration.enabled is false")
    return p


def image_problems(repo: Path, defaults: dict) -> list[str]:
    """Static checks that the Dockerfile builds what the chart runs (no container engine needed)."""
    p: list[str] = []
    dockerfile = repo / "Dockerfile"
    if not dockerfile.is_file():
        return [f"{dockerfile} is missing"]
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    build = [line for line in lines if "cargo build" in line]
    if not build or "--locked" not in build[0] or "--release" not in build[0] or not all(
            f"-p {pkg}" in build[0] for pkg in ("keyhouse", "keyhouse-user-keys", "keyhouse-platform-keys")):
        p.append("no `cargo build --release --locked` of keyhouse, keyhouse-user-keys and keyhouse-platform-keys")
    copies = [line for line in lines if line.startswith("COPY --from=") and "/usr/local/bin/" in line]
    for binary in ("keyhouse", "user-key-service", "platform-key-service"):
        if not any(re.search(rf"/{binary}(\s|$)", c) for c in copies):
            p.append(f"{binary} is not copied into /usr/local/bin/")
    uid = defaults["securityContext"]["runAsUser"]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    if not users or users[-1].split(":")[0] != str(uid):
        p.append(f"the final USER is {users[-1] if users else 'unset'}, the chart runs as {uid}")
    port = defaults["containerPort"]
    if f"EXPOSE {port}" not in lines:
        p.append(f"no EXPOSE {port}")
    if not any(line.startswith("ENV ") and f"KEYHOUSE_LISTEN=0.0.0.0:{port}" in line for line in lines):
        p.append(f"no ENV KEYHOUSE_LISTEN=0.0.0.0:{port}")
    if not any(line.startswith("ENTRYPOINT ") for line in lines):
        p.append("no ENTRYPOINT")
    ignore = repo / ".dockerignore"
    patterns = ignore.read_text().split() if ignore.is_file() else []
    for needed in ("target/", ".git/", "**/*.db"):
        if needed not in patterns:
            p.append(f".dockerignore does not exclude {needed}")
    return p


# ------------------------------------------------------------------------------------------------


def readme_values(repo: Path) -> dict:
    """The production values example of the README's "Deploying on Kubernetes", so that what a
    reader copies is what this check renders."""
    text = (repo / "README.md").read_text()
    after = text[text.index("A production `values-prod.yaml`:"):]
    return yaml.safe_load(after.split("```yaml\n", 1)[1].split("```", 1)[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chart", default=str(Path(__file__).resolve().parent / "keyhouse"))
    args = ap.parse_args()
    chart_dir = Path(args.chart).resolve()
    report = Report()

    versions = [min_kube_version(chart_dir), kv_utils.major_minor(kv_utils.latest_version())]
    section("Tools")
    print(f"  Helm SDK {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}, "
          f"libhelm_c {helm.helm_c_version()})")
    print(f"  kubernetes-validate {kv_utils.__version__}: Kubernetes schemas "
          f"{kv_utils.all_versions()[0]}-{kv_utils.latest_version()}; validating against {', '.join(versions)}")
    sm_validate = servicemonitor_validator()
    print("  ServiceMonitor (a CRD, not in the Kubernetes schemas): strict schema derived from "
          f"cloudcoil-models-prometheus-operator {metadata.version('cloudcoil-models-prometheus-operator')}; "
          "no manifest is skipped")

    defaults = yaml.safe_load((chart_dir / "values.yaml").read_text())
    scenarios: list[tuple[str, dict | None]] = [("default values", None)]
    for f in sorted((chart_dir / "ci").glob("*-values.yaml")):
        scenarios.append((f"ci/{f.name}", yaml.safe_load(f.read_text()) or {}))
    scenarios.append(("README's values-prod.yaml", readme_values(chart_dir.parent.parent)))

    # A hook Job that outlives Helm's wait fails with Helm's timeout instead of its own error.
    slow = {k: defaults[k]["activeDeadlineSeconds"] for k in ("migration", "rotation")
            if defaults[k]["activeDeadlineSeconds"] >= HELM_TIMEOUT_SECONDS}
    report.add("default Job deadlines below Helm's timeout", not slow,
               f"under {HELM_TIMEOUT_SECONDS} s" + (f"; not: {slow}" if slow else ""))

    # 1. helm lint --strict
    section("helm lint --strict")
    for label, values in scenarios:
        try:
            result = helm.lint(str(chart_dir), values, strict=True, namespace=NAMESPACE,
                               kube_version=f"v{versions[-1]}.0")
        except helm.HelmError as e:
            report.add(f"lint ({label})", False, f"lint could not run: {e}")
            continue
        msgs = result.get("messages", [])
        bad = [m for m in msgs if m["severity"] >= 2] + [{"severity": 3, "path": "", "error": e}
                                                        for e in result.get("errors", [])]
        for m in msgs:
            level = {1: "INFO", 2: "WARNING", 3: "ERROR"}.get(m["severity"], "UNKNOWN")
            print(f"    {level} {m['path']}: {m['error'].strip()}")
        report.add(f"lint ({label})", not bad,
                   f"{result.get('total_charts_linted', 0)} chart linted, "
                   f"{len(bad)} warnings/errors, {len(msgs) - len([m for m in msgs if m['severity'] >= 2])} info")

    # 2-4. render, validate, wire
    for label, values in scenarios:
        section(f"render + validate: {label}")
        merged = deep_merge(defaults, values or {})
        try:
            rendered = render(chart_dir, values)
            notes = next((t for k, t in rendered.items() if k.endswith("NOTES.txt")), "")
            docs = manifests_of(rendered)
        except Exception as e:  # noqa: BLE001 - any failure here is a failed check
            report.add(f"render ({label})", False, f"{type(e).__name__}: {e}")
            continue
        kinds: dict[str, int] = {}
        for _, d in docs:
            kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
        report.add(f"render ({label})", bool(docs) and bool(notes.strip()),
                   f"{len(docs)} manifests: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
                   + ("; NOTES.txt rendered" if notes.strip() else "; NOTES.txt EMPTY"))

        problems = []
        for template, d in docs:
            where = f"{template}: {d.get('kind')}/{(d.get('metadata') or {}).get('name')}"
            if d.get("kind") == "ServiceMonitor":
                problems += [f"{where}: {m}" for m in sm_validate(d)]
                continue
            for v in versions:
                try:
                    problems += [f"{where} (Kubernetes {v}): {m}" for m in kubernetes_errors(d, v)]
                except kv_utils.SchemaNotFoundError as e:
                    problems.append(f"{where}: no schema offline ({e.message})")
        for m in problems:
            print(f"    {m}")
        report.add(f"kubernetes schemas ({label})", not problems,
                   f"{len(docs)} manifests x Kubernetes {' and '.join(versions)}, strict "
                   f"(ServiceMonitor: Prometheus Operator schema); {len(problems)} errors")

        try:
            wiring = wiring_problems([d for _, d in docs], merged)
        except Exception:  # noqa: BLE001
            wiring = ["wiring check crashed:\n" + traceback.format_exc()]
        for m in wiring:
            print(f"    {m}")
        report.add(f"wiring ({label})", not wiring, f"{len(wiring)} problems")

        if label.endswith("production-values.yaml"):
            want = {"Deployment": 2, "Service": 4, "HorizontalPodAutoscaler": 2, "PodDisruptionBudget": 2,
                    "NetworkPolicy": 2, "Ingress": 1, "ServiceMonitor": 1, "Job": 2, "ServiceAccount": 1}
            missing = {k: n for k, n in want.items() if kinds.get(k, 0) != n}
            if kinds.get("Secret"):
                missing["Secret (must come from existingSecret)"] = 0
            report.add("production install has every feature", not missing,
                       "ingress, HPA, PDB, NetworkPolicy, ServiceMonitor, existingSecret"
                       if not missing else f"unexpected counts: {missing}")

    # 5. the image the chart runs
    section("Dockerfile matches the chart")
    problems = image_problems(chart_dir.parent.parent, defaults)
    for m in problems:
        print(f"    {m}")
    report.add("image contract (Dockerfile)", not problems,
               "binaries in /usr/local/bin, uid, port, KEYHOUSE_LISTEN, .dockerignore"
               + (f"; {len(problems)} problems" if problems else ""))

    # 6. bad values must be refused
    section("values.schema.json rejects bad values (each render must fail)")
    accepted = []
    unnamed = []
    for desc, values, *field in BAD_VALUES:
        path = field[0].split(".") if field else leaf_path(values)
        try:
            render(chart_dir, values)
        except helm.HelmValuesError as e:
            first = " ".join(line.strip() for line in str(e).splitlines() if line.strip().startswith("- at"))
            print(f"    rejected by schema:   {desc}: {first or str(e).splitlines()[0]}")
            if not names_field(str(e), path):
                print(f"      DOES NOT NAME {'.'.join(path)}: {e}")
                unnamed.append(desc)
            continue
        except helm.HelmError as e:
            msg = str(e).strip().splitlines()[-1]
            print(f"    rejected by template: {desc}: {msg}")
            if not names_field(str(e), path):
                print(f"      DOES NOT NAME {'.'.join(path)}")
                unnamed.append(desc)
            continue
        print(f"    ACCEPTED: {desc}: {json.dumps(values)}")
        accepted.append(desc)
    report.add("each refusal names the bad field", not unnamed,
               f"{len(BAD_VALUES) - len(unnamed)} of {len(BAD_VALUES)}"
               + (f"; not named: {unnamed}" if unnamed else ""))
    report.add("bad values rejected", not accepted,
               f"{len(BAD_VALUES) - len(accepted)} of {len(BAD_VALUES)} rejected"
               + (f"; accepted: {accepted}" if accepted else ""))

    report.summary()
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
