"""Headless Chromium (Debian's package, driven by Playwright without a browser download)
with the network closed, for the tests that open the service's pages (tests/browser, and
the real node's journey through port 8001).

The service is reached by a host name (`chatbot.test`, resolved to loopback, as a
cluster's node name would be: pages act differently on `localhost`, e.g. Swagger UI's
online validator and the browser's secure context); every other name resolves nowhere, and
any request a page makes to another host fails the test. Screenshots go to one artifacts
folder per session, printed at its end (`report`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.load.chromium import chromium

HOST = "chatbot.test"
_ARTIFACTS: list[Path] = []


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    """Where the screenshots go: $CHATBOT_ARTIFACTS/browser, else the session's tmp dir."""
    root = os.environ.get("CHATBOT_ARTIFACTS")
    folder = (Path(root) / "browser") if root else tmp_path_factory.mktemp("browser-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    _ARTIFACTS.append(folder)
    return folder


def report(terminalreporter) -> None:
    """For a conftest's `pytest_terminal_summary`: where the screenshots are."""
    for folder in _ARTIFACTS:
        shots = sorted(folder.glob("*.png"))
        terminalreporter.write_line(f"browser screenshots ({len(shots)}): {folder}")


@pytest.fixture
def browser() -> Iterator[object]:
    """Chromium for one test: Playwright's sync API holds an event loop on this thread while
    it runs, so it must not outlive the test (the next test's asyncio.run would fail)."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    executable = chromium()
    with playwright_api.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=executable, headless=True, args=[
            "--no-sandbox", "--disable-gpu",
            # No internet: the service's name is loopback, every other name resolves nowhere.
            f"--host-resolver-rules=MAP {HOST} 127.0.0.1, MAP * ~NOTFOUND",
        ])
        yield launched
        launched.close()


class Visit:
    """A fresh browser context on the service at `port` (on loopback) that records every
    request its pages make."""

    def __init__(self, browser, port: int) -> None:
        self.url = f"http://{HOST}:{port}"  # the service, as the browser names it
        self.requests: list[str] = []
        self.context = browser.new_context(viewport={"width": 1280, "height": 900},
                                           locale="ko-KR")
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)

    def foreign(self) -> list[str]:
        """Requests to anything but the service (data: URLs are inside the page, a blob: URL
        is named by the page's origin)."""
        own = urlsplit(self.url).netloc
        return [u for u in self.requests if not u.startswith("data:")
                and urlsplit(u.removeprefix("blob:")).netloc != own]


@pytest.fixture
def visit(browser) -> Iterator:
    """`visit(port)` opens a context on the service at that loopback port; after the test,
    no page of it may have asked another host for anything."""
    opened: list[Visit] = []

    def open_on(port: int) -> Visit:
        opened.append(Visit(browser, port))
        return opened[-1]

    yield open_on
    for v in opened:
        v.context.close()
    for v in opened:
        assert v.foreign() == [], f"requests outside the service: {v.foreign()}"


def ask(page, question: str) -> tuple[str, str]:
    """On a playground page: types `question`, sends it with Enter, waits for the answer;
    (answer, its stats line)."""
    before = page.locator(".msg.assistant .stats").count()
    page.fill("#input", question)
    page.press("#input", "Enter")
    page.wait_for_function(
        "n => document.querySelectorAll('.msg.assistant .stats').length > n "
        "|| document.getElementById('error').textContent", arg=before, timeout=90_000)
    assert page.text_content("#error") == "", page.text_content("#error")
    last = page.locator(".msg.assistant").last
    return last.locator(".text").text_content(), last.locator(".stats").text_content()


def try_it_out(v: Visit, persona: str, path: str):
    """Swagger UI's "Try it out" on `<persona>/docs` for the GET operation `path`: checks
    that the call went to the persona's prefixed URL, returns (the operation, the answer)."""
    page = v.page
    operation = page.locator(".opblock-get").filter(
        has=page.locator(f'.opblock-summary-path[data-path="{path}"]'))
    operation.locator(".opblock-summary").click()
    operation.locator(".try-out__btn").click()
    with page.expect_response(lambda r: r.url.endswith(path)) as answered:
        operation.locator(".execute").click()
    assert answered.value.url == f"{v.url}/{persona}{path}"
    return operation, answered.value
