"""The ChatbotModel CustomResourceDefinition, generated from one place.

`python -m chatbot_operator.crd` prints it; charts/chatbot/crds/chatbotmodels.yaml is that
output (a unit test keeps the two identical). Validation a person can read lives here as
OpenAPI constraints plus CEL rules with their own messages.
"""

from __future__ import annotations

import sys

import yaml

from chatbot_contract import (
    ACCELERATION,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONTEXT_SIZE,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
)
from chatbot_operator.spec import (
    AUTOSCALING_METRICS,
    CHARACTER_DEFAULTS,
    DEFAULT_SERVICE_IMAGE,
    DEFAULT_SOURCE,
    OFFICE_DEFAULTS,
)

SHA256 = {"type": "string", "pattern": "^[a-f0-9]{64}$",
          "description": "expected sha256 of the file (lower-case hex); verified after download"}
NAME = {"type": "string", "minLength": 1, "maxLength": 253}


def _secret_ref(what: str, default_key: str) -> dict:
    return {
        "type": "object", "description": f"the Secret holding {what}",
        "required": ["name"],
        "properties": {"name": NAME, "key": {**NAME, "default": default_key}},
    }


def _autoscaling() -> dict:
    metrics = ", ".join(f"{k} ({v})" for k, v in AUTOSCALING_METRICS.items())
    return {
        "type": "object",
        "description": "replicas driven by KEDA (a ScaledObject the operator owns) from a "
                       "Prometheus query; the persona's replicas is then only the count "
                       "used while KEDA is not installed",
        "required": ["maxReplicas"],
        "properties": {
            "minReplicas": {"type": "integer", "default": 1, "minimum": 1, "maximum": 64},
            "maxReplicas": {"type": "integer", "minimum": 1, "maximum": 64},
            "metric": {"type": "string", "default": "queue", "enum": list(AUTOSCALING_METRICS),
                       "description": f"what to scale on: {metrics}"},
            "target": {"type": "number", "default": 1,
                       "description": "the metric's value per pod to keep: queue: waiting "
                                      "requests per pod (e.g. 1); kvCache: the KV cache "
                                      "share in use per pod, above 0 and at most 1 "
                                      "(e.g. 0.8)"},
            "scaleDownStabilizationSeconds": {
                "type": "integer", "default": 300, "minimum": 0, "maximum": 3600,
                "description": "scale down only to the highest count wanted in this window"},
            "prometheusAddress": {
                "type": "string", "maxLength": 2048,
                "description": "the Prometheus KEDA queries (default: the operator's "
                               "setting, the chart's autoscaling.prometheusAddress)"},
        },
        "x-kubernetes-validations": [
            {"rule": "self.minReplicas <= self.maxReplicas",
             "message": "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
             "fieldPath": ".minReplicas"},
            {"rule": "self.target > 0.0",
             "message": "autoscaling.target must be greater than 0", "fieldPath": ".target"},
            {"rule": "self.metric != 'kvCache' || self.target <= 1.0",
             "message": "autoscaling.target of metric kvCache is a share: at most 1",
             "fieldPath": ".target"},
            {"rule": "!has(self.prometheusAddress) || "
                     "self.prometheusAddress.matches('^https?://[^/\\\\s]+(/\\\\S*)?$')",
             "message": "autoscaling.prometheusAddress must be an http:// or https:// URL",
             "fieldPath": ".prometheusAddress"},
        ],
    }


def _persona(defaults: dict, what: str) -> dict:
    return {
        "type": "object",
        "description": f"the {what} persona's Deployment",
        # A default object is checked against the rules as it stands: give it in full.
        "default": {**defaults, "contextSize": DEFAULT_CONTEXT_SIZE,
                    "batchSize": DEFAULT_BATCH_SIZE, "replicas": 1,
                    "allowCpuFallback": False},
        "properties": {
            "file": {"type": "string", "default": defaults["file"], "maxLength": 512,
                     "description": "GGUF file (path inside the source)"},
            "sha256": SHA256,
            "gpuProfile": {"type": "string", "default": defaults["gpuProfile"], "maxLength": 63,
                           "description": "rtx-2080, rtx-3060, cpu, a profile added through "
                                          "the operator's configuration, or custom "
                                          "(nodeSelector/tolerations only)"},
            "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
            "tolerations": {"type": "array", "items": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            "gpuLayers": {"x-kubernetes-int-or-string": True, "default": defaults["gpuLayers"],
                          "description": "layers offloaded to the GPU: a number (-1: all) or "
                                         "auto (as many as fit the profile's VRAM, computed "
                                         "from the GGUF header; none on cpu)"},
            "allowCpuFallback": {"type": "boolean", "default": False,
                                 "description": "on a GPU profile, a pod that offloaded fewer "
                                                "layers than told is Ready anyway (with an "
                                                "Accelerated=False warning condition)"},
            "kvHandoff": {"type": "boolean", "default": True,
                          "description": "with several replicas, a pod that drains (rollout, "
                                         "scale-down) hands its conversations' KV cells to "
                                         "the pods that own them next, and a pod that joins "
                                         "gets the ones it owns; false: their next turns "
                                         "evaluate the history again"},
            "maxConcurrent": {"type": "integer", "default": defaults["maxConcurrent"],
                              "minimum": 1, "maximum": 64},
            "contextSize": {"type": "integer", "default": DEFAULT_CONTEXT_SIZE, "minimum": 256,
                            "maximum": 131072},
            "batchSize": {"type": "integer", "default": DEFAULT_BATCH_SIZE, "minimum": 1,
                          "maximum": 131072},
            "replicas": {"type": "integer", "default": 1, "minimum": 0, "maximum": 64,
                         "description": "pods; with autoscaling, only while KEDA is not "
                                        "installed"},
            "autoscaling": _autoscaling(),
            "resources": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "image": {"type": "string", "description": "overrides spec.image"},
        },
        "x-kubernetes-validations": [
            {"rule": "self.file.endsWith('.gguf')",
             "message": "file must name a .gguf file", "fieldPath": ".file"},
            {"rule": "!self.file.contains('..') && !self.file.startsWith('/')",
             "message": "file must be a relative path without '..'", "fieldPath": ".file"},
            {"rule": "self.gpuProfile.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
             "message": "gpuProfile must be a lower-case name like rtx-2080",
             "fieldPath": ".gpuProfile"},
            {"rule": "self.gpuProfile != 'custom' || "
                     "(has(self.nodeSelector) && size(self.nodeSelector) > 0)",
             "message": "gpuProfile custom needs a nodeSelector", "fieldPath": ".nodeSelector"},
            {"rule": "type(self.gpuLayers) == int ? self.gpuLayers >= -1 : "
                     "self.gpuLayers == 'auto'",
             "message": "gpuLayers must be a number >= -1 (-1: all layers) or 'auto'",
             "fieldPath": ".gpuLayers"},
            {"rule": "self.batchSize <= self.contextSize",
             "message": "batchSize must not exceed contextSize", "fieldPath": ".batchSize"},
        ],
    }


def spec_schema() -> dict:
    return {
        "type": "object",
        "default": {},
        "properties": {
            "source": {
                "type": "object", "default": {"uri": DEFAULT_SOURCE, "revision": "main"},
                "properties": {
                    "uri": {"type": "string", "default": DEFAULT_SOURCE, "maxLength": 2048,
                            "description": "hf://owner/repo, https://host/dir or "
                                           "pvc://claim/path"},
                    "revision": {"type": "string", "default": "main", "maxLength": 255,
                                 "description": "hf:// revision (branch, tag, commit)"},
                    "tokenSecret": _secret_ref("a download token (hf://)", "token"),
                },
                "x-kubernetes-validations": [{
                    "rule": "self.uri.matches('^hf://[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$') || "
                            "self.uri.matches('^https://[^/\\\\s]+(/\\\\S*)?$') || "
                            "self.uri.matches('^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/\\\\S*)?$')",
                    "message": "source.uri must be hf://owner/repo, https://host/path or "
                               "pvc://claim/path",
                    "fieldPath": ".uri",
                }],
            },
            "image": {"type": "string", "default": DEFAULT_SERVICE_IMAGE,
                      "description": "the chat service image (both personas)"},
            "office": _persona(OFFICE_DEFAULTS, "office"),
            "character": _persona(CHARACTER_DEFAULTS, "character"),
            "storage": {
                "type": "object", "default": {},
                "properties": {
                    "size": {"x-kubernetes-int-or-string": True, "default": "20Gi",
                             "pattern": "^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$",
                             "description": "per persona PVC size"},
                    "storageClassName": {"type": "string"},
                    "accessModes": {"type": "array", "default": ["ReadWriteOnce"],
                                    "minItems": 1, "items": {"type": "string", "enum": [
                                        "ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany",
                                        "ReadWriteOncePod"]}},
                },
            },
            "route": {
                "type": "object", "default": {"kind": "Ingress", "ingressClassName": "nginx"},
                "properties": {
                    "kind": {"type": "string", "default": "Ingress",
                             "enum": ["Ingress", "HTTPRoute", "None"]},
                    "host": {"type": "string", "maxLength": 253},
                    "ingressClassName": {"type": "string", "default": "nginx"},
                    "gateway": {
                        "type": "object", "required": ["name"],
                        "properties": {"name": NAME, "namespace": NAME,
                                       "sectionName": NAME},
                    },
                },
                "x-kubernetes-validations": [{
                    "rule": "self.kind != 'HTTPRoute' || has(self.gateway)",
                    "message": "route.kind HTTPRoute needs route.gateway (the Gateway with the "
                               "port 8001 listener)",
                    "fieldPath": ".gateway",
                }],
            },
            "secrets": {
                "type": "object",
                "properties": {
                    "mongodb": _secret_ref("the MongoDB connection string (MONGO_URL)", "url"),
                    "openai": _secret_ref("the OpenAI API key (OPENAI_API_KEY)", "api-key"),
                },
            },
            "apiKeys": {
                "type": "object",
                "description": "API keys: callers of the persona routes must send one "
                               "(Authorization: Bearer or X-API-Key). The Secret's key holds "
                               "a JSON list of {name, key or sha256, routes (local, gpt, v1), "
                               "budgets {requestsPerMinute, tokensPerMinute}}; the pods "
                               "reload it when it changes. Without apiKeys every route is "
                               "open to anyone who reaches the route, the GPT routes too.",
                "required": ["secretName"],
                "properties": {
                    "secretName": NAME,
                    "key": {"type": "string", "default": "keys.json", "maxLength": 253,
                            "pattern": "^[-._a-zA-Z0-9]+$"},
                },
            },
        },
    }


def _persona_status() -> dict:
    return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def status_schema() -> dict:
    condition = {
        "type": "object", "required": ["type", "status"],
        "properties": {k: {"type": "string"} for k in (
            "type", "status", "reason", "message", "lastTransitionTime")},
    }
    return {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,  # kopf keeps its own bookkeeping here
        "properties": {
            "phase": {"type": "string"},
            "observedGeneration": {"type": "integer"},
            "conditions": {"type": "array", "items": condition},
            "officeReady": {"type": "string"},
            "characterReady": {"type": "string"},
            "modelProgress": {"type": "string"},
            "endpoints": {"type": "object", "additionalProperties": {"type": "string"}},
            "download": {"type": "object", "properties": {
                p: _persona_status() for p in ("office", "character")}},
            "gpuFit": {"type": "object", "properties": {
                p: _persona_status() for p in ("office", "character")}},
            ACCELERATION: {"type": "object", "properties": {
                p: _persona_status() for p in ("office", "character")}},
            # The pods' report of the API keys file they read (status.apiKeys.<persona>).
            "apiKeys": {"type": "object", "properties": {
                p: _persona_status() for p in ("office", "character")}},
            # Per persona: the ScaledObject's bounds (only while one is applied), and the
            # Deployment's desired/current/ready/unschedulable replicas.
            "autoscaling": {"type": "object", "properties": {
                p: _persona_status() for p in ("office", "character")}},
            "replicas": {"type": "object", "properties": {
                p: _persona_status() for p in ("office", "character")}},
            "accel": {"type": "string"},
            "route": {"type": "object", "properties": {
                "kind": {"type": "string", "nullable": True},
                "claim": {"type": "string", "nullable": True}}},
        },
    }


def crd() -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL,
                      "singular": KIND.lower(), "shortNames": ["cbm"],
                      "categories": ["chatbot"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Office", "type": "string", "jsonPath": ".status.officeReady"},
                    {"name": "Character", "type": "string",
                     "jsonPath": ".status.characterReady"},
                    {"name": "Model", "type": "string", "jsonPath": ".status.modelProgress"},
                    {"name": "Accel", "type": "string", "jsonPath": ".status.accel"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "One ChatBot AI installation: office and character "
                                   "Deployments on their GPUs, their models, and the route.",
                    "properties": {
                        "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(),
                        "status": status_schema(),
                    },
                    "x-kubernetes-validations": [{
                        "rule": "size(self.metadata.name) <= 40",
                        "message": "metadata.name must be at most 40 characters (children "
                                   "are named <name>-character-fetch-<hash>)",
                    }],
                }},
            }],
        },
    }


def render() -> str:
    header = ("# Generated by `python -m chatbot_operator.crd` - do not edit by hand.\n")
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(render())
