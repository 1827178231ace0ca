"""Session fixtures for tests that run the project's images (tests/images, tests/cluster):
a Docker Engine (started here when none answers; see docker_engine.py) and the images built on it.

Without Docker (not root, no docker.io) the tests that need it are skipped, or fail when
``CHATBOT_REQUIRE_DOCKER=1`` or ``CI`` is set.
"""

from __future__ import annotations

import pytest

from tests.support import docker_engine as engine
from tests.support.requirements import required, unavailable

REQUIRE_ENV = "CHATBOT_REQUIRE_DOCKER"


def require_docker() -> bool:
    return required(REQUIRE_ENV)


def _unavailable(msg: str):
    unavailable(msg, REQUIRE_ENV)


@pytest.fixture(scope="session")
def docker_engine():
    daemon = engine.Daemon()
    try:
        daemon.start()
    except engine.DockerUnavailable as exc:
        _unavailable(f"no Docker Engine: {exc}")
    yield daemon
    daemon.stop()


def _built(build):
    try:
        return build()
    except engine.DockerUnavailable as exc:
        _unavailable(str(exc))


@pytest.fixture(scope="session")
def service_image(docker_engine) -> tuple[str, str]:
    """(tag, build log) of images/service/Dockerfile on the local Debian base."""
    return _built(engine.build_service_image)


@pytest.fixture(scope="session")
def operator_image(docker_engine) -> tuple[str, str]:
    return _built(engine.build_operator_image)
