"""Users asking through the route while a fault happens, and what the node shows of the
pods: their processes' memory, their containers, their /performance counters.

Each user has its own conversation and asks its questions one after another; a 429 or a
503 is retried after its ``Retry-After`` (at most ``RETRY_CAP_S``), as a patient client
would, and every attempt is kept.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.node.release import get, post, stored_turns

RETRY_CAP_S = 2.0
RETRYABLE = (429, 503)


@dataclass
class Attempt:
    status: int  # 0: no HTTP answer (connection refused or cut, or the deadline passed)
    elapsed_s: float
    error: str = ""


@dataclass
class Question:
    user: str
    db_id: str
    text: str
    sent_at: float
    attempts: list[Attempt] = field(default_factory=list)
    answer: str | None = None  # the 200's answer
    answered_at: float | None = None  # time.monotonic() when the 200 came back
    history_turns: int | None = None  # X-History-Turns of the 200

    @property
    def answered(self) -> bool:
        return self.answer is not None


class Users:
    """``count`` office (or character) users asking until ``stop()``."""

    def __init__(self, nc, count: int = 2, persona: str = "office", deadline_s: float = 120,
                 pause_s: float = 0.2, name: str = "fault"):
        self.nc, self.persona, self.deadline_s, self.pause_s = nc, persona, deadline_s, pause_s
        self.users = [(f"{name}-user-{i}-{uuid.uuid4().hex[:6]}", str(uuid.uuid4()))
                      for i in range(count)]
        self.questions: list[Question] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._ask_until_stopped, args=u, daemon=True)
                         for u in self.users]

    def __enter__(self) -> Users:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Lets each user finish the question it is on, then stops them."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.deadline_s + 30)

    def _body(self, user: str, db_id: str, text: str) -> dict:
        if self.persona == "office":
            return {"input_data": text, "google_access": False, "db_id": db_id,
                    "user_id": user}
        return {"input_data": text, "character_name": "Rachel",
                "greeting": "*Rachel looks up from her telescope.*",
                "context": "Rachel is a shy student who loves astronomy.",
                "db_id": db_id, "user_id": user}

    def _ask_until_stopped(self, user: str, db_id: str) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            q = Question(user, db_id, f"Question {n}: name one tip for a tidy desk.",
                         time.monotonic())
            with self._lock:
                self.questions.append(q)
            self.ask(q)
            self._stop.wait(self.pause_s)

    def ask(self, q: Question) -> None:
        url = self.nc.route(f"/{self.persona}/Llama")
        while True:
            started = time.monotonic()
            remaining = self.deadline_s - (started - q.sent_at)
            if remaining <= 0:
                q.attempts.append(Attempt(0, 0.0, "deadline passed"))
                return
            try:
                status, headers, body = post(url, self._body(q.user, q.db_id, q.text),
                                             timeout=remaining)
            except OSError as exc:  # refused, reset, timed out: no HTTP answer
                q.attempts.append(Attempt(0, time.monotonic() - started, repr(exc)[:200]))
                return
            q.attempts.append(Attempt(status, time.monotonic() - started,
                                      "" if status == 200 else body[:200].decode(errors="replace")))
            if status == 200:
                q.answer, q.answered_at = json.loads(body), time.monotonic()
                q.history_turns = int(headers.get("X-History-Turns", "0"))
                return
            if status not in RETRYABLE:
                return
            wait = min(float(headers.get("Retry-After") or 1), RETRY_CAP_S)
            time.sleep(wait)

    # ------------------------------------------------------------------ results
    def requests(self) -> int:
        return sum(len(q.attempts) for q in self.questions)

    def statuses(self) -> Counter:
        return Counter(a.status for q in self.questions for a in q.attempts)

    def status_5xx(self) -> Counter:
        return Counter({k: v for k, v in self.statuses().items() if k >= 500})

    def unanswered(self) -> list[Question]:
        return [q for q in self.questions if not q.answered]

    def answered_overlapping(self, start: float, end: float) -> list[Question]:
        """Answered questions asked, or still being answered, between ``start`` and ``end``
        (time.monotonic())."""
        return [q for q in self.questions
                if q.answered and q.sent_at < end and q.answered_at > start]


def history_problems(nc, users: Users, must_store: list[Question]) -> list[str]:
    """What the history gets wrong: a turn stored twice, half-written, or for a question
    that got no answer, and any of ``must_store`` missing."""
    problems = []
    by_conversation: dict[tuple, list[Question]] = {}
    for q in users.questions:
        by_conversation.setdefault((q.user, q.db_id), []).append(q)
    for (user, db_id), asked in by_conversation.items():
        turns = stored_turns(nc, users.persona, user, db_id)
        texts = Counter(t["input_data"] for t in turns)
        answers = {q.text: q.answer for q in asked}
        for text, n in texts.items():
            if n > 1:
                problems.append(f"{user}: {text!r} stored {n} times")
            if text not in answers:
                problems.append(f"{user}: {text!r} stored but never asked")
        for t in turns:
            if not (t.get("output_data") or "").strip():
                problems.append(f"{user}: {t['input_data']!r} stored without an answer")
            elif answers.get(t["input_data"]) not in (None, t["output_data"]):
                problems.append(f"{user}: {t['input_data']!r} stored with another answer")
            elif answers.get(t["input_data"]) is None and t["input_data"] in answers:
                problems.append(f"{user}: {t['input_data']!r} stored, the user got no answer")
        problems += [f"{user}: {q.text!r} answered but not stored"
                     for q in asked if q in must_store and texts[q.text] == 0]
    return problems


# ------------------------------------------------------------------------ the node's view

def container_id(pod: dict, name: str | None = None) -> str:
    statuses = pod["status"].get("containerStatuses") or []
    [status] = [s for s in statuses if name in (None, s["name"])][:1]
    return status["containerID"].split("://", 1)[1]


def container_pids(nc, cid: str) -> list[int]:
    lines = nc.node.ctr("tasks", "ps", cid).splitlines()[1:]
    return [int(line.split()[0]) for line in lines if line.strip()]


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def pod_rss(nc, pod: dict) -> int:
    return rss_bytes(container_pids(nc, container_id(pod)))


def pod_url(pod: dict, path: str) -> str:
    return f"http://{pod['status']['podIP']}:8080{path}"


def pod_performance(pod: dict) -> dict | None:
    status, _, body = get(pod_url(pod, "/performance"), timeout=5)
    return json.loads(body) if status == 200 else None
