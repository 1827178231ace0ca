"""Web search: ddgs result shapes through the port into the office prompt's reference block.

There is no internet here. Results recorded in ddgs's own shape ({title, href, body}, as
`DDGS().text()` returns them) go through the adapters; where the ddgs call itself must be
observed (its settings, a slow or failing call) `DDGS.text` is replaced by a stand-in, and
the test says so.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from ddgs.ddgs import DDGS  # the real class (`ddgs.DDGS` is a lazy proxy)
from ddgs.exceptions import DDGSException

from chatbot.core.prompts import office_messages
from chatbot.search.ddgs_search import DdgsSearch, results_from_ddgs
from chatbot.search.recorded import RecordedSearch

RECORDED = Path(__file__).resolve().parents[1] / "data" / "ddgs_recorded.json"
NOW = datetime(2026, 11, 24, 15, 7, tzinfo=UTC)  # 2026-11-25 00:07 in Seoul


def test_recorded_ddgs_results_land_in_the_reference_block_after_the_seoul_time():
    results = asyncio.run(RecordedSearch(RECORDED).search("회의록 요약"))
    new = office_messages(assistant_name="A", role="R", user_input="회의록 요약",
                          history=[], results=results, now=NOW)[-1].content
    assert new.startswith("회의록 요약\n\n")
    reference = new[new.index("참고 정보"):]
    lines = reference.splitlines()
    assert lines[1] == "현재 시간은 2026년 11월 25일 00시 07분입니다."
    assert lines[2] == "다음은 검색에서 가져온 관련 정보입니다:"
    assert lines[3:7] == [
        "[검색결과 1]", "제목: 회의록 작성법 - 효과적인 회의록 쓰는 방법 5가지",
        "내용: 회의록은 날짜, 참석자, 안건, 결정 사항, 후속 조치의 다섯 가지로 "
        "정리하면 읽기 쉽습니다.",
        "출처: https://example.kr/blog/meeting-minutes"]
    assert "[검색결과 3]" in reference and "[검색결과 4]" not in reference  # empty one dropped


def test_at_most_ten_results_are_kept():
    raw = json.loads(RECORDED.read_text(encoding="utf-8"))[:1] * 15
    assert len(results_from_ddgs(raw)) == 10


def test_ddgs_is_asked_for_korea_moderate_past_year_ten_results(monkeypatch):
    """Stand-in for `DDGS.text` (no internet): it records the arguments ddgs would get."""
    seen = {}

    def text(self, query, **kwargs):
        seen.update(query=query, **kwargs)
        return json.loads(RECORDED.read_text(encoding="utf-8"))

    monkeypatch.setattr(DDGS, "text", text)
    results = asyncio.run(DdgsSearch(timeout_s=5).search("회의록"))
    assert seen == {"query": "회의록", "region": "kr-kr", "safesearch": "moderate",
                    "timelimit": "y", "max_results": 10}
    assert [r.link for r in results][:1] == ["https://example.kr/blog/meeting-minutes"]


def test_a_slow_search_times_out_to_no_results_without_blocking_the_loop(monkeypatch):
    """Stand-in for `DDGS.text` that blocks for 2 s, as a stalled network call would."""
    monkeypatch.setattr(DDGS, "text", lambda self, query, **kw: time.sleep(2) or [])
    search = DdgsSearch(timeout_s=0.3)

    async def scenario():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick = asyncio.create_task(ticker())
        started = time.monotonic()
        results = await search.search("느린 검색")
        elapsed = time.monotonic() - started
        tick.cancel()
        return results, elapsed, ticks

    results, elapsed, ticks = asyncio.run(scenario())
    assert results == [] and search.failures == 1
    assert elapsed < 1.5
    assert ticks >= 10  # the event loop kept running while ddgs was blocked


def test_a_failing_search_means_no_results_and_a_warning(monkeypatch, caplog):
    """Stand-in for `DDGS.text` raising what ddgs raises when every engine fails."""
    def fail(self, query, **kwargs):
        raise DDGSException("No results found.")

    monkeypatch.setattr(DDGS, "text", fail)
    search = DdgsSearch(timeout_s=5)
    assert asyncio.run(search.search("q")) == []
    assert search.failures == 1
    assert "web search failed" in caplog.text


def test_unreadable_recording_means_no_results(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    search = RecordedSearch(broken)
    assert asyncio.run(search.search("q")) == [] and search.failures == 1
