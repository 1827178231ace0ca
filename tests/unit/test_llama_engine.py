"""The llama.cpp engines' own reading of what llama.cpp says."""

from __future__ import annotations

from chatbot.llm.loading import OFFLOADED as _OFFLOADED


def test_gpu_offload_is_read_from_llama_cpps_load_log():
    # The line llama.cpp's load_tensors prints on GPU builds (llama-model.cpp).
    line = "load_tensors: offloaded 33/33 layers to GPU\n"
    assert _OFFLOADED.search(line).groups() == ("33", "33")
    assert _OFFLOADED.search("load_tensors: offloading 32 repeating layers to GPU") is None
