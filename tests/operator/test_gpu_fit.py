"""gpuLayers "auto": the GGUF header reader and the fit estimate, on header-only files in the
real shapes of the seed's models (tensor infos only: the estimate never needs the weights)."""

from __future__ import annotations

import pytest

from chatbot_operator import gguf_header, gpu_fit
from chatbot_operator.gguf_header import GgufFacts, read_facts
from chatbot_operator.gpu_fit import Budget, GiB, MiB, Workload, fit
from tests.operator.gguf_shapes import LLAMA_31_8B, SMOLLM2_135M, Q, gguf, write_header

RTX_2080, RTX_3060 = 8 * GiB, 12 * GiB


@pytest.fixture(scope="module")
def llama_q4_1(tmp_path_factory) -> GgufFacts:
    return read_facts(write_header(tmp_path_factory.mktemp("h") / "8b.Q4_1.gguf",
                                   LLAMA_31_8B, Q.Q4_1))


@pytest.fixture(scope="module")
def llama_q4_0(tmp_path_factory) -> GgufFacts:
    return read_facts(write_header(tmp_path_factory.mktemp("h") / "8b.Q4_0.gguf",
                                   LLAMA_31_8B, Q.Q4_0))


def test_type_table_is_ggmls():
    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        if int(qtype) in gguf_header.GGML_TYPES:
            assert gguf_header.GGML_TYPES[int(qtype)] == (block, size), qtype.name


def test_header_only_file_gives_the_models_shape_and_sizes(tmp_path, llama_q4_1, llama_q4_0):
    path = write_header(tmp_path / "x.gguf", LLAMA_31_8B, Q.Q4_1)
    assert path.stat().st_size < 3 * MiB  # no weights in it
    f = llama_q4_1
    assert (f.architecture, f.n_layer, f.n_embd, f.n_head, f.n_head_kv) == ("llama", 32, 4096,
                                                                           32, 8)
    assert (f.head_dim_k, f.head_dim_v, f.n_ff, f.n_vocab) == (128, 128, 14336, 128256)
    # The published files: Q4_1 5.13 GB, Q4_0 4.66 GB (tensors; the header adds a few MB).
    assert 5.10e9 < f.tensor_bytes < 5.13e9
    assert 4.63e9 < llama_q4_0.tensor_bytes < 4.67e9
    assert len(set(f.layer_bytes)) == 1 and len(f.layer_bytes) == 32
    assert f.output_bytes == 128256 * 4096 * 210 // 256 + 4096 * 4  # Q6_K head + norm
    assert GgufFacts.from_status(f.to_status()) == f


def test_tied_embeddings_count_the_head_again(tmp_path):
    f = read_facts(write_header(tmp_path / "smol.gguf", SMOLLM2_135M, Q.Q4_1))
    assert (f.n_layer, f.n_embd, f.n_head_kv, f.head_dim_k, f.n_vocab) == (30, 576, 3, 64,
                                                                            49152)
    assert f.output_bytes == f.input_bytes + 576 * 4


def test_not_a_gguf_is_a_clear_error(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"<html>404</html>")
    with pytest.raises(gguf_header.GgufError, match="not a GGUF file"):
        read_facts(tmp_path / "x.gguf")
    with pytest.raises(gguf_header.GgufError, match="incomplete"):
        GgufFacts.from_status({"nLayer": 3})


def test_seed_office_q4_1_one_sequence_fits_the_rtx_2080(llama_q4_1):
    f = fit(llama_q4_1, Workload(n_ctx=8191, n_seq=1), Budget(RTX_2080))
    print(f.summary())
    assert f.layers == f.layers_total == 33  # what the seed ran by hand: all layers
    assert f.kv_cache_bytes == 1 * GiB  # 8192 cells x 32 layers x 8 heads x 256 x f16
    assert 4.4 * GiB < f.weights_bytes < 4.5 * GiB  # layers + the Q6_K head
    assert f.total_bytes <= f.usable_bytes < RTX_2080


def test_seed_character_q4_0_two_sequences_fits_the_rtx_3060(llama_q4_0):
    f = fit(llama_q4_0, Workload(n_ctx=8191, n_seq=2), Budget(RTX_3060))
    print(f.summary())
    assert f.layers == 33 and f.kv_cache_bytes == 2 * GiB
    assert f.total_bytes <= f.usable_bytes


def test_too_many_sequences_offload_what_fits_and_no_more(llama_q4_0):
    w, budget = Workload(n_ctx=8191, n_seq=4), Budget(RTX_2080)
    f = fit(llama_q4_0, w, budget)
    print(f.summary())
    assert 0 < f.layers < 33
    assert f.total_bytes <= f.usable_bytes
    one_more = sum(gpu_fit.gpu_need(llama_q4_0, w, f.layers + 1)) + budget.gpu_overhead_bytes
    assert one_more > f.usable_bytes


def test_kv_cache_type_and_flash_attention_change_the_estimate(llama_q4_1):
    f16 = gpu_fit.kv_bytes_per_layer(llama_q4_1, Workload())
    q8 = gpu_fit.kv_bytes_per_layer(llama_q4_1, Workload(kv_cache_type="q8_0"))
    assert q8 == f16 * 34 // 64
    assert gpu_fit.compute_bytes(llama_q4_1, Workload(flash_attn=False)) >= \
        gpu_fit.compute_bytes(llama_q4_1, Workload()) + 256 * MiB  # the KQ matrix


def test_smaller_custom_gpu_gets_the_head_first(llama_q4_1):
    f = fit(llama_q4_1, Workload(n_ctx=4096), Budget(2 * GiB))
    assert 1 <= f.layers < 10
    weights, _, _ = gpu_fit.gpu_need(llama_q4_1, Workload(), 1)
    assert weights == llama_q4_1.output_bytes  # llama.cpp offloads the output layer first


def test_model_that_cannot_run_even_on_the_cpu_within_the_memory_limit(llama_q4_1):
    f = fit(llama_q4_1, Workload(), Budget(None, memory_limit_bytes=4 * GiB))
    assert f.layers == 0 and not f.runnable
    assert "of the 4.00 GiB memory limit" in f.summary()
    assert fit(llama_q4_1, Workload(), Budget(None, 8 * GiB)).runnable
    # On the GPU most of it leaves host memory.
    assert fit(llama_q4_1, Workload(), Budget(RTX_2080, 2 * GiB)).runnable


@pytest.mark.parametrize("text,expected", [("8Gi", 8 * GiB), ("512Mi", 512 * MiB),
                                           ("1G", 10**9), (2048, 2048), (None, None)])
def test_quantities(text, expected):
    assert gpu_fit.quantity_bytes(text) == expected


def _llama_cpp_buffers(path, w: Workload) -> dict[str, float]:
    """llama.cpp's own buffer sizes (MiB) from its load log, CPU backend, as the service
    loads a model (batched engine: n_ctx per sequence, non-unified KV, n_ubatch 512)."""
    import re

    import llama_cpp as lc
    from llama_cpp import _internals

    from chatbot.llm.loading import LlamaLogCapture

    mp = lc.llama_model_default_params()
    mp.n_gpu_layers = 0
    cp = lc.llama_context_default_params()
    cp.n_ctx, cp.n_seq_max, cp.kv_unified = w.n_ctx * w.n_seq, w.n_seq, False
    cp.n_batch, cp.n_ubatch = w.n_batch, min(w.n_batch, gpu_fit.N_UBATCH_MAX)
    cp.flash_attn_type = (lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if w.flash_attn
                          else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    with LlamaLogCapture() as lines:
        model = _internals.LlamaModel(path_model=str(path), params=mp, verbose=False)
        ctx = _internals.LlamaContext(model=model, params=cp, verbose=False)
    ctx.close()
    model.close()
    found = {}
    for line in lines:
        for key, pattern in (("weights", r"CPU_Mapped model buffer size =\s+([\d.]+) MiB"),
                             ("kv", r"CPU KV buffer size =\s+([\d.]+) MiB"),
                             ("compute", r"CPU compute buffer size =\s+([\d.]+) MiB")):
            if m := re.search(pattern, line):
                found[key] = float(m.group(1))
    return found


@pytest.mark.parametrize("w", [Workload(n_ctx=8191, n_seq=3),
                               Workload(n_ctx=4096, n_seq=2, flash_attn=False)],
                         ids=["3seq-fa", "2seq-nofa"])
@pytest.mark.parametrize("model", ["smollm2", "tiny"])
def test_estimate_matches_llama_cpps_own_buffers(model, w, tmp_path):
    """The estimate from a header-only copy against what llama.cpp allocates for the real
    file here (CPU build: the same buffers a GPU gets, on the host)."""
    pytest.importorskip("llama_cpp")
    from tests.operator.gguf_shapes import copy_header

    if model == "smollm2":
        from chatbot.llm.bundled import bundled_model_path

        path = bundled_model_path()
    else:
        from chatbot_dev.tiny_model import write_tiny_model

        path = write_tiny_model(tmp_path / "tiny.gguf", quant="Q4_1")
    facts = read_facts(copy_header(path, tmp_path / "header-only.gguf"))
    assert facts == read_facts(path)
    real = _llama_cpp_buffers(path, w)
    est = {"weights": facts.tensor_bytes / MiB,
           "kv": facts.n_layer * gpu_fit.kv_bytes_per_layer(facts, w) / MiB,
           "compute": gpu_fit.compute_bytes(facts, w) / MiB}
    print(f"{model} {w}: llama.cpp {real}, estimate "
          f"{ {k: round(v, 2) for k, v in est.items()} }")
    assert est["weights"] == pytest.approx(real["weights"], abs=0.01)
    assert est["kv"] == pytest.approx(real["kv"], abs=0.01)
    assert real["compute"] <= est["compute"] <= real["compute"] * 1.4 + 1
