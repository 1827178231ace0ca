"""One load-test run's shared state: options, user ids, the CSV recorder, progress counts.

The Locust users find it on their environment (`attach`); the headless runner and the
web-UI locustfile both create one per test.
"""

from __future__ import annotations

import itertools
import random
import threading
from dataclasses import dataclass
from pathlib import Path

from chatbot_loadtest.records import CsvRecorder

USER_PREFIX = {"office": "office_user_", "character": "char_user_"}


@dataclass(frozen=True)
class LoadOptions:
    """How the simulated users behave. The defaults are the original's."""

    requests_per_user: int = 1  # 0: keep asking until the run ends
    google_access_ratio: float = 0.5
    max_retries: int = 10
    default_retry_after_s: float = 60.0  # when a 429 or 503 names no wait
    office_timeout_s: float = 240.0
    character_timeout_s: float = 600.0
    seed: int | None = None


class RunSession:
    def __init__(self, out_dir: Path, options: LoadOptions | None = None) -> None:
        self.options = options or LoadOptions()
        self.recorder = CsvRecorder(out_dir)
        self.rng = random.Random(self.options.seed)
        self._ids = {persona: itertools.count(1) for persona in USER_PREFIX}
        self._lock = threading.Lock()
        self.users_started = 0
        self.users_done = 0  # users that asked all they were to ask

    def next_user_id(self, persona: str) -> str:
        with self._lock:
            self.users_started += 1
            return f"{USER_PREFIX[persona]}{next(self._ids[persona]):04d}"

    def user_done(self) -> None:
        with self._lock:
            self.users_done += 1

    def close(self) -> list[Path]:
        self.recorder.close()
        return self.recorder.paths()


def attach(environment, session: RunSession) -> None:
    environment.chatbot_session = session


def session_of(environment) -> RunSession:
    session = getattr(environment, "chatbot_session", None)
    if session is None:  # e.g. locust.run_single_user: record next to the working directory
        session = RunSession(Path("loadtest-results"))
        attach(environment, session)
    return session
