"""The service's browser pages in headless Chromium with the network closed: Swagger UI and
ReDoc render and "Try it out" reaches the persona behind its prefix; the chat playground
streams an answer in Korean, keeps the conversation (and the history store has it), shows
errors as sentences, and shows HTML in answers and settings as text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatbot.stores.embedded import EmbeddedHistoryStore
from tests.support.browser import ask, try_it_out
from tests.support.history import embedded_document

SUMMARIES = {"office": "Answer a work question with the local Llama model",
             "character": "Reply in character with the local Llama model"}
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'

# Counts the answer's text updates while it streams (one per streamed piece).
COUNT_UPDATES = """() => {
  window.__updates = 0;
  new MutationObserver((records) => {
    for (const r of records) {
      const el = r.target.nodeType === 1 ? r.target : r.target.parentElement;
      if (el && el.classList.contains("text") && el.closest(".streaming")) window.__updates++;
    }
  }).observe(document.getElementById("log"),
             {subtree: true, childList: true, characterData: true});
}"""


# How many distinct glyphs the element's font draws for three Hangul syllables: 3 when
# Korean renders, 1 when each is the same "missing glyph" box.
HANGUL_GLYPHS = """(selector) => {
  const font = getComputedStyle(document.querySelector(selector)).font;
  const draw = (ch) => {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 48;
    const g = canvas.getContext("2d");
    g.font = font;
    g.fillText(ch, 4, 36);
    return canvas.toDataURL();
  };
  return new Set(["한", "국", "어"].map(draw)).size;
}"""


def _stored(server, persona: str, user_id: str, db_id: str) -> dict | None:
    store = EmbeddedHistoryStore(Path(server.log.parent / f"h-{server.port}.db"))
    return embedded_document(store, persona, user_id, db_id)


def _no_markup_in_log(page) -> None:
    assert page.locator("#log img, #log script, #log b").count() == 0
    assert page.evaluate("window.__pwned") is None


@pytest.mark.parametrize("persona", ["office", "character"])
def test_swagger_ui_lists_the_operations_and_try_it_out_calls_the_prefix(
        persona, gateway, visit, artifacts):
    v = visit(gateway.port)
    page = v.page
    page.goto(f"{v.url}/{persona}/docs")
    page.wait_for_selector(".opblock-summary-path")
    paths = page.locator(".opblock-summary-path").evaluate_all(
        "els => els.map(e => e.getAttribute('data-path'))")
    assert {"/Llama", "/v1/chat/completions", "/performance", "/readyz"} <= set(paths)
    assert page.get_by_text(SUMMARIES[persona]).count() == 1

    operation, response = try_it_out(v, persona, "/performance")
    assert response.status == 200
    live = operation.locator(".live-responses-table")
    live.wait_for()
    assert "total_requests" in live.text_content()
    assert f"{v.url}/{persona}/performance" in operation.locator(".request-url").text_content()
    page.screenshot(path=artifacts / f"{persona}-docs.png")
    live.scroll_into_view_if_needed()
    page.screenshot(path=artifacts / f"{persona}-docs-try-it-out.png")
    assert any(u.endswith(f"/{persona}/static-offline-docs/swagger-ui-bundle.js")
               for u in v.requests)


@pytest.mark.parametrize("persona", ["office", "character"])
def test_redoc_renders_every_operation(persona, gateway, visit, artifacts):
    v = visit(gateway.port)
    page = v.page
    page.goto(f"{v.url}/{persona}/redoc")
    page.get_by_role("heading", name=SUMMARIES[persona]).wait_for()
    sections = page.locator('[data-section-id*="/operation/"]').count()
    assert sections >= 6, sections
    page.screenshot(path=artifacts / f"{persona}-redoc.png")


def test_office_playground_streams_a_korean_answer_and_keeps_the_conversation(
        gateway, visit, artifacts):
    v = visit(gateway.port)
    page = v.page
    page.goto(f"{v.url}/office/")
    db_id = page.text_content("#db-id")
    assert len(db_id) == 36
    page.evaluate(COUNT_UPDATES)

    question = "회의록을 요약하는 방법을 알려주세요."
    answer, stats = ask(page, question)
    assert page.evaluate("window.__updates") > 3  # shown piece by piece as it streamed
    assert answer.strip() and "TTFT" in stats and "tokens/s" in stats, stats
    assert "0 turns replayed" in stats
    assert page.evaluate(HANGUL_GLYPHS, ".msg.user .text") == 3  # Korean, not boxes
    stored = _stored(gateway, "office", "playground", db_id)
    assert [(t["input_data"], t["output_data"]) for t in stored["value"]] == [(question, answer)]

    _, stats = ask(page, "첫 번째 단계는 무엇인가요?")
    assert "1 turns replayed" in stats  # the same conversation: the first turn came back
    page.screenshot(path=artifacts / "office-playground.png", full_page=True)

    page.reload()  # the tab keeps its conversation
    assert page.text_content("#db-id") == db_id
    assert page.locator(".msg").count() == 4
    assert page.locator(".msg.user .text").first.text_content() == question

    page.click("#new-conversation")
    assert page.text_content("#db-id") not in ("", db_id)
    assert page.locator(".msg").count() == 0
    assert len(_stored(gateway, "office", "playground", db_id)["value"]) == 2


def test_character_playground_uses_the_settings_and_shows_their_html_as_text(
        gateway, visit, artifacts):
    v = visit(gateway.port)
    page = v.page
    page.goto(f"{v.url}/character/")
    assert page.locator("#settings").get_attribute("open") is not None
    name, greeting = "<b>Mina</b>", f"{HOSTILE} 안녕! 나는 미나야."
    context = f"{HOSTILE} 미나는 수줍은 대학생이다."
    page.fill("#character-name", name)
    page.fill("#greeting", greeting)
    page.fill("#context", context)
    page.fill("#user-id", "browser-char")
    db_id = page.text_content("#db-id")

    with page.expect_request("**/character/playground/chat") as sent:
        answer, stats = ask(page, "*손을 흔든다* 안녕, 미나!")
    body = json.loads(sent.value.post_data)
    assert (body["character_name"], body["greeting"], body["context"]) == (name, greeting,
                                                                         context)
    bubbles = page.locator(".msg.assistant")
    assert bubbles.first.locator(".text").text_content() == greeting  # the greeting, as text
    assert bubbles.first.locator(".who").text_content() == name
    assert "TTFT" in stats
    _no_markup_in_log(page)
    stored = _stored(gateway, "character", "browser-char", db_id)
    assert stored["value"][0]["output_data"] == answer
    page.screenshot(path=artifacts / "character-playground.png", full_page=True)


def test_an_answer_holding_html_is_shown_as_text(gateway, visit, artifacts):
    v = visit(gateway.port)
    page = v.page
    answer = f"{HOSTILE}</span></div><h1>not a heading</h1>"
    events = [{"delta": answer[:20]}, {"delta": answer[20:]},
              {"done": True, "text": answer, "tokens": 2, "ttft_ms": 5.0,
               "tokens_per_s": 40.0, "total_ms": 50.0, "history_turns": 0}]
    page.route("**/office/playground/chat", lambda route: route.fulfill(
        status=200, content_type="text/event-stream",
        headers={"Server-Timing": 'ttft;dur=5.0;desc="first token"'},
        body="".join(f"data: {json.dumps(e)}\n\n" for e in events)))
    page.goto(f"{v.url}/office/")
    shown, _ = ask(page, "<i>question</i>")
    assert shown == answer
    assert page.locator(".msg.user .text").text_content() == "<i>question</i>"
    _no_markup_in_log(page)
    assert page.locator("#log h1, #log i").count() == 0
    page.screenshot(path=artifacts / "office-playground-html-as-text.png", full_page=True)


def _error_after_asking(page, question: str) -> str:
    page.fill("#input", question)
    page.press("#input", "Enter")
    page.wait_for_function("() => document.getElementById('error').textContent")
    assert page.locator(".msg.assistant.streaming").count() == 0
    return page.text_content("#error")


def test_errors_are_readable_sentences_and_the_question_is_kept(gateway, visit, artifacts):
    v = visit(gateway.port)
    page = v.page
    page.goto(f"{v.url}/character/")
    page.fill("#context", "뷁" * 4000)  # far more tokens than the model's context holds
    message = _error_after_asking(page, "안녕?")
    assert "does not fit the model's context" in message and "new conversation" in message
    assert page.input_value("#input") == "안녕?"  # kept, to retry
    assert page.locator(".msg.user").count() == 0  # not answered, not in the conversation
    page.click("#settings summary")  # fold the long context away for the screenshot
    page.screenshot(path=artifacts / "character-playground-400.png", full_page=True)
    page.click("#settings summary")

    page.fill("#context", "수줍은 학생.")
    page.fill("#user-id", " ")
    assert "user_id" in _error_after_asking(page, "안녕?")  # the real 422 names the field

    page.route("**/character/playground/chat", lambda route: route.fulfill(
        status=429, headers={"Retry-After": "7"}, content_type="application/json",
        body=json.dumps({"detail": "The queue is full (2 waiting, 2 running); retry in 7 s.",
                         "code": "QUEUE_OVERLOADED", "retry_after": 7})))
    page.fill("#user-id", "playground")
    message = _error_after_asking(page, "안녕?")
    assert "busy" in message and "Try again in 7 s" in message
    page.screenshot(path=artifacts / "character-playground-429.png", full_page=True)


def test_a_loading_model_is_a_503_sentence(start_server, visit, tmp_path, artifacts):
    server = start_server("office", ready=False, models=False, env={
        "CHATBOT_OFFICE_MODEL": str(tmp_path / "never.gguf"),
        "CHATBOT_MODEL_WAIT_TIMEOUT_S": "600"})
    server.wait_until("/readyz", status=503)
    v = visit(server.port)
    page = v.page
    page.goto(f"{v.url}/")  # one persona at the root, as in its pod
    message = _error_after_asking(page, "안녕하세요")
    assert "still loading" in message and "(503)" in message
    page.screenshot(path=artifacts / "office-playground-503.png", full_page=True)
