"""What the fault tests tried, and what it cost the users: one row per fault, printed as a
table at the end of the session (tests/node/conftest.py)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class FaultRow:
    fault: str
    requests: int = 0  # HTTP requests the users sent while it happened, retries included
    lost: int = 0  # questions with no answer in the end, or an answer missing from history
    status_5xx: Counter = field(default_factory=Counter)  # status -> count
    recovery_s: float | None = None  # from the fault to answering (or Ready) again
    note: str = ""


ROWS: list[FaultRow] = []


def record(row: FaultRow) -> FaultRow:
    ROWS.append(row)
    return row


def table(rows: list[FaultRow] | None = None) -> list[str]:
    rows = ROWS if rows is None else rows
    head = ("fault", "requests", "lost", "5xx seen", "recovery s", "note")
    body = [(r.fault, str(r.requests), str(r.lost),
             ", ".join(f"{k}x{v}" for k, v in sorted(r.status_5xx.items())) or "none",
             "-" if r.recovery_s is None else f"{r.recovery_s:.1f}", r.note) for r in rows]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]

    def line(cells) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return ["faults on the real node:", line(head), line(["-" * w for w in widths]),
            *map(line, body)]
