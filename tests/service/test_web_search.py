"""Office answers with `google_access: true`, end to end over HTTP.

The service runs the recorded search adapter (`CHATBOT_SEARCH=recorded`: ddgs-shaped results
from tests/data/ddgs_recorded.json, since there is no internet here). The prompt the service
assembles is read at a tiny real OpenAI-compatible upstream (tests/service/upstreams.py) that
the GPT route sends it to; the Llama route runs the same code on the local model. The results
and the current time follow the question in the last user message (after the history, so
they never change a conversation's cached prefix).
"""

from __future__ import annotations

from pathlib import Path

from tests.service.upstreams import RecordingUpstream

RECORDED = Path(__file__).resolve().parents[1] / "data" / "ddgs_recorded.json"


def test_google_access_puts_search_results_behind_the_new_question(start_server):
    env = {"CHATBOT_SEARCH": "recorded", "CHATBOT_SEARCH_RECORDED_PATH": str(RECORDED)}
    with RecordingUpstream() as upstream:
        server = start_server(env={**env, "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": upstream.url})
        with server.client() as http:
            searched = http.post("/office/gpt4.1", json={"input_data": "회의록 요약 방법",
                                                         "google_access": True})
            plain = http.post("/office/gpt4.1", json={"input_data": "회의록 요약 방법",
                                                      "google_access": False})
            llama = http.post("/office/Llama", json={"input_data": "회의록 요약 방법",
                                                     "google_access": True})
        server.stop()
    assert [r.status_code for r in (searched, plain, llama)] == [200, 200, 200]
    searched_messages = upstream.messages(0)
    system, with_search = searched_messages[0]["content"], searched_messages[-1]["content"]
    without = upstream.messages(1)[-1]["content"]
    assert "현재 시간은" not in system and "지시 사항" in system
    assert with_search.startswith("회의록 요약 방법\n\n참고 정보")
    time_at = with_search.index("현재 시간은")
    block_at = with_search.index("다음은 검색에서 가져온 관련 정보입니다:")
    assert time_at < block_at
    assert "[검색결과 1]\n제목: 회의록 작성법 - 효과적인 회의록 쓰는 방법 5가지" in with_search
    assert "출처: https://example.com/minutes-guide" in with_search
    assert "현재 시간은" in without and "검색결과" not in without
