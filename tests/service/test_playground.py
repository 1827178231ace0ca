"""The browser pages over HTTP: API docs served from the service itself (no CDN), and the
chat playground's page and streamed turn (tests/browser drives them in Chromium)."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

from chatbot.stores.embedded import EmbeddedHistoryStore
from tests.support.history import embedded_document

CHAR = {"character_name": "Rachel", "greeting": "안녕하세요!", "context": "수줍은 학생."}
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.IGNORECASE)


def _events(response) -> list[dict]:
    return [json.loads(line[5:]) for line in response.text.splitlines()
            if line.startswith("data:")]


def test_docs_and_redoc_load_their_assets_from_the_service_behind_the_prefix(gateway):
    with gateway.client() as http:
        for persona in ("office", "character"):
            for page in ("docs", "redoc"):
                html = http.get(f"/{persona}/{page}")
                assert html.status_code == 200
                assert f"/{persona}/openapi.json" in html.text
                assert not EXTERNAL.search(html.text), html.text  # no CDN, no fonts
                assets = re.findall(rf'"(/{persona}/static-offline-docs/[^"]+)"', html.text)
                assert assets, html.text
                for asset in assets:
                    r = http.get(asset)
                    assert r.status_code == 200 and len(r.content) > 1000, asset
                    assert b"cdn.redoc.ly" not in r.content, asset  # ReDoc's remote logo
            favicon = http.get(f"/{persona}/static-offline-docs/favicon.png")
            assert favicon.headers["content-type"] == "image/png"
            spec = http.get(f"/{persona}/openapi.json").json()
            assert spec["servers"] == [{"url": f"/{persona}"}]  # "Try it out" keeps the prefix
            assert "/playground/chat" not in spec["paths"] and "/" not in spec["paths"]


def test_one_persona_behind_a_stripping_proxy_points_its_docs_at_the_prefix(start_server):
    server = start_server("character", env={"CHATBOT_ROOT_PATH": "/character"})
    with server.client() as http:
        docs = http.get("/docs").text
        assert "/character/static-offline-docs/swagger-ui-bundle.js" in docs
        assert http.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
        page = http.get("/")
    assert page.status_code == 200 and 'data-persona="character"' in page.text


def test_the_playground_is_one_self_contained_page_per_persona(gateway):
    with gateway.client() as http:
        pages = {p: http.get(f"/{p}/") for p in ("office", "character")}
    for persona, page in pages.items():
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert f'data-persona="{persona}"' in page.text and "__PERSONA__" not in page.text
        assert not EXTERNAL.search(page.text)
        assert "<script src" not in page.text and 'rel="stylesheet"' not in page.text
        # Only the page's own script and style run, and they talk only to this service.
        csp = page.headers["content-security-policy"]
        nonce = re.search(r"'nonce-([^']+)'", csp).group(1)
        assert page.text.count(f'nonce="{nonce}"') == 2
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    first, second = (re.search(r"nonce-([^']+)", p.headers["content-security-policy"]).group(1)
                     for p in pages.values())
    assert first != second


def test_a_playground_turn_streams_pieces_and_is_remembered(gateway):
    db_id = str(uuid.uuid4())
    body = {**CHAR, "input_data": "오늘 뭐 했어?", "db_id": db_id, "user_id": "play-user"}
    with gateway.client() as http:
        first = http.post("/character/playground/chat", json=body)
        second = http.post("/character/playground/chat", json={**body, "input_data": "그리고?"})
    for r in (first, second):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert re.fullmatch(r'ttft;dur=[\d.]+;desc="first token"', r.headers["server-timing"])
    events = _events(first)
    deltas = [e["delta"] for e in events if "delta" in e]
    done = events[-1]
    assert len(deltas) > 5 and done["done"] is True
    assert done["tokens"] >= len(deltas) and done["tokens_per_s"] > 0 and done["ttft_ms"] > 0
    if not done["fallback_used"]:
        assert "".join(deltas).strip() == done["text"]
    assert _events(second)[-1]["history_turns"] == 1  # the first turn was replayed

    store = EmbeddedHistoryStore(Path(gateway.log.parent / f"h-{gateway.port}.db"))
    doc = embedded_document(store, "character", "play-user", db_id)
    assert [t["input_data"] for t in doc["value"]] == ["오늘 뭐 했어?", "그리고?"]
    assert doc["value"][0]["output_data"] == done["text"]


def test_playground_errors_keep_their_status_and_json(gateway):
    with gateway.client() as http:
        invalid = http.post("/office/playground/chat", json={"input_data": " "})
        huge = http.post("/character/playground/chat", json={
            "input_data": "안녕", "character_name": "뷁", "greeting": "뷁" * 2000,
            "context": "뷁" * 4000})
        form = http.post("/office/playground/chat", content="input_data=hi",
                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert invalid.status_code == 422 and invalid.json()["detail"].startswith("input_data")
    assert huge.status_code == 400 and huge.json()["code"] == "context_length_exceeded"
    assert form.status_code == 415
