"""Measured performance of one persona: what /performance reports."""

from __future__ import annotations

import math
import statistics
import uuid
from collections import deque
from dataclasses import dataclass


@dataclass
class Outcome:
    """One finished chat request, as the use case saw it."""

    ok: bool
    total_s: float
    generation_s: float = 0.0
    tokens: int = 0


class PerformanceStats:
    """Counters since start, and a sliding window of recent successful answers for the mean
    and percentiles of response time and for tokens per second."""

    def __init__(self, window: int = 1000, prior_service_s: float = 20.0) -> None:
        # Names these counters: a process that replaces this one (a restart, a rollout's new
        # pod) starts others from zero, so counts are compared only under the same id.
        self.counters_id = uuid.uuid4().hex[:8]
        self.total_requests = 0
        self.succeeded = 0
        self.failed = 0
        self.rejected = 0
        self.generated_tokens = 0
        self._prior_service_s = prior_service_s
        self._latencies: deque[float] = deque(maxlen=window)
        self._service: deque[float] = deque(maxlen=window)
        self._gen: deque[tuple[int, float]] = deque(maxlen=window)

    def record_rejected(self) -> None:
        self.total_requests += 1
        self.rejected += 1

    def record(self, outcome: Outcome) -> None:
        self.total_requests += 1
        self.generated_tokens += outcome.tokens
        if outcome.ok:
            self.succeeded += 1
            self._latencies.append(outcome.total_s)
            self._service.append(outcome.generation_s)
            self._gen.append((outcome.tokens, outcome.generation_s))
        else:
            self.failed += 1

    def mean_service_s(self) -> float:
        """Mean generation time of recent successful requests (a prior until one finished)."""
        return statistics.fmean(self._service) if self._service else self._prior_service_s

    def snapshot(self) -> dict:
        lat = sorted(self._latencies)
        tokens = sum(t for t, _ in self._gen)
        seconds = sum(s for _, s in self._gen)
        return {
            "total_requests": self.total_requests,
            "avg_response_time": round(statistics.fmean(lat), 4) if lat else 0.0,
            "success_rate": round(100.0 * self.succeeded / self.total_requests, 2)
            if self.total_requests else 100.0,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "rejected": self.rejected,
            "p50_response_time": round(_percentile(lat, 50), 4),
            "p95_response_time": round(_percentile(lat, 95), 4),
            "tokens_per_second": round(tokens / seconds, 2) if seconds else 0.0,
            "generated_tokens": self.generated_tokens,
        }


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return 0.0
    rank = math.ceil(pct / 100 * len(sorted_values)) - 1  # nearest-rank percentile
    return sorted_values[max(0, min(len(sorted_values) - 1, rank))]
