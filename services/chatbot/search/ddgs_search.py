"""DuckDuckGo text search through `ddgs` (the maintained successor of duckduckgo_search).

ddgs is synchronous, so each search runs in a worker thread under a timeout: the event loop
never blocks. Any failure (network, rate limit, timeout, no results) means no results, a
warning in the log and one more in `failures`, which /metrics exports.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable

from chatbot.domain.conversation import SearchResult

log = logging.getLogger(__name__)

# The reference implementation's search settings (v1.7.4).
REGION = "kr-kr"
SAFESEARCH = "moderate"
TIMELIMIT = "y"  # past year
MAX_RESULTS = 10


def results_from_ddgs(raw: Iterable[dict], limit: int = MAX_RESULTS) -> list[SearchResult]:
    """ddgs result dicts `{title, href, body}` as search results; entries without text dropped."""
    results = []
    for item in raw:
        title = str(item.get("title") or "").strip()
        snippet = str(item.get("body") or "").strip()
        link = str(item.get("href") or "").strip()
        if title or snippet:
            results.append(SearchResult(title=title, snippet=snippet, link=link))
        if len(results) == limit:
            break
    return results


class DdgsSearch:
    def __init__(self, timeout_s: float = 8.0, max_results: int = MAX_RESULTS) -> None:
        self.timeout_s = timeout_s
        self.max_results = max_results
        self.failures = 0

    async def search(self, query: str) -> list[SearchResult]:
        try:
            async with asyncio.timeout(self.timeout_s):
                raw = await asyncio.to_thread(self._search_blocking, query)
        except Exception as exc:  # failure means no results, never an error
            self.failures += 1
            log.warning("web search failed, answering without results: %s: %s",
                        type(exc).__name__, exc)
            return []
        return results_from_ddgs(raw, self.max_results)

    def _search_blocking(self, query: str) -> list[dict]:
        from ddgs import DDGS

        # ddgs bounds each engine's HTTP call too, so the thread ends soon after a timeout.
        client = DDGS(timeout=max(1, math.ceil(self.timeout_s)))
        return client.text(query, region=REGION, safesearch=SAFESEARCH, timelimit=TIMELIMIT,
                           max_results=self.max_results)
