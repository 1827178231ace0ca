"""The llama.cpp engines' own reading of what llama.cpp says."""

from __future__ import annotations

import asyncio

import pytest

from chatbot.llm.loading import OFFLOADED as _OFFLOADED


def test_gpu_offload_is_read_from_llama_cpps_load_log():
    # The line llama.cpp's load_tensors prints on GPU builds (llama-model.cpp).
    line = "load_tensors: offloaded 33/33 layers to GPU\n"
    assert _OFFLOADED.search(line).groups() == ("33", "33")
    assert _OFFLOADED.search("load_tensors: offloading 32 repeating layers to GPU") is None


def _conversation():
    from chatbot.domain.conversation import ChatMessage

    return [ChatMessage("system", "당신은 AI 어시스턴트입니다. " * 20),
            ChatMessage("user", "회의록을 잘 쓰는 방법을 알려주세요."),
            ChatMessage("assistant", "핵심을 먼저 쓰세요. " * 30),
            ChatMessage("user", "And the totals?")]


@pytest.mark.parametrize("kind", ["batched", "sequential"])
def test_both_engines_count_the_prompt_they_evaluate(tiny_models, kind):
    """The fit is only as good as the count: it must be the prompt generation then uses
    (the same template, the same BOS, the same special-token parsing)."""
    from chatbot.domain.errors import ContextLengthExceededError
    from chatbot.domain.personas import SamplingParams
    from chatbot.llm.batched_engine import BatchedEngine
    from chatbot.llm.llama_engine import LlamaEngine
    from chatbot.settings import ModelSettings

    settings = ModelSettings(n_ctx=2048, n_threads=1)
    params = SamplingParams(max_tokens=4, temperature=0, top_p=1)
    messages = _conversation()

    async def scenario():
        e = (BatchedEngine(tiny_models["office"], settings) if kind == "batched"
             else LlamaEngine(tiny_models["office"], settings))
        await e.load()
        try:
            counted = e.count_prompt_tokens(messages)
            completion = await e.complete(messages, params)
            with pytest.raises(ContextLengthExceededError):
                await e.complete([*messages[:-1], messages[-1].__class__(
                    "user", "뷁" * 700)], params)
            return counted, completion, e.context_tokens()
        finally:
            await e.close()

    counted, completion, context = asyncio.run(scenario())
    assert counted == completion.prompt_tokens > 200
    assert context == 2048
