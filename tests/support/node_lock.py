"""One test session at a time uses this host's port 8001 and kernel network state: the real
node (tests/node) and the kind quickstart (tests/kind) both publish the route there.

:func:`node_lock` is the session fixture both take; a second session waits for the first to
end (the lock is an ``flock``, released by the kernel however the holder dies).
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
from pathlib import Path

import pytest


def workdir() -> Path:
    """The real node's fixed place: a killed session's leftovers are found there by the next."""
    return Path(tempfile.gettempdir()) / f"chatbot-node-{os.getuid()}"


@pytest.fixture(scope="session")
def node_lock():
    """One node per host (port 8001, the bridge): a second session waits its turn, before
    it uses Docker too (the first may stop the daemon it started when it ends)."""
    lock = open(f"{workdir()}.lock", "w")  # noqa: SIM115 - held for the whole session
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"[node] another session holds the node ({lock.name}); waiting for it",
              file=sys.stderr, flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield
    finally:
        lock.close()
