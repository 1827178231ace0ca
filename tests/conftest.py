"""Shared fixtures: tiny GGUF models written once per session by `chatbot tiny-model`."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, object]:
    """Office gets a Q4_1 model and character a Q4_0 one, mirroring the seed."""
    from chatbot.llm.tiny_model import write_tiny_model

    root = tmp_path_factory.mktemp("models")
    return {
        "office": write_tiny_model(root / "tiny-office.Q4_1.gguf", quant="Q4_1", seed=1),
        "character": write_tiny_model(root / "tiny-character.Q4_0.gguf", quant="Q4_0", seed=2),
    }


@pytest.fixture(scope="session")
def ferretdb(tmp_path_factory):
    """A FerretDB (MongoDB wire protocol, SQLite backend) shared by the session's tests."""
    from tests.ferretdb import FerretDB, ferretdb_binary

    server = FerretDB(ferretdb_binary(), tmp_path_factory.mktemp("ferretdb"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_ferretdb(tmp_path):
    """A FerretDB of the test's own, for tests that stop, pause or restart it."""
    from tests.ferretdb import FerretDB, ferretdb_binary

    server = FerretDB(ferretdb_binary(), tmp_path / "ferretdb")
    server.start()
    yield server
    server.stop()
