"""A search adapter that answers every query with results recorded in a JSON file.

Where the office persona has no internet (an air-gapped deployment, an offline demo, the
tests), its `google_access` answers are grounded in a fixed set of results instead: the file
holds a list of ddgs-shaped results `[{"title", "href", "body"}, ...]`, as `DDGS().text()`
returns them, read on every search (so it can be replaced while the service runs). Select it
with `CHATBOT_SEARCH=recorded` and `CHATBOT_SEARCH_RECORDED_PATH=<file>`. An unreadable file
means no results, a warning and one more in `failures`, as a failed web search.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from chatbot.domain.conversation import SearchResult
from chatbot.search.ddgs_search import MAX_RESULTS, results_from_ddgs

log = logging.getLogger(__name__)


class RecordedSearch:
    def __init__(self, path: Path, max_results: int = MAX_RESULTS) -> None:
        self.path = Path(path)
        self.max_results = max_results
        self.failures = 0

    async def search(self, query: str) -> list[SearchResult]:
        try:
            raw = json.loads(await asyncio.to_thread(self.path.read_text, encoding="utf-8"))
            return results_from_ddgs(raw, self.max_results)
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            self.failures += 1
            log.warning("recorded search results unreadable (%s): %s", self.path, exc)
            return []
