"""Per persona: the GPU layers to run with ("auto" resolved from the GGUF facts the fetch
Job reported) and what its pods say they really offloaded (pure; no cluster).

* ``plan``: gpuLayers "auto" -> a number from gpu_fit.fit, with the estimate for status
  (``status.gpuFit.<persona>``), or a reason it cannot run at all (``too_large``).
* ``acceleration``: the pods' own report (``status.acceleration.<persona>``, written by the
  service after it loaded the model) against what they were told: a pod on a GPU profile
  that offloaded fewer layers runs on the CPU (a missing CUDA build, a driver mismatch, the
  wrong node), which is not Ready unless ``allowCpuFallback``.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatbot_contract import (
    REPORT_LAYERS_TOTAL,
    REPORT_OFFLOADED,
    REPORT_POD,
    REPORT_SETTINGS_HASH,
    REPORT_SUPPORTED,
)
from chatbot_operator import builders
from chatbot_operator.gguf_header import GgufError, GgufFacts
from chatbot_operator.gpu_fit import Budget, Fit, MiB, Workload, fit, quantity_bytes
from chatbot_operator.profiles import GPU_RESOURCE, GpuProfile
from chatbot_operator.spec import ChatbotModelSpec, Persona


@dataclass(frozen=True)
class Plan:
    layers: int | None = None  # resolved gpuLayers for "auto"; None: as the builders default
    fit: Fit | None = None
    status: dict | None = None  # status.gpuFit.<persona>
    too_large: str | None = None  # the model cannot run in this pod at all


def _on_gpu(p: Persona, profile: GpuProfile) -> bool:
    return profile.has_gpu or GPU_RESOURCE in ((p.resources or {}).get("limits") or {})


def facts_for(p: Persona, download: dict | None) -> GgufFacts | str:
    """The fetch Job's GGUF facts for this persona's current file, or why there are none."""
    entry = download or {}
    if entry.get("file") != p.file or entry.get("phase") != "Done":
        return "waiting for the download of the GGUF file"
    facts = entry.get("gguf")
    if not facts:
        return "the fetch Job reported no GGUF header"
    if "error" in facts:
        return f"the GGUF header could not be read: {facts['error']}"
    try:
        return GgufFacts.from_status(facts)
    except GgufError as exc:
        return str(exc)


def plan(spec: ChatbotModelSpec, persona: str, profile: GpuProfile, download: dict | None,
         config) -> Plan:
    p = spec.persona(persona)
    if p.gpu_layers != "auto":
        return Plan()
    on_gpu = _on_gpu(p, profile)
    if not builders.needs_fetch(spec):
        return Plan(status={"summary": "pvc:// source: no GGUF header read; "
                                       + ("all layers" if on_gpu else "no layers")})
    facts = facts_for(p, download)
    if isinstance(facts, str):
        return Plan(status={"summary": f"{facts}; " + ("all layers" if on_gpu
                                                        else "no layers")})
    vram = profile.vram_bytes if on_gpu else None
    if on_gpu and vram is None:
        return Plan(status={"summary": f"gpuProfile {profile.name} gives no vram: all layers"})
    limits = (p.resources or {}).get("limits") or {}
    budget = Budget(vram, quantity_bytes(limits.get("memory")),
                    gpu_overhead_bytes=config.gpu_overhead_mib * MiB,
                    margin_fraction=config.vram_margin,
                    host_overhead_bytes=config.host_overhead_mib * MiB)
    work = Workload(n_ctx=p.context_size, n_seq=p.max_concurrent, n_batch=p.batch_size)
    result = fit(facts, work, budget)
    status = {**result.to_status(), "file": p.file}
    too_large = None
    if not result.runnable:
        too_large = (f"{p.file} does not fit: {result.summary()}; give the pod more memory "
                     "(resources.limits.memory), a GPU profile with more VRAM, a smaller "
                     "contextSize or maxConcurrent, or a smaller quantization")
    return Plan(result.layers, result, status, too_large)


def resolved(spec: ChatbotModelSpec, plans: dict[str, Plan]) -> ChatbotModelSpec:
    """The spec with "auto" replaced by the computed layer counts, where known."""
    update = {name: spec.persona(name).model_copy(update={"gpu_layers": pl.layers})
              for name, pl in plans.items() if pl.layers is not None}
    return spec.model_copy(update=update) if update else spec


@dataclass(frozen=True)
class Acceleration:
    text: str  # the Accel column's part, e.g. "office gpu 33/33", "character cpu! 0/33"
    fallback: bool = False  # a GPU persona's pod offloaded fewer layers than told
    reported: bool = False
    message: str = ""


def acceleration(persona: str, p: Persona, profile: GpuProfile, told: int,
                 report: dict | None, settings_hash: str) -> Acceleration:
    """``told``: the n_gpu_layers the pods got (-1: all); ``report``: the pods' own account,
    trusted only when it was made with the current settings (its settingsHash)."""
    if not _on_gpu(p, profile) or told == 0:
        return Acceleration(f"{persona} cpu", message=f"{persona}: no GPU asked for")
    if not report or report.get(REPORT_SETTINGS_HASH) != settings_hash:
        return Acceleration(f"{persona} gpu ?",
                            message=f"{persona}: no pod has reported its GPU offload yet")
    total = int(report.get(REPORT_LAYERS_TOTAL) or 0)
    done = int(report.get(REPORT_OFFLOADED) or 0)
    want = total if told < 0 or told >= total else told
    figure = f"{done}/{want}" if want == total else f"{done}/{want} of {total}"
    if done < want:
        why = ("its llama.cpp has no GPU backend (a CPU build)"
               if report.get(REPORT_SUPPORTED) is False else "check the driver and the node")
        return Acceleration(
            f"{persona} cpu! {figure}", fallback=True, reported=True,
            message=f"{persona}: pod {report.get(REPORT_POD, '?')} offloaded {done} of the {want} "
                    f"layers it was told: it runs on the CPU; {why}")
    return Acceleration(f"{persona} gpu {figure}", reported=True,
                        message=f"{persona}: {done}/{want} layers on the GPU")
