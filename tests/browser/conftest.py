"""The service's pages in headless Chromium with the network closed (tests/support/browser.py)
on local `chatbot serve` processes, and through the operator's route on a real nginx
(tests/route)."""

from __future__ import annotations

import pytest

from tests.route.test_route_nginx import nginx_bin, route  # noqa: F401 (test_route.py's)
from tests.support.browser import artifacts, browser, report, visit  # noqa: F401
from tests.support.server import ChatbotServer


def pytest_terminal_summary(terminalreporter) -> None:
    report(terminalreporter)


@pytest.fixture(scope="session")
def gateway(start_server) -> ChatbotServer:
    """Both personas in one process, as the README's local `chatbot serve` runs them."""
    return start_server()
