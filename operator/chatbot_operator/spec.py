"""The ChatbotModel spec as a typed model, with the seed's defaults.

The CRD (crd.py) declares the same defaults and the validation the API server enforces;
this model is what the builders read, so a spec that passed the API server always parses.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from chatbot_contract import DEFAULT_BATCH_SIZE, DEFAULT_CONTEXT_SIZE

PERSONAS = ("office", "character")

DEFAULT_SOURCE = "hf://QuantFactory/Meta-Llama-3.1-8B-Claude-GGUF"
DEFAULT_SERVICE_IMAGE = "ghcr.io/treenut/chatbot-service:2.0.0-cuda"


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class SecretKeyRef(_Model):
    name: str
    key: str


class Source(_Model):
    uri: str = DEFAULT_SOURCE
    revision: str = "main"
    token_secret: SecretKeyRef | None = Field(default=None, alias="tokenSecret")

    @property
    def scheme(self) -> Literal["hf", "https", "pvc"]:
        return self.uri.split("://", 1)[0]  # type: ignore[return-value]

    @property
    def pvc_claim_and_path(self) -> tuple[str, str]:
        claim, _, path = self.uri.removeprefix("pvc://").partition("/")
        return claim, path.strip("/")


# autoscaling.metric -> the llama.cpp metric (served by every persona pod's /metrics) a KEDA
# ScaledObject scales on. queue: requests waiting for a generation slot; kvCache: the share
# of the KV cache in use (0..1).
AUTOSCALING_METRICS = {
    "queue": "llamacpp:requests_deferred",
    "kvCache": "llamacpp:kv_cache_usage_ratio",
}


class Autoscaling(_Model):
    """A persona's replicas driven by KEDA from a Prometheus query (builders.scaled_object)."""

    min_replicas: int = Field(default=1, alias="minReplicas")
    max_replicas: int = Field(alias="maxReplicas")
    metric: Literal["queue", "kvCache"] = "queue"
    target: float = 1.0
    scale_down_stabilization_seconds: int = Field(default=300,
                                                  alias="scaleDownStabilizationSeconds")
    prometheus_address: str | None = Field(default=None, alias="prometheusAddress")


class Persona(_Model):
    file: str
    sha256: str | None = None
    gpu_profile: str = Field(alias="gpuProfile")
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict] = Field(default_factory=list)
    gpu_layers: int | Literal["auto"] = Field(alias="gpuLayers")
    max_concurrent: int = Field(alias="maxConcurrent")
    context_size: int = Field(default=DEFAULT_CONTEXT_SIZE, alias="contextSize")
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, alias="batchSize")
    replicas: int = 1
    autoscaling: Autoscaling | None = None
    resources: dict = Field(default_factory=dict)
    image: str | None = None
    # A pod on a GPU profile that offloaded fewer layers than told is not Ready, unless this.
    allow_cpu_fallback: bool = Field(default=False, alias="allowCpuFallback")
    # A draining pod hands its conversations' KV cells to the pods that own them next.
    kv_handoff: bool = Field(default=True, alias="kvHandoff")


OFFICE_DEFAULTS = {
    "file": "Meta-Llama-3.1-8B-Claude.Q4_1.gguf", "gpuProfile": "rtx-2080",
    "gpuLayers": "auto", "maxConcurrent": 1,
}
CHARACTER_DEFAULTS = {
    "file": "Meta-Llama-3.1-8B-Claude.Q4_0.gguf", "gpuProfile": "rtx-3060",
    "gpuLayers": 50, "maxConcurrent": 2,
}


class Storage(_Model):
    size: str = "20Gi"
    storage_class_name: str | None = Field(default=None, alias="storageClassName")
    access_modes: list[str] = Field(default_factory=lambda: ["ReadWriteOnce"],
                                    alias="accessModes")


class GatewayRef(_Model):
    name: str
    namespace: str | None = None
    section_name: str | None = Field(default=None, alias="sectionName")


class Route(_Model):
    kind: Literal["Ingress", "HTTPRoute", "None"] = "Ingress"
    host: str | None = None
    ingress_class_name: str = Field(default="nginx", alias="ingressClassName")
    gateway: GatewayRef | None = None


class Secrets(_Model):
    mongodb: SecretKeyRef | None = None
    openai: SecretKeyRef | None = None


class ApiKeys(_Model):
    """The Secret of API keys the persona pods accept (chatbot.domain.api_keys's format)."""

    secret_name: str = Field(alias="secretName")
    key: str = "keys.json"


class ChatbotModelSpec(_Model):
    source: Source = Source()
    image: str = DEFAULT_SERVICE_IMAGE
    office: Persona = Persona(**OFFICE_DEFAULTS)
    character: Persona = Persona(**CHARACTER_DEFAULTS)
    storage: Storage = Storage()
    route: Route = Route()
    secrets: Secrets = Secrets()
    api_keys: ApiKeys | None = Field(default=None, alias="apiKeys")

    @classmethod
    def parse(cls, spec: dict) -> ChatbotModelSpec:
        """Parse a spec; missing persona fields take that persona's defaults."""
        data = dict(spec or {})
        for persona, defaults in (("office", OFFICE_DEFAULTS), ("character", CHARACTER_DEFAULTS)):
            data[persona] = {**defaults, **(data.get(persona) or {})}
        return cls.model_validate(data)

    def persona(self, name: str) -> Persona:
        return getattr(self, name)

    def image_for(self, name: str) -> str:
        return self.persona(name).image or self.image
