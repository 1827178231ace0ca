from __future__ import annotations

import pytest

from tests.support.server import ChatbotServer


@pytest.fixture(scope="session")
def gateway(start_server) -> ChatbotServer:
    """Both personas in one process, as `chatbot serve` runs them locally."""
    return start_server()
