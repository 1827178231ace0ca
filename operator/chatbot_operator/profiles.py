"""GPU profiles: where a persona's pods run and which GPU they ask for.

Built in: rtx-2080, rtx-3060 (one NVIDIA GPU, pinned by the GPU feature discovery label)
and cpu. More come from the operator's configuration: CHATBOT_OPERATOR_GPU_PROFILES holds a
JSON object (or the path of a JSON/YAML file, e.g. a mounted ConfigMap) of
``{"name": {"nodeSelector": {...}, "tolerations": [...], "gpus": 1, "vram": "24Gi"}}``.
``vram`` is the memory of one GPU of the profile: gpuLayers "auto" fits the model into it
(gpu_fit.py); a GPU profile without it gets all layers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from chatbot_operator.gpu_fit import quantity_bytes

GPU_RESOURCE = "nvidia.com/gpu"
PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


@dataclass(frozen=True)
class GpuProfile:
    name: str
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict, ...] = ()
    gpus: int = 0
    vram_bytes: int | None = None  # memory of one GPU (gpuLayers "auto" fits into it)

    @property
    def has_gpu(self) -> bool:
        return self.gpus > 0


def _nvidia(name: str, product: str, vram_gib: int) -> GpuProfile:
    return GpuProfile(name, {PRODUCT_LABEL: product}, (GPU_TOLERATION,), gpus=1,
                      vram_bytes=vram_gib << 30)


BUILTIN: dict[str, GpuProfile] = {
    p.name: p for p in (
        _nvidia("rtx-2080", "NVIDIA-GeForce-RTX-2080", 8),
        _nvidia("rtx-3060", "NVIDIA-GeForce-RTX-3060", 12),
        GpuProfile("cpu"),
        GpuProfile("custom"),  # nodeSelector/tolerations from the spec only
    )
}

CONFIG_ENV = "CHATBOT_OPERATOR_GPU_PROFILES"


class UnknownProfile(ValueError):
    pass


def _parse(raw: str) -> dict:
    raw = raw.strip()
    if not raw:
        return {}
    if not raw.startswith("{"):
        raw = Path(raw).read_text()
    data = yaml.safe_load(raw) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{CONFIG_ENV}: expected a mapping of profile names, got {type(data)}")
    return data


def load_profiles(raw: str | None = None) -> dict[str, GpuProfile]:
    """Built-in profiles plus those configured (which may replace a built-in one)."""
    raw = os.environ.get(CONFIG_ENV, "") if raw is None else raw
    profiles = dict(BUILTIN)
    for name, conf in _parse(raw).items():
        conf = conf or {}
        gpus = int(conf.get("gpus", 1 if conf.get("nodeSelector") else 0))
        tolerations = conf.get("tolerations")
        if tolerations is None:
            tolerations = [GPU_TOLERATION] if gpus else []
        try:
            vram = quantity_bytes(conf.get("vram"))
        except ValueError:
            raise ValueError(f"{CONFIG_ENV}: {name}.vram must be a quantity like 24Gi, got "
                             f"{conf.get('vram')!r}") from None
        profiles[name] = GpuProfile(name, dict(conf.get("nodeSelector") or {}),
                                    tuple(tolerations), gpus, vram)
    return profiles


def resolve(name: str, profiles: dict[str, GpuProfile]) -> GpuProfile:
    try:
        return profiles[name]
    except KeyError:
        known = ", ".join(sorted(profiles))
        raise UnknownProfile(f"unknown gpuProfile {name!r}; known: {known}") from None


def dump(profiles: dict[str, GpuProfile]) -> str:
    return json.dumps({p.name: {"nodeSelector": p.node_selector,
                                "tolerations": list(p.tolerations), "gpus": p.gpus,
                                "vram": p.vram_bytes}
                       for p in profiles.values()})
