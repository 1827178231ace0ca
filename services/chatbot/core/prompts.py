"""Chat messages for each persona: the seed's Korean system prompts, history, the new input.

The model's own chat template (from the GGUF) turns these messages into a prompt.

Everything that changes from one turn of a conversation to the next (the current Seoul
time, to the minute, and this turn's search results: the office prompt's reference block)
comes after the replayed history, at the end of the last user message, behind the new
question. The system prompt and the history are then the same tokens turn after turn, and
so is the question up to the reference block, so the engine (and llama-server's prompt
cache alike) reuses their KV cells at the next turn; the answer it gave followed the
reference block, so it is evaluated again, while the user reads (`ChatEngine.
prefill_next_turn`). With the time in the system prompt, a turn in another minute evaluated
the whole history again. The seed's wording is kept; only the reference block moved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from chatbot.domain.conversation import ChatMessage, OfficeTurn, PersonaTurn, SearchResult, Turn

SEOUL = ZoneInfo("Asia/Seoul")

OFFICE_SYSTEM = (
    "당신은 AI 어시스턴트 {name}입니다.\n"
    "당신의 역할: {role}\n\n"
    "지시 사항:\n"
    "- 한국어로 답변하세요\n"
    "- 친절하고 유익한 답변을 제공하세요\n"
    "- 질문과 관련 없는 참고 정보는 언급하지 마세요\n"
    "- 간결하면서도 핵심적인 정보를 포함하도록 하세요\n"
)

# The part of the seed's office system prompt that changes every turn; it follows the
# question in the new user message (see the module's docstring).
OFFICE_REFERENCE = (
    "{question}\n\n"
    "참고 정보 (사용자의 질문과 관련 있을 경우에만 활용하세요):\n"
    "{reference}"
)

CHARACTER_SYSTEM = (
    "당신은 {name}이라는 캐릭터입니다.\n"
    "당신의 설정: {context}\n"
    "초기 인사말: {greeting}\n\n"
    "지시 사항:\n"
    "- 캐릭터의 성격과 말투를 일관성 있게 유지하세요\n"
    "- 자연스럽고 몰입감 있는 대화를 만들어주세요\n"
    "- 캐릭터 설정에 맞는 행동과 반응을 보여주세요\n"
)


def seoul_time_line(now: datetime | None = None) -> str:
    now = (now or datetime.now(SEOUL)).astimezone(SEOUL)
    return f"현재 시간은 {now:%Y}년 {now:%m}월 {now:%d}일 {now:%H}시 {now:%M}분입니다."


def reference_block(results: list[SearchResult], now: datetime | None = None) -> str:
    """The current Seoul time, always, then the search results when there are any."""
    lines = [seoul_time_line(now)]
    if results:
        lines.append("다음은 검색에서 가져온 관련 정보입니다:")
        for i, r in enumerate(results, start=1):
            lines.append(f"[검색결과 {i}]\n제목: {r.title}\n내용: {r.snippet}\n출처: {r.link}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Prompt:
    """One turn's messages around its replayed history: `system` opens every turn of the
    conversation alike, `new` (the input, with whatever changes from turn to turn) ends it."""

    system: str
    new: str

    def messages(self, history: Sequence[Turn] = ()) -> list[ChatMessage]:
        messages = [ChatMessage("system", self.system)]
        for turn in history:
            messages.append(ChatMessage("user", turn.input_data))
            messages.append(ChatMessage("assistant", turn.output_data))
        messages.append(ChatMessage("user", self.new))
        return messages


def with_history(system: str, history: Sequence[Turn], user_input: str) -> list[ChatMessage]:
    return Prompt(system, user_input).messages(history)


def office_prompt(*, assistant_name: str, role: str, user_input: str,
                  results: list[SearchResult], now: datetime | None = None) -> Prompt:
    return Prompt(OFFICE_SYSTEM.format(name=assistant_name, role=role),
                  OFFICE_REFERENCE.format(reference=reference_block(results, now),
                                          question=user_input))


def character_prompt(*, character_name: str, greeting: str, context: str,
                     user_input: str) -> Prompt:
    return Prompt(CHARACTER_SYSTEM.format(name=character_name, context=context,
                                          greeting=greeting), user_input)


def office_messages(
    *, assistant_name: str, role: str, user_input: str, history: Sequence[Turn],
    results: list[SearchResult], now: datetime | None = None,
) -> list[ChatMessage]:
    return office_prompt(assistant_name=assistant_name, role=role, user_input=user_input,
                         results=results, now=now).messages(history)


def character_messages(
    *, character_name: str, greeting: str, context: str, user_input: str,
    history: Sequence[Turn],
) -> list[ChatMessage]:
    return character_prompt(character_name=character_name, greeting=greeting, context=context,
                            user_input=user_input).messages(history)


@dataclass(frozen=True)
class OfficeAssistant:
    """Who the office persona says it is (its settings `assistant_name`, `assistant_role`)."""

    name: str = ""
    role: str = ""


def persona_prompt(turn: PersonaTurn, results: list[SearchResult],
                   assistant: OfficeAssistant, now: datetime | None = None) -> Prompt:
    """The prompt of one persona turn: its system prompt and its new input, around history."""
    if isinstance(turn, OfficeTurn):
        return office_prompt(assistant_name=assistant.name, role=assistant.role,
                             user_input=turn.question, results=results, now=now)
    return character_prompt(character_name=turn.character_name, greeting=turn.greeting,
                            context=turn.context, user_input=turn.line)
