"""Fixtures for tests/kind: kind's own Docker Engine (tests/kind/engine.py) and its node image.

These tests publish the route on the host's port 8001 and use the kernel's network state, as
the real node's tests (tests/node) do: :func:`kind_engine` takes the same lock
(tests/support/node_lock.py), so a second test session waits for the first. The engine is
stopped when the last test of this package is done, so the tests after it (tests/node) run
without kind's daemon and bridges beside them.
"""

from __future__ import annotations

import pytest

from tests.kube.helpers import require_cluster


@pytest.fixture(scope="package")
def kind_engine(node_lock):
    from tests.kind import engine

    missing = engine.missing_prerequisites()
    if missing:
        if require_cluster():
            pytest.fail("kind's engine needs: " + ", ".join(missing))
        pytest.skip("kind's engine needs: " + ", ".join(missing))
    with engine.Engine() as started:
        yield started
