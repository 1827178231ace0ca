"""The pages through the route as the operator builds it (its Ingress or HTTPRoute served by
a real nginx configured the way the controllers configure it, tests/route) in front of one
`chatbot serve` per persona, as their pods run: the route strips `/office` and
`/character`, the services know them from `CHATBOT_ROOT_PATH` (the operator sets it), and
the pages, their assets and "Try it out" must put them back."""

from __future__ import annotations

import pytest

from chatbot_operator import builders
from tests.browser.test_pages import _stored
from tests.route.test_route_nginx import KINDS, OWNER
from tests.support.browser import ask, try_it_out
from tests.support.server import ChatbotServer


@pytest.fixture(scope="module")
def personas(start_server) -> dict[str, ChatbotServer]:
    return {p: start_server(p, env={"CHATBOT_ROOT_PATH": f"/{p}"})
            for p in ("office", "character")}


@pytest.fixture(scope="module")
def endpoints(personas, tmp_path_factory):
    """Service name -> address, as the controller reads them (tests/route's fixture, with the
    root path each pod gets); the `route` fixture (tests/route) serves them."""
    not_found = ChatbotServer(tmp_path_factory.mktemp("not-found"), command="not-found")
    not_found.wait_until("/__healthz")
    yield {builders.deployment_name(OWNER, p): f"127.0.0.1:{s.port}"
           for p, s in personas.items()} | {
        builders.not_found_name(OWNER): f"127.0.0.1:{not_found.port}"}
    not_found.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_docs_and_playgrounds_work_through_the_route(kind, route, personas, visit, artifacts):
    nginx = route(kind)
    for persona, server in personas.items():
        v = visit(nginx.port)
        page = v.page
        page.goto(f"{v.url}/{persona}/docs")
        operation, answered = try_it_out(v, persona, "/readyz")
        assert answered.json()["persona"] == persona  # reached through the route
        operation.locator(".live-responses-table").scroll_into_view_if_needed()
        page.screenshot(path=artifacts / f"route-{kind.lower()}-{persona}-docs.png")

        page.goto(f"{v.url}/{persona}/redoc")
        page.locator('[data-section-id*="/operation/"]').first.wait_for()

        page.goto(f"{v.url}/{persona}/")
        db_id = page.text_content("#db-id")
        question = f"{kind}을 거쳐 묻습니다: 안녕하세요?"
        answer, stats = ask(page, question)
        assert "TTFT" in stats and "tokens/s" in stats
        stored = _stored(server, persona, "playground", db_id)
        assert [(t["input_data"], t["output_data"]) for t in stored["value"]] == [
            (question, answer)]
        page.screenshot(path=artifacts / f"route-{kind.lower()}-{persona}-playground.png",
                        full_page=True)
