"""gpuLayers "auto": how many layers of a model fit in a GPU's memory (pure; no cluster).

llama.cpp's placement (llama-model.cpp, load_tensors): with ``n_gpu_layers = k`` the output
layer (the head, il = n_layer) goes to the GPU first, then the last ``k - 1`` repeating
layers; the token embeddings (input layer) always stay in host memory. Each layer's KV cache
lives where the layer does. So the GPU holds, for k layers:

    weights(k) = head (k >= 1) + the k-1 last repeating layers
    kv(k)      = (k-1 layers) x cells x n_head_kv x (head_dim_k + head_dim_v) x bytes/element
    compute    = the graph's scratch buffer for one micro-batch (k >= 1)

and the answer is the largest k with ``weights + kv + compute + overhead <= VRAM x (1 -
margin)``. Host memory holds the rest (input layer, the layers and KV left on the CPU, the
CPU compute buffer, the process itself); when even that does not fit the pod's memory limit,
the model cannot run at all there (``Fit.runnable`` is False).

The KV cache of the batched engine is ``n_ctx`` cells per sequence times the sequences it
runs (maxConcurrent), each rounded up to 256 cells as llama.cpp does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from chatbot_contract import DEFAULT_BATCH_SIZE, DEFAULT_CONTEXT_SIZE
from chatbot_operator.gguf_header import GgufFacts

MiB = 1 << 20
GiB = 1 << 30
KV_CELL_PAD = 256
N_UBATCH_MAX = 512  # the service's micro-batch (services/chatbot/llm/batched_engine.py)
KV_BYTES_PER_ELEMENT = {"f16": 2.0, "f32": 4.0, "q8_0": 34 / 32}


@dataclass(frozen=True)
class Workload:
    """How the service will run the model (the persona's settings)."""

    n_ctx: int = DEFAULT_CONTEXT_SIZE  # per sequence
    n_seq: int = 1  # maxConcurrent: one sequence per slot
    n_batch: int = DEFAULT_BATCH_SIZE
    kv_cache_type: str = "f16"
    flash_attn: bool = True


@dataclass(frozen=True)
class Budget:
    """Memory the pod may use."""

    vram_bytes: int | None  # None: no GPU (or unknown size)
    memory_limit_bytes: int | None = None  # the container's memory limit; None: unlimited
    gpu_overhead_bytes: int = 400 * MiB  # CUDA context, cuBLAS workspace: not in any buffer
    margin_fraction: float = 0.05  # of the VRAM, for fragmentation and the display
    host_overhead_bytes: int = 400 * MiB  # the Python service itself


@dataclass(frozen=True)
class Fit:
    layers: int  # n_gpu_layers to use (0 .. n_layer + 1)
    layers_total: int  # n_layer + 1 (llama.cpp counts the output layer)
    weights_bytes: int  # on the GPU
    kv_cache_bytes: int  # on the GPU
    compute_bytes: int  # on the GPU
    total_bytes: int  # on the GPU, overhead included
    vram_bytes: int | None
    usable_bytes: int | None  # VRAM less the margin
    host_bytes: int  # host memory needed with that many layers on the GPU
    memory_limit_bytes: int | None
    kv_cells: int

    @property
    def runnable(self) -> bool:
        return self.memory_limit_bytes is None or self.host_bytes <= self.memory_limit_bytes

    def summary(self) -> str:
        overhead = self.total_bytes - self.weights_bytes - self.kv_cache_bytes - \
            self.compute_bytes
        gpu = (f"{self.layers}/{self.layers_total} layers on the GPU: weights "
               f"{_gib(self.weights_bytes)} + KV cache {_gib(self.kv_cache_bytes)} + compute "
               f"{_gib(self.compute_bytes)} + CUDA {_gib(overhead)} = "
               f"{_gib(self.total_bytes)} of ")
        gpu += (f"{_gib(self.usable_bytes)} usable ({_gib(self.vram_bytes)} VRAM)"
                if self.vram_bytes else "no VRAM")
        host = f"host {_gib(self.host_bytes)}"
        if self.memory_limit_bytes is not None:
            host += f" of the {_gib(self.memory_limit_bytes)} memory limit"
        return f"{gpu}; {host}"

    def to_status(self) -> dict:
        return {"layers": self.layers, "layersTotal": self.layers_total,
                "weightsBytes": self.weights_bytes, "kvCacheBytes": self.kv_cache_bytes,
                "computeBytes": self.compute_bytes, "totalBytes": self.total_bytes,
                "vramBytes": self.vram_bytes, "hostBytes": self.host_bytes,
                "memoryLimitBytes": self.memory_limit_bytes, "kvCells": self.kv_cells,
                "runnable": self.runnable, "summary": self.summary()}


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


def kv_cells(w: Workload) -> int:
    per_seq = math.ceil(w.n_ctx / KV_CELL_PAD) * KV_CELL_PAD
    return per_seq * w.n_seq


def kv_bytes_per_layer(facts: GgufFacts, w: Workload) -> int:
    per_cell = facts.n_head_kv * (facts.head_dim_k + facts.head_dim_v)
    return int(kv_cells(w) * per_cell * KV_BYTES_PER_ELEMENT[w.kv_cache_type])


def compute_bytes(facts: GgufFacts, w: Workload) -> int:
    """The scratch buffer llama.cpp reserves for the worst micro-batch graph (every token an
    output). ggml's allocator reuses memory along the graph, so the buffer is the larger of
    its two peaks: the logits at the end, or inside a layer the attention mask (f16 with
    flash attention, else f32), without flash attention the KQ matrix of every head over
    the sequence's cells, and the layer's activations. Checked against llama.cpp's own
    "compute buffer size" for SmolLM2 and the tiny model (tests/operator/test_gpu_fit.py)."""
    u = min(w.n_batch, N_UBATCH_MAX)
    n_kv = kv_cells(w) // max(w.n_seq, 1)
    logits = 4 * u * (facts.n_vocab + facts.n_embd)
    mask = n_kv * u * (2 if w.flash_attn else 4)
    kq = 0 if w.flash_attn else 4 * facts.n_head * u * n_kv
    layer = mask + kq + 4 * u * (4 * facts.n_embd + 2 * facts.n_ff)
    return max(logits, layer) + 4 * MiB  # inputs, positions, graph bookkeeping


def gpu_need(facts: GgufFacts, w: Workload, k: int) -> tuple[int, int, int]:
    """(weights, kv, compute) on the GPU with n_gpu_layers = k."""
    if k <= 0:
        return 0, 0, 0
    repeating = min(k - 1, facts.n_layer)
    weights = facts.output_bytes + sum(facts.layer_bytes[facts.n_layer - repeating:])
    return weights, repeating * kv_bytes_per_layer(facts, w), compute_bytes(facts, w)


def host_need(facts: GgufFacts, w: Workload, k: int, overhead: int) -> int:
    on_cpu = facts.n_layer - min(max(k - 1, 0), facts.n_layer)
    weights = facts.input_bytes + facts.other_bytes + sum(facts.layer_bytes[:on_cpu])
    if k <= 0:
        weights += facts.output_bytes
    # With everything on the GPU the CPU graph is small (the input rows), yet reserved.
    compute = compute_bytes(facts, w) if k <= facts.n_layer else 0
    return weights + on_cpu * kv_bytes_per_layer(facts, w) + compute + overhead


def fit(facts: GgufFacts, w: Workload, budget: Budget) -> Fit:
    total_layers = facts.n_layer + 1
    usable = None
    best = 0
    if budget.vram_bytes:
        usable = int(budget.vram_bytes * (1 - budget.margin_fraction))
        for k in range(total_layers, 0, -1):
            if sum(gpu_need(facts, w, k)) + budget.gpu_overhead_bytes <= usable:
                best = k
                break
    weights, kv, compute = gpu_need(facts, w, best)
    total = weights + kv + compute + (budget.gpu_overhead_bytes if best else 0)
    return Fit(best, total_layers, weights, kv, compute, total, budget.vram_bytes, usable,
               host_need(facts, w, best, budget.host_overhead_bytes),
               budget.memory_limit_bytes, kv_cells(w))


_UNITS = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "Ki": 1 << 10,
          "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


def quantity_bytes(value) -> int | None:
    """A Kubernetes memory quantity ("8Gi", "512M", 1e9) in bytes; None when absent."""
    if value is None:
        return None
    text = str(value).strip()
    for suffix in sorted(_UNITS, key=len, reverse=True):
        if suffix and text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * _UNITS[suffix])
    return int(float(text))
