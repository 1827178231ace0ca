"""Shared fixtures: tiny GGUF models written once per session by `chatbot-dev tiny-model`, real
`chatbot serve` processes on them, FerretDB; a Docker Engine and the project's images
(tests/support/image_fixtures.py, used by tests/images and tests/cluster); the lock on
port 8001 that tests/node and tests/kind take (tests/support/node_lock.py)."""

from __future__ import annotations

import pytest

from tests.support.image_fixtures import docker_engine, operator_image, service_image  # noqa: F401
from tests.support.node_lock import node_lock  # noqa: F401
from tests.support.server import ChatbotServer


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, object]:
    """Office gets a Q4_1 model and character a Q4_0 one, mirroring the seed."""
    from chatbot_dev.tiny_model import write_tiny_model

    root = tmp_path_factory.mktemp("models")
    return {
        "office": write_tiny_model(root / "tiny-office.Q4_1.gguf", quant="Q4_1", seed=1),
        "character": write_tiny_model(root / "tiny-character.Q4_0.gguf", quant="Q4_0", seed=2),
    }


@pytest.fixture(scope="session")
def ferretdb(tmp_path_factory):
    """A FerretDB (MongoDB wire protocol, SQLite backend) shared by the session's tests."""
    from tests.support.ferretdb import FerretDB, ferretdb_binary

    server = FerretDB(ferretdb_binary(), tmp_path_factory.mktemp("ferretdb"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_ferretdb(tmp_path):
    """A FerretDB of the test's own, for tests that stop, pause or restart it."""
    from tests.support.ferretdb import FerretDB, ferretdb_binary

    server = FerretDB(ferretdb_binary(), tmp_path / "ferretdb")
    server.start()
    yield server
    server.stop()


# Short answers keep the suite quick; the seed's lengths apply unless a test says otherwise.
# One llama.cpp thread: its threads spin-wait for each other at every graph node, so on a
# busy 2-core machine two threads made the tiny model 50x slower (seen here: 10-23 s for 96
# tokens against 0.1-0.4 s with one), and timed tests out.
FAST = {"CHATBOT_OFFICE__GENERATION__MAX_TOKENS": "48",
        "CHATBOT_CHARACTER__GENERATION__MAX_TOKENS": "48",
        "CHATBOT_OFFICE__MODEL__N_THREADS": "1",
        "CHATBOT_CHARACTER__MODEL__N_THREADS": "1"}


@pytest.fixture(scope="session")
def start_server(tiny_models, tmp_path_factory):
    """Factory: start a server on the tiny models with extra env; stopped at session end."""
    started: list[ChatbotServer] = []
    workdir = tmp_path_factory.mktemp("servers")

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True,
              models: bool = True, port: int | None = None) -> ChatbotServer:
        base = dict(FAST)
        if models:
            base.update(CHATBOT_OFFICE_MODEL=str(tiny_models["office"]),
                        CHATBOT_CHARACTER_MODEL=str(tiny_models["character"]))
        server = ChatbotServer(workdir, *args, env={**base, **(env or {})}, port=port)
        started.append(server)
        if ready:
            # The gateway loads its models one after the other: wait for every persona.
            for path in (["/office/readyz", "/character/readyz"] if not args else ["/readyz"]):
                server.wait_until(path)
        return server

    yield start
    for server in started:
        server.stop()
