"""Chat messages for each persona: the seed's Korean system prompts, history, the new input.

The model's own chat template (from the GGUF) turns these messages into a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from chatbot.domain.conversation import ChatMessage, OfficeTurn, PersonaTurn, SearchResult, Turn

SEOUL = ZoneInfo("Asia/Seoul")

OFFICE_SYSTEM = (
    "당신은 AI 어시스턴트 {name}입니다.\n"
    "당신의 역할: {role}\n\n"
    "참고 정보 (사용자의 질문과 관련 있을 경우에만 활용하세요):\n"
    "{reference}\n\n"
    "지시 사항:\n"
    "- 한국어로 답변하세요\n"
    "- 친절하고 유익한 답변을 제공하세요\n"
    "- 질문과 관련 없는 참고 정보는 언급하지 마세요\n"
    "- 간결하면서도 핵심적인 정보를 포함하도록 하세요\n"
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


def with_history(system: str, history: list[Turn], user_input: str) -> list[ChatMessage]:
    messages = [ChatMessage("system", system)]
    for turn in history:
        messages.append(ChatMessage("user", turn.input_data))
        messages.append(ChatMessage("assistant", turn.output_data))
    messages.append(ChatMessage("user", user_input))
    return messages


def office_messages(
    *, assistant_name: str, role: str, user_input: str, history: list[Turn],
    results: list[SearchResult], now: datetime | None = None,
) -> list[ChatMessage]:
    system = OFFICE_SYSTEM.format(
        name=assistant_name, role=role, reference=reference_block(results, now)
    )
    return with_history(system, history, user_input)


def character_messages(
    *, character_name: str, greeting: str, context: str, user_input: str, history: list[Turn],
) -> list[ChatMessage]:
    system = CHARACTER_SYSTEM.format(name=character_name, context=context, greeting=greeting)
    return with_history(system, history, user_input)


@dataclass(frozen=True)
class OfficeAssistant:
    """Who the office persona says it is (its settings `assistant_name`, `assistant_role`)."""

    name: str = ""
    role: str = ""


def persona_messages(turn: PersonaTurn, history: list[Turn], results: list[SearchResult],
                     assistant: OfficeAssistant) -> list[ChatMessage]:
    """The messages of one persona turn: its system prompt, the replayed history, the input."""
    if isinstance(turn, OfficeTurn):
        return office_messages(assistant_name=assistant.name, role=assistant.role,
                               user_input=turn.question, history=history, results=results)
    return character_messages(character_name=turn.character_name, greeting=turn.greeting,
                              context=turn.context, user_input=turn.line, history=history)
