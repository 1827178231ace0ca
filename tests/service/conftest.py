from __future__ import annotations

import pytest

from tests.service.server import ChatbotServer

# Short answers keep the suite quick; the seed's lengths apply unless a test says otherwise.
FAST = {"CHATBOT_OFFICE__GENERATION__MAX_TOKENS": "48",
        "CHATBOT_CHARACTER__GENERATION__MAX_TOKENS": "48"}


@pytest.fixture(scope="session")
def start_server(tiny_models, tmp_path_factory):
    """Factory: start a server on the tiny models with extra env; stopped at session end."""
    started: list[ChatbotServer] = []
    workdir = tmp_path_factory.mktemp("servers")

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True,
              models: bool = True) -> ChatbotServer:
        base = dict(FAST)
        if models:
            base.update(CHATBOT_OFFICE_MODEL=str(tiny_models["office"]),
                        CHATBOT_CHARACTER_MODEL=str(tiny_models["character"]))
        server = ChatbotServer(workdir, *args, env={**base, **(env or {})})
        started.append(server)
        if ready:
            # The gateway loads its models one after the other: wait for every persona.
            for path in (["/office/readyz", "/character/readyz"] if not args else ["/readyz"]):
                server.wait_until(path)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def gateway(start_server) -> ChatbotServer:
    """Both personas in one process, as `chatbot serve` runs them locally."""
    return start_server()
