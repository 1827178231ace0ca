"""Processes a test starts itself (a built binary, a small HTTP server): they end with the
test, and die with the test process even when pytest itself is killed (PR_SET_PDEATHSIG),
so no server outlives the run that started it."""

from __future__ import annotations

import ctypes
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the process that started it dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextmanager
def running(argv: Sequence[str], stop_timeout: float = 10, **popen) -> Iterator[subprocess.Popen]:
    """`argv` started for the block, terminated after it (killed if it lingers)."""
    proc = subprocess.Popen(list(argv), preexec_fn=die_with_parent, **popen)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
