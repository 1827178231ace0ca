"""The operator's own configuration (environment prefix CHATBOT_OPERATOR_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHATBOT_OPERATOR_", extra="ignore")

    field_manager: str = "chatbot-operator"
    fetch_image: str = Field(default="ghcr.io/treenut/chatbot-operator:2.0.0",
                             description="image of the model-fetch Job (the operator's image)")
    model_wait_timeout_s: float = Field(default=1800.0, ge=0,
                                        description="a pod waits this long for its model file")
    hf_endpoint: str | None = Field(default=None, description="Hugging Face mirror for hf://")
    retry_delay_s: float = Field(default=30.0, gt=0,
                                 description="retry delay while the route's API is missing")
    gpu_profiles: str = Field(default="", description="extra GPU profiles: JSON or a file path")
    vram_margin: float = Field(default=0.05, ge=0, lt=1,
                               description="gpuLayers auto: share of the VRAM left free")
    gpu_overhead_mib: int = Field(default=400, ge=0,
                                  description="gpuLayers auto: CUDA context and cuBLAS "
                                              "workspace, outside llama.cpp's buffers")
    host_overhead_mib: int = Field(default=400, ge=0,
                                   description="the service process itself (memory limit check)")
    coalesce_s: float = Field(default=0.5, ge=0,
                              description="watch events: one pass after this quiet period")
    coalesce_max_s: float = Field(default=3.0, ge=0,
                                  description="... but at most this long after the first")
    consistency_timeout_s: float = Field(default=60.0, gt=0,
                                         description="how long kopf awaits its own patches")
    prometheus_address: str = Field(
        default="http://prometheus-operated.monitoring.svc:9090",
        description="the Prometheus a persona's autoscaling queries when its "
                    "autoscaling.prometheusAddress is not set (kube-prometheus-stack in "
                    "namespace monitoring serves this)")
