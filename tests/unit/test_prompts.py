"""Prompt assembly: the seed's system prompts, Seoul time, search results, the caller's context.

What changes from turn to turn (the time, search results) sits after the replayed history,
behind the new question, so a conversation's earlier prompt stays a prefix of its next.
"""

from __future__ import annotations

from datetime import UTC, datetime

from chatbot.core.prompts import OFFICE_SYSTEM, character_messages, office_messages
from chatbot.domain.conversation import SearchResult, Turn

NOW = datetime(2026, 11, 24, 15, 7, tzinfo=UTC)  # 2026-11-25 00:07 in Seoul


def test_office_reference_block_starts_with_seoul_time_even_without_search():
    msgs = office_messages(assistant_name="A", role="R", user_input="q", history=[], results=[],
                           now=NOW)
    assert [m.role for m in msgs] == ["system", "user"]
    assert msgs[0].content == OFFICE_SYSTEM.format(name="A", role="R")
    assert "한국어로 답변하세요" in msgs[0].content and "현재 시간" not in msgs[0].content
    assert msgs[1].content == ("q\n\n참고 정보 (사용자의 질문과 관련 있을 경우에만 활용하세요):\n"
                               "현재 시간은 2026년 11월 25일 00시 07분입니다.")


def test_office_renders_search_results_after_the_question_and_the_time():
    results = [SearchResult("제목1", "내용1", "https://a.example"),
               SearchResult("제목2", "내용2", "https://b.example")]
    new = office_messages(assistant_name="A", role="R", user_input="q", history=[],
                          results=results, now=NOW)[-1].content
    time_at = new.index("현재 시간은")
    block_at = new.index("다음은 검색에서 가져온 관련 정보입니다:")
    assert time_at < block_at
    assert "[검색결과 1]\n제목: 제목1\n내용: 내용1\n출처: https://a.example" in new
    assert "[검색결과 2]" in new and new.endswith("출처: https://b.example")
    assert new.startswith("q\n\n참고 정보")


def test_office_history_replays_the_plain_questions_between_system_and_new_turn():
    history = [Turn(1, "first?", "answer one", "t"), Turn(2, "second?", "answer two", "t")]
    msgs = office_messages(assistant_name="A", role="R", user_input="third?", history=history,
                           results=[], now=NOW)
    assert [(m.role, m.content) for m in msgs[1:-1]] == [
        ("user", "first?"), ("assistant", "answer one"),
        ("user", "second?"), ("assistant", "answer two")]
    assert "현재 시간" in msgs[-1].content and msgs[-1].content.startswith("third?\n\n")


def test_character_prompt_uses_the_callers_context_greeting_and_history():
    history = [Turn(1, "hello", "hi there", "t")]
    msgs = character_messages(character_name="Rachel", greeting="*waves*",
                              context="A shy astronomer.", user_input="how are you?",
                              history=history)
    assert [m.role for m in msgs] == ["system", "user", "assistant", "user"]
    assert "당신은 Rachel이라는 캐릭터입니다." in msgs[0].content
    assert "당신의 설정: A shy astronomer." in msgs[0].content
    assert "초기 인사말: *waves*" in msgs[0].content
    assert msgs[-1].content == "how are you?" and msgs[2].content == "hi there"
