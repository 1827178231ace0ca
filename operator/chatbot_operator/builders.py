"""Pure builders: a ChatbotModel (name, uid, parsed spec) -> the manifests of its children.

Nothing here talks to the cluster; apply.py sends what these return.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import chatbot_contract as contract
from chatbot_contract import GROUP, KIND, VERSION, env_name
from chatbot_operator.config import OperatorConfig
from chatbot_operator.profiles import GPU_RESOURCE, GpuProfile, resolve
from chatbot_operator.spec import AUTOSCALING_METRICS, PERSONAS, ChatbotModelSpec, Persona

MODELS_DIR = "/models"
DATA_DIR = "/data"
HTTP_PORT = 8080
# A draining pod hands its conversations' KV cells to its peers here (CHATBOT_KV_HANDOFF_PORT):
# never behind the route; the chart's NetworkPolicy opens it to the persona's own pods only.
KV_HANDOFF_PORT = 8081
SERVICE_PORT = 80
ROUTE_PORT = 8001
HASH_ANNOTATION = f"{GROUP}/settings-hash"
FETCH_KEY_LABEL = f"{GROUP}/fetch-key"
RUN_AS = 1000
# A terminating pod keeps listening this long before its SIGTERM, while the route and
# kube-proxy stop sending to it: a rollout never sends a request to a closed port (502).
PRE_STOP_SLEEP_S = 5
# The preStop sleep, then the service's drain of the answers in flight, then a margin for
# closing the engines (more than contract.SHUTDOWN_CUTOFF_MARGIN_S, uvicorn's backstop after
# the drain), before the kubelet kills the container.
TERMINATION_GRACE_S = PRE_STOP_SLEEP_S + contract.DEFAULT_SHUTDOWN_GRACE_S + 5


@dataclass(frozen=True)
class Owner:
    name: str
    namespace: str
    uid: str


def _hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def labels(owner: Owner, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "chatbot",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "chatbot-operator",
    }


def selector(owner: Owner, component: str) -> dict[str, str]:
    full = labels(owner, component)
    return {k: full[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                                 "app.kubernetes.io/component")}


def _meta(owner: Owner, name: str, component: str, **extra) -> dict:
    return {
        "name": name, "namespace": owner.namespace, "labels": labels(owner, component),
        "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                             "name": owner.name, "uid": owner.uid, "controller": True,
                             "blockOwnerDeletion": True}],
        **extra,
    }


# ----------------------------------------------------------------------------- names

def deployment_name(owner: Owner, persona: str) -> str:
    return f"{owner.name}-{persona}"


def pvc_name(owner: Owner, persona: str) -> str:
    return f"{owner.name}-{persona}-models"


def settings_name(owner: Owner) -> str:
    return f"{owner.name}-settings"


def fetch_account_name(owner: Owner) -> str:
    return f"{owner.name}-model-fetch"


def not_found_name(owner: Owner) -> str:
    return f"{owner.name}-not-found"


def fetch_key(spec: ChatbotModelSpec, persona: str) -> str:
    p = spec.persona(persona)
    return _hash([spec.source.uri, spec.source.revision, p.file, p.sha256])


def fetch_job_name(owner: Owner, spec: ChatbotModelSpec, persona: str) -> str:
    return f"{owner.name}-{persona}-fetch-{fetch_key(spec, persona)[:8]}"


def needs_fetch(spec: ChatbotModelSpec) -> bool:
    return spec.source.scheme != "pvc"


# ----------------------------------------------------------------------------- settings

def cpu_count(quantity) -> int | None:
    """Whole cores in a CPU quantity ("4", 2, "3500m" -> 4, 2, 3); None if not given."""
    if quantity is None:
        return None
    text = str(quantity)
    cores = int(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, math.floor(cores))


def gpu_layers(persona: Persona, profile: GpuProfile) -> int:
    if persona.gpu_layers != "auto":
        return int(persona.gpu_layers)
    limits = (persona.resources or {}).get("limits") or {}
    return -1 if profile.has_gpu or GPU_RESOURCE in limits else 0


def model_path(spec: ChatbotModelSpec, persona: str) -> str:
    file = spec.persona(persona).file
    if spec.source.scheme == "pvc":
        _, sub = spec.source.pvc_claim_and_path
        return "/".join(x for x in (MODELS_DIR, sub, file) if x)
    return f"{MODELS_DIR}/{file}"


def persona_settings(spec: ChatbotModelSpec, persona: str, profile: GpuProfile) -> dict[str, str]:
    """The CHATBOT_* variables (services/chatbot/settings.py) for one persona."""
    p = spec.persona(persona)
    env = {
        env_name(f"{persona}_model"): model_path(spec, persona),
        env_name(persona, "max_concurrent"): str(p.max_concurrent),
        env_name(persona, "model", "n_ctx"): str(p.context_size),
        env_name(persona, "model", "n_batch"): str(p.batch_size),
        env_name(persona, "model", "n_gpu_layers"): str(gpu_layers(p, profile)),
        # The container sees only its own GPU, always as device 0.
        env_name(persona, "model", "main_gpu"): "0",
    }
    resources = p.resources or {}
    cpus = cpu_count((resources.get("limits") or {}).get("cpu")
                     or (resources.get("requests") or {}).get("cpu"))
    if cpus:
        # llama.cpp's threads spin-wait: more threads than cores collapses throughput.
        env[env_name(persona, "model", "n_threads")] = str(cpus)
    return env


def shared_settings(config: OperatorConfig) -> dict[str, str]:
    return {
        env_name("model_wait_timeout_s"): str(int(config.model_wait_timeout_s)),
        env_name("history_path"): f"{DATA_DIR}/history.sqlite3",
    }


def api_keys_settings(spec: ChatbotModelSpec) -> dict[str, str]:
    """With spec.apiKeys: where the pods read the keys, and how many pods share the keys'
    budgets (each enforces 1/replicas of a budget while MongoDB is away). Not part of the
    settings hash: scaling does not restart pods (a pod reads the count when it starts)."""
    if spec.api_keys is None:
        return {}
    return {
        env_name("api_keys_file"): f"{contract.API_KEYS_DIR}/{contract.API_KEYS_FILE}",
        env_name("api_keys_replicas"): str(sum(planned_replicas(spec.persona(p))
                                               for p in PERSONAS)),
    }


def settings_configmap(owner: Owner, spec: ChatbotModelSpec, profiles, config) -> dict:
    data = shared_settings(config) | api_keys_settings(spec)
    for persona in PERSONAS:
        data |= persona_settings(spec, persona, resolve(spec.persona(persona).gpu_profile,
                                                        profiles))
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(owner, settings_name(owner), "settings"), "data": data}


# ----------------------------------------------------------------------------- storage + fetch

def model_pvc(owner: Owner, spec: ChatbotModelSpec, persona: str) -> dict:
    pvc_spec: dict = {"accessModes": list(spec.storage.access_modes),
                      "resources": {"requests": {"storage": str(spec.storage.size)}}}
    if spec.storage.storage_class_name:
        pvc_spec["storageClassName"] = spec.storage.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": _meta(owner, pvc_name(owner, persona), f"{persona}-models"),
            "spec": pvc_spec}


def fetch_rbac(owner: Owner) -> list[dict]:
    """The fetch Job's identity: it may only patch this resource's status."""
    name = fetch_account_name(owner)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": _meta(owner, name, "model-fetch"), "automountServiceAccountToken": True},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": _meta(owner, name, "model-fetch"),
         "rules": [{"apiGroups": [GROUP], "resources": ["chatbotmodels/status"],
                    "resourceNames": [owner.name], "verbs": ["patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": _meta(owner, name, "model-fetch"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}]},
    ]


def _placement(p: Persona, profile: GpuProfile) -> dict:
    out: dict = {}
    node_selector = {**profile.node_selector, **p.node_selector}
    if node_selector:
        out["nodeSelector"] = node_selector
    tolerations = [*profile.tolerations, *p.tolerations]
    if tolerations:
        out["tolerations"] = tolerations
    return out


def _pod_security() -> dict:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _container_security() -> dict:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}}


def fetch_job(owner: Owner, spec: ChatbotModelSpec, persona: str, profiles,
              config: OperatorConfig) -> dict:
    p = spec.persona(persona)
    key = fetch_key(spec, persona)
    args = ["--source", spec.source.uri, "--revision", spec.source.revision,
            "--dest", MODELS_DIR, "--file", p.file,
            "--report", f"{owner.namespace}/{owner.name}/{persona}"]
    if p.sha256:
        args += ["--sha256", p.sha256]
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    if config.hf_endpoint:
        env.append({"name": "HF_ENDPOINT", "value": config.hf_endpoint})
    if spec.source.token_secret:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": spec.source.token_secret.name, "key": spec.source.token_secret.key}}})
    meta = _meta(owner, fetch_job_name(owner, spec, persona), f"{persona}-fetch")
    meta["labels"][FETCH_KEY_LABEL] = key
    pod_labels = {**selector(owner, f"{persona}-fetch"), FETCH_KEY_LABEL: key}
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
        "spec": {
            "backoffLimit": 4,  # each retry resumes the partial download on the volume
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": fetch_account_name(owner),
                    "securityContext": _pod_security(),
                    # Same nodes as the persona: a ReadWriteOnce volume binds where the
                    # Job runs first.
                    **_placement(p, resolve(p.gpu_profile, profiles)),
                    "containers": [{
                        "name": "fetch", "image": config.fetch_image,
                        "command": ["python", "-m", "chatbot_operator.fetch"], "args": args,
                        "env": env,
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                      "limits": {"memory": "512Mi"}},
                        "securityContext": _container_security(),
                        "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}],
                    }],
                    "volumes": [{"name": "models", "persistentVolumeClaim": {
                        "claimName": pvc_name(owner, persona)}}],
                },
            },
        },
    }


# ----------------------------------------------------------------------------- persona

def _secret_env(spec: ChatbotModelSpec) -> list[dict]:
    env = []
    for var, ref in ((contract.MONGO_URL_ENV, spec.secrets.mongodb),
                     (contract.OPENAI_API_KEY_ENV, spec.secrets.openai)):
        if ref:
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name,
                                                                      "key": ref.key}}})
    return env


def _resources(p: Persona, profile: GpuProfile) -> dict:
    resources = json.loads(json.dumps(p.resources or {}))
    if profile.has_gpu:
        resources.setdefault("limits", {})[GPU_RESOURCE] = profile.gpus
    return resources


def _probe(path: str, **extra) -> dict:
    return {"httpGet": {"path": path, "port": "http"}, **extra}


def settings_hash(spec: ChatbotModelSpec, persona: str, profile: GpuProfile, config) -> str:
    return _hash({**shared_settings(config), **persona_settings(spec, persona, profile)})


def _report_env(owner: Owner, spec: ChatbotModelSpec, persona: str, profile: GpuProfile,
                config) -> list[dict]:
    """Where the service reports what it really offloaded (status.acceleration.<persona>),
    tagged with the settings it was started with."""
    return [
        {"name": env_name("status_report"), "value": f"{owner.namespace}/{owner.name}"},
        {"name": env_name("settings_hash"),
         "value": settings_hash(spec, persona, profile, config)},
        {"name": env_name("pod_name"),
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]


def planned_replicas(p: Persona) -> int:
    """The most pods a persona may run: its replicas, or with autoscaling its maxReplicas
    (a budget split by this count is never exceeded, however far KEDA scales)."""
    return p.autoscaling.max_replicas if p.autoscaling else p.replicas


def peers_name(owner: Owner, persona: str) -> str:
    return f"{deployment_name(owner, persona)}-peers"


def _affinity_env(owner: Owner, persona: str) -> list[dict]:
    """Conversation affinity (the service's chatbot.peers): the pod's own address and the
    headless Service whose DNS name lists the persona's ready pods, and the port a draining
    pod hands its conversations' KV cells to (chatbot.peers.handoff). Set at every replica
    count, so that scaling never changes the pod template (one replica: nothing to
    forward)."""
    return [
        {"name": env_name("pod_ip"), "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": env_name("affinity_self"),
         "value": f"http://$({env_name('pod_ip')}):{HTTP_PORT}"},
        {"name": env_name("affinity_peers_dns"),
         "value": f"{peers_name(owner, persona)}:{HTTP_PORT}"},
        {"name": env_name("kv_handoff_port"), "value": str(KV_HANDOFF_PORT)},
    ]


def persona_deployment(owner: Owner, spec: ChatbotModelSpec, persona: str, profiles,
                       config: OperatorConfig, *, autoscaled: bool = False) -> dict:
    """The persona's Deployment. ``autoscaled`` (its ScaledObject is applied): no
    ``replicas``, so that KEDA's HPA owns the count and a re-apply never resets it."""
    p = spec.persona(persona)
    profile = resolve(p.gpu_profile, profiles)
    if spec.source.scheme == "pvc":
        claim, _ = spec.source.pvc_claim_and_path
    else:
        claim = pvc_name(owner, persona)
    container = {
        "name": persona,
        "image": spec.image_for(persona),
        "command": ["chatbot", "serve", persona, "--host", "0.0.0.0",
                    "--port", str(HTTP_PORT), "--forwarded-allow-ips", "*"],
        "ports": [{"name": "http", "containerPort": HTTP_PORT},
                  {"name": "kv-handoff", "containerPort": KV_HANDOFF_PORT}],
        "envFrom": [{"configMapRef": {"name": settings_name(owner)}}],
        "env": [{"name": env_name("root_path"), "value": f"/{persona}"}, *_secret_env(spec),
                *_report_env(owner, spec, persona, profile, config),
                *_affinity_env(owner, persona),
                {"name": env_name("kv_handoff"), "value": "true" if p.kv_handoff else "false"}],
        "resources": _resources(p, profile),
        "startupProbe": _probe(contract.HEALTH_PATH, periodSeconds=5, failureThreshold=60),
        "livenessProbe": _probe(contract.HEALTH_PATH, periodSeconds=10, failureThreshold=3),
        # Not ready until the model is loaded (and while it waits for the file).
        "readinessProbe": _probe(contract.READY_PATH, periodSeconds=5, failureThreshold=3),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SLEEP_S}}},
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
                         {"name": "data", "mountPath": DATA_DIR},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    volumes = [
        {"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
        {"name": "data", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if spec.api_keys is not None:
        # A whole-volume mount (no subPath): the kubelet swaps in a changed Secret and the
        # service reloads it. Optional: a missing Secret means no key is valid, not no pod.
        volumes.append({"name": "api-keys", "secret": {
            "secretName": spec.api_keys.secret_name, "optional": True,
            "items": [{"key": spec.api_keys.key, "path": contract.API_KEYS_FILE}]}})
        container["volumeMounts"].append({"name": "api-keys", "mountPath": contract.API_KEYS_DIR,
                                          "readOnly": True})
    match = selector(owner, persona)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(owner, deployment_name(owner, persona), persona),
        "spec": {
            **({} if autoscaled else {"replicas": p.replicas}),
            "selector": {"matchLabels": match},
            # One GPU per node: a surge pod could never schedule, so replace in place.
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels(owner, persona), "annotations": {
                    HASH_ANNOTATION: settings_hash(spec, persona, profile, config)}},
                "spec": {
                    # May only patch this resource's status: the GPU offload report.
                    "serviceAccountName": fetch_account_name(owner),
                    "securityContext": _pod_security(),
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
                    **_placement(p, profile),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


# ----------------------------------------------------------------------------- autoscaling

KEDA_API_VERSION = "keda.sh/v1alpha1"
KEDA_CRD = "scaledobjects.keda.sh"
# How often KEDA queries Prometheus (its default is 30 s; the HPA reads KEDA every 15 s).
KEDA_POLLING_S = 15


def pod_name_regex(owner: Owner, persona: str) -> str:
    """The names of the persona Deployment's pods (<deployment>-<template hash>-<5>), as a
    PromQL regex: any scrape configuration that labels series with ``namespace`` and ``pod``
    (a PodMonitor, a ServiceMonitor, kube-prometheus' pod discovery) serves the query."""
    return f"{deployment_name(owner, persona)}-[a-z0-9]{{1,10}}-[a-z0-9]{{5}}"


def autoscaling_query(owner: Owner, persona: str, metric: str) -> str:
    """The metric summed over the persona's pods. The trigger's metricType is AverageValue,
    so the HPA wants ceil(sum / target) pods: for ``queue`` that keeps the waiting requests
    per pod at the target; for ``kvCache`` it is the HPA's own utilization rule
    (ceil(pods * mean / target)). A pod that has not been scraped yet adds nothing."""
    name = AUTOSCALING_METRICS[metric]
    return (f'sum({name}{{namespace="{owner.namespace}",'
            f'pod=~"{pod_name_regex(owner, persona)}"}})')


def scaled_object(owner: Owner, spec: ChatbotModelSpec, persona: str,
                  config: OperatorConfig) -> dict:
    """The KEDA ScaledObject that scales the persona's Deployment (only with autoscaling).

    KEDA makes an HPA (autoscaling/v2) from it and feeds it the Prometheus query's value;
    scale-down waits ``scaleDownStabilizationSeconds`` (the highest count wanted in that
    window) and then removes one pod a minute, each draining its answers first (the pods'
    preStop sleep and shutdown grace)."""
    a = spec.persona(persona).autoscaling
    assert a is not None
    return {
        "apiVersion": KEDA_API_VERSION, "kind": "ScaledObject",
        "metadata": _meta(owner, deployment_name(owner, persona), persona),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": deployment_name(owner, persona)},
            "minReplicaCount": a.min_replicas,
            "maxReplicaCount": a.max_replicas,
            "pollingInterval": KEDA_POLLING_S,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
                "scaleDown": {
                    "stabilizationWindowSeconds": a.scale_down_stabilization_seconds,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
            }}},
            "triggers": [{
                "type": "prometheus",
                "metricType": "AverageValue",
                "metadata": {
                    "serverAddress": a.prometheus_address or config.prometheus_address,
                    "query": autoscaling_query(owner, persona, a.metric),
                    "threshold": f"{a.target:g}",
                },
            }],
        },
    }


def service(owner: Owner, name: str, component: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(owner, name, component),
        "spec": {"selector": selector(owner, component),
                 "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http"}]},
    }


def persona_service(owner: Owner, persona: str) -> dict:
    return service(owner, deployment_name(owner, persona), persona)


def peers_service(owner: Owner, persona: str) -> dict:
    """Headless: its DNS name resolves to every ready pod of the persona, which is how the
    replicas find each other for conversation affinity (no API access, no RBAC).
    Labelled `<persona>-peers`, so that the persona's own Service stays the one labelled
    with the persona."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(owner, peers_name(owner, persona), f"{persona}-peers"),
        "spec": {"selector": selector(owner, persona), "clusterIP": "None",
                 "publishNotReadyAddresses": False,
                 "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http"},
                           {"name": "kv-handoff", "port": KV_HANDOFF_PORT,
                            "targetPort": "kv-handoff"}]},
    }


def not_found_deployment(owner: Owner, spec: ChatbotModelSpec) -> dict:
    """A small backend serving the project's HTML 404 page for every path."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(owner, not_found_name(owner), "not-found"),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector(owner, "not-found")},
            "template": {
                "metadata": {"labels": labels(owner, "not-found")},
                "spec": {
                    "securityContext": _pod_security(),
                    "containers": [{
                        "name": "not-found", "image": spec.image,
                        "command": ["chatbot", "not-found", "--host", "0.0.0.0",
                                    "--port", str(HTTP_PORT)],
                        "ports": [{"name": "http", "containerPort": HTTP_PORT}],
                        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"},
                                      "limits": {"memory": "256Mi"}},
                        "readinessProbe": _probe(contract.NOT_FOUND_HEALTH_PATH,
                                                 periodSeconds=10),
                        "securityContext": _container_security(),
                    }],
                },
            },
        },
    }


# ----------------------------------------------------------------------------- route

ROUTE_API_VERSIONS = {"Ingress": "networking.k8s.io/v1",
                      "HTTPRoute": "gateway.networking.k8s.io/v1"}


def ingress(owner: Owner, spec: ChatbotModelSpec) -> dict:
    """ingress-nginx: /office(/|$)(.*) -> office /$2, same for character; other paths get
    the project's 404 page from the not-found backend (an unknown path inside a persona
    gets the same page from the persona itself).

    The rule claims "/" itself (pathType Prefix, as the controller's own root location):
    spec.defaultBackend only covers a host's server, so without a host ingress-nginx would
    answer other paths with its own 404 page.

    No `default-backend` annotation (nor `custom-http-errors`, which needs it): besides
    serving the intercepted codes, that backend takes every request for a Service with no
    ready endpoint, so while a persona restarts its clients would get the 404 page, which
    they do not retry, instead of the controller's 503, which they do."""
    not_found = not_found_name(owner)

    def path(path: str, path_type: str, service: str) -> dict:
        return {"path": path, "pathType": path_type,
                "backend": {"service": {"name": service, "port": {"number": SERVICE_PORT}}}}

    paths = [*(path(f"/{p}(/|$)(.*)", "ImplementationSpecific", deployment_name(owner, p))
               for p in PERSONAS),
             path("/", "Prefix", not_found)]
    rule: dict = {"http": {"paths": paths}}
    if spec.route.host:
        rule["host"] = spec.route.host
    annotations = {
        "nginx.ingress.kubernetes.io/use-regex": "true",
        "nginx.ingress.kubernetes.io/rewrite-target": "/$2",
        "nginx.ingress.kubernetes.io/proxy-read-timeout": "300",
        # The service's own limit, so that a body too large is refused before it.
        "nginx.ingress.kubernetes.io/proxy-body-size": f"{contract.MAX_BODY_BYTES // 1024}k",
    }
    return {
        "apiVersion": ROUTE_API_VERSIONS["Ingress"], "kind": "Ingress",
        "metadata": _meta(owner, owner.name, "route", annotations=annotations),
        "spec": {"ingressClassName": spec.route.ingress_class_name,
                 "defaultBackend": {"service": {"name": not_found,
                                                "port": {"number": SERVICE_PORT}}},
                 "rules": [rule]},
    }


def http_route(owner: Owner, spec: ChatbotModelSpec) -> dict:
    """Gateway API: PathPrefix /office with ReplacePrefixMatch "/", on the port-8001 listener."""
    gw = spec.route.gateway
    assert gw is not None, "the CRD requires route.gateway for HTTPRoute"
    parent: dict = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gw.name}
    if gw.namespace:
        parent["namespace"] = gw.namespace
    if gw.section_name:
        parent["sectionName"] = gw.section_name
    else:
        parent["port"] = ROUTE_PORT

    def rule(prefix: str, backend: str, rewrite: bool) -> dict:
        r: dict = {"matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                   "backendRefs": [{"name": backend, "port": SERVICE_PORT}]}
        if rewrite:
            r["filters"] = [{"type": "URLRewrite", "urlRewrite": {"path": {
                "type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}]
        return r

    route_spec: dict = {
        "parentRefs": [parent],
        "rules": [*(rule(f"/{p}", deployment_name(owner, p), True) for p in PERSONAS),
                  rule("/", not_found_name(owner), False)],
    }
    if spec.route.host:
        route_spec["hostnames"] = [spec.route.host]
    return {"apiVersion": ROUTE_API_VERSIONS["HTTPRoute"], "kind": "HTTPRoute",
            "metadata": _meta(owner, owner.name, "route"), "spec": route_spec}


def route(owner: Owner, spec: ChatbotModelSpec) -> dict | None:
    if spec.route.kind == "Ingress":
        return ingress(owner, spec)
    if spec.route.kind == "HTTPRoute":
        return http_route(owner, spec)
    return None


def endpoints(owner: Owner, spec: ChatbotModelSpec) -> dict[str, str]:
    out = {p: f"http://{deployment_name(owner, p)}.{owner.namespace}.svc:{SERVICE_PORT}"
           for p in PERSONAS}
    if spec.route.kind != "None":
        base = f"http://{spec.route.host or '<ingress-address>'}:{ROUTE_PORT}"
        out |= {f"route-{p}": f"{base}/{p}/" for p in PERSONAS}
    return out
