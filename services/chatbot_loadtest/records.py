"""The CSV files of a run: one row per HTTP attempt, retries included.

Both files keep the original's columns, in the original's order; the office file appends
the retry columns the original office test did not have (it never retried). Both end with
`request_id`, the service's `X-Request-ID` (empty when no answer came from the service: a
proxy's 503 while no pod is ready, a connection error), then `served_by`, the replica that
answered (its `X-Served-By`; empty when the service runs without replicas to place turns
on, or did not answer). Times are in seconds; `timestamp`
is when the attempt was sent (UTC, ISO 8601). Files written before `request_id` existed
read back with `request_id` (`served_by`) None.
"""

from __future__ import annotations

import csv
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

CHARACTER_COLUMNS = (
    "user_id", "test_type", "endpoint", "character_name", "status_code", "response_time",
    "success", "failure_reason", "retry_count", "retry_after_seconds", "timestamp",
    "response_size", "is_retry_record", "is_final_failure", "is_final_success", "error",
    "process_time", "request_id", "served_by",
)
OFFICE_COLUMNS = (
    "user_id", "test_type", "endpoint", "google_access", "question_length", "status_code",
    "response_time", "success", "timestamp", "response_size",
    # not in the original office file, which had no retries:
    "failure_reason", "retry_count", "retry_after_seconds", "is_retry_record",
    "is_final_failure", "is_final_success", "error", "process_time", "request_id",
    "served_by",
)
COLUMNS = {"office": OFFICE_COLUMNS, "character": CHARACTER_COLUMNS}


@dataclass
class Attempt:
    """One HTTP attempt of one logical request (its first try or a retry)."""

    user_id: str
    test_type: str  # office | character
    endpoint: str
    status_code: int  # 0: no HTTP answer (connection error, stopped at the end of the run)
    response_time: float
    success: bool
    timestamp: str
    response_size: int = 0
    retry_count: int = 0  # retries before this attempt
    retry_after_seconds: float | None = None  # the wait this 429 or 503 asked for
    is_retry_record: bool = False  # answered 429 or 503 and retried
    is_final_failure: bool = False
    is_final_success: bool = False
    failure_reason: str = ""
    error: str = ""
    process_time: float | None = None  # the server's own total (Server-Timing)
    request_id: str = ""  # the service's X-Request-ID: empty when the service did not answer
    served_by: str = ""  # the replica that answered (X-Served-By): empty when none said
    extra: dict = field(default_factory=dict)  # character_name | google_access, question_length

    def row(self) -> dict:
        data = asdict(self)
        data.update(data.pop("extra"))
        data["response_time"] = round(self.response_time, 4)
        return data


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class CsvRecorder:
    """Appends attempts to `<persona>_<stamp>.csv` files in `out_dir`, flushed per row, so a
    run that is cut short still leaves every finished attempt on disk."""

    def __init__(self, out_dir: Path, stamp: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.stamp = stamp or datetime.now().strftime("%Y-%m-%d_%H%M%S")
        self._lock = threading.Lock()
        self._files: dict[str, tuple] = {}
        self.counts = {"attempts": 0, "answers": 0, "retried_429": 0, "retried_503": 0,
                       "final_failures": 0}

    def path(self, persona: str) -> Path:
        return self.out_dir / f"{persona}_{self.stamp}.csv"

    def record(self, attempt: Attempt) -> None:
        with self._lock:
            handle, writer = self._writer(attempt.test_type)
            writer.writerow(attempt.row())
            handle.flush()
            self.counts["attempts"] += 1
            self.counts["answers"] += attempt.is_final_success
            if attempt.is_retry_record and attempt.status_code in (429, 503):
                self.counts[f"retried_{attempt.status_code}"] += 1
            self.counts["final_failures"] += attempt.is_final_failure

    def _writer(self, persona: str):
        if persona not in self._files:
            handle = open(self.path(persona), "w", newline="", encoding="utf-8")
            writer = csv.DictWriter(handle, fieldnames=COLUMNS[persona])
            writer.writeheader()
            self._files[persona] = (handle, writer)
        return self._files[persona]

    def paths(self) -> list[Path]:
        return [self.path(p) for p in self._files]

    def close(self) -> None:
        with self._lock:
            for handle, _ in self._files.values():
                handle.close()


def read_rows(paths: list[Path]) -> list[dict]:
    """The attempts of CSV files written by `CsvRecorder`, typed back."""
    rows = []
    for path in paths:
        with open(path, newline="", encoding="utf-8") as handle:
            for raw in csv.DictReader(handle):
                rows.append(_typed(raw))
    return rows


def _typed(raw: dict) -> dict:
    def num(key: str) -> float | None:
        value = raw.get(key, "")
        return float(value) if value not in ("", None) else None

    row = dict(raw)
    row["status_code"] = int(raw["status_code"])
    row["response_time"] = float(raw["response_time"])
    row["response_size"] = int(raw.get("response_size") or 0)
    row["retry_count"] = int(raw.get("retry_count") or 0)
    row["retry_after_seconds"] = num("retry_after_seconds")
    row["process_time"] = num("process_time")
    for key in ("success", "is_retry_record", "is_final_failure", "is_final_success"):
        row[key] = raw.get(key) == "True"
    row["sent_at"] = datetime.fromisoformat(raw["timestamp"])
    row["request_id"] = raw.get("request_id")  # None: a file from before the column
    row["served_by"] = raw.get("served_by")  # None: a file from before the column
    return row
