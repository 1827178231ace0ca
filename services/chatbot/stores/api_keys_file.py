"""The API keys file, watched: the keys in force, reloaded when the file changes.

Kubernetes updates a mounted Secret by swapping a symlink (`..data`) to a new directory, so
the file's path stays and its inode changes. `current()` looks at the file (os.stat through
the symlinks: inode, size, mtime) at most every `poll_s` seconds, on the requests that ask
(the kubelet's readiness probe of /readyz among them, so an idle pod notices too), and
re-reads it when anything changed. A changed Secret therefore takes effect within the
kubelet's sync of the mount (its `syncFrequency`, 60 s by default, plus jitter and the cache
TTL) plus `poll_s`, with no restart: 90 s is the documented bound.

A file that cannot be used keeps the last good keys in force, logs why, and `status()` (in
/readyz) says so; a file that was never good leaves no key valid (closed, not open).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from chatbot.domain.api_keys import ApiKey, KeysFileError, parse_keys

log = logging.getLogger(__name__)


class KeysFile:
    def __init__(self, path: Path, poll_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.poll_s = poll_s
        self.clock = clock
        # Called (on the caller's thread; it must not block) when the keys in force or the
        # file's error change: the pods report it into their ChatbotModel's status.
        self.on_change: Callable[[], None] = lambda: None
        self.keys: list[ApiKey] = []
        self.loaded = False  # whether a good file was ever read
        self.error = ""
        self.reloads = 0
        self._seen: tuple | None = None
        self._checked = -float("inf")
        self.current()

    def current(self) -> list[ApiKey]:
        """The keys in force, after looking at the file if `poll_s` passed since last time."""
        now = self.clock()
        if now - self._checked >= self.poll_s:
            self._checked = now
            self._look()
        return self.keys

    def status(self) -> dict:
        self.current()
        return self.snapshot()

    def snapshot(self) -> dict:
        """What status() says, without looking at the file."""
        state = "error" if self.error else "ok"
        return {"state": state, "file": str(self.path), "keys": len(self.keys),
                "names": sorted(k.name for k in self.keys), "detail": self.error,
                "reload_s": self.poll_s}

    def _look(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self._refuse(f"cannot read {self.path}: {exc.strerror or exc}")
            return
        seen = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)
        if seen == self._seen:
            return
        self._seen = seen
        try:
            keys = parse_keys(self.path.read_text(encoding="utf-8"))
        except OSError as exc:
            self._refuse(f"cannot read {self.path}: {exc.strerror or exc}")
            return
        except KeysFileError as exc:
            self._refuse(f"{self.path}: {exc}")
            return
        if self.loaded:
            log.info("API keys reloaded from %s: %s", self.path,
                     ", ".join(sorted(k.name for k in keys)) or "none")
        self.keys, self.loaded, self.error = keys, True, ""
        self.reloads += 1
        self.on_change()

    def _refuse(self, error: str) -> None:
        changed = error != self.error
        if changed:
            kept = ("keeping the last good keys" if self.loaded
                    else "no key is accepted until it is fixed")
            log.error("API keys file not used (%s): %s", kept, error)
        self.error = error
        self._seen = None if "cannot read" in error else self._seen
        if changed:
            self.on_change()
