"""Event hooks for Locust's own web UI (tests/load/locustfile.py): every test started from
the UI records its own CSVs, and its report is written when the test stops.

Results go to `$CHATBOT_LOADTEST_OUT/<date_time>/` (default `loadtest-results/`).
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path

from chatbot_loadtest.runner import finish, replica_counters
from chatbot_loadtest.session import RunSession, attach

log = logging.getLogger("chatbot_loadtest")


def install(events) -> None:
    events.test_start.add_listener(_on_test_start)
    events.test_stop.add_listener(_on_test_stop)


def _on_test_start(environment, **_kwargs) -> None:
    out_dir = Path(os.environ.get("CHATBOT_LOADTEST_OUT", "loadtest-results"))
    out_dir = out_dir / f"{datetime.now():%Y-%m-%d_%H%M%S}"
    session = RunSession(out_dir)
    attach(environment, session)
    host = (environment.host or "").rstrip("/")
    environment.chatbot_before = {p: replica_counters(host, p) for p in ("office", "character")}
    environment.chatbot_started = datetime.now().isoformat(timespec="seconds")
    log.warning("recording this test's attempts in %s", out_dir)


def _on_test_stop(environment, **_kwargs) -> None:
    session = getattr(environment, "chatbot_session", None)
    before = getattr(environment, "chatbot_before", None)
    if session is None or before is None:
        return
    host = (environment.host or "").rstrip("/")
    personas = [p for p in ("office", "character") if session.recorder.path(p).exists()]
    finish(session, host, personas, before, session.recorder.out_dir,
           {"host": host, "started_at": environment.chatbot_started,
            "users": session.users_started, "via": "Locust web UI"})
    environment.chatbot_before = None
    log.warning("report: %s", session.recorder.out_dir / "report.html")
