"""/performance numbers come from what was measured."""

from __future__ import annotations

from chatbot.core.stats import Outcome, PerformanceStats


def test_counts_rates_and_percentiles():
    stats = PerformanceStats(prior_service_s=7.0)
    assert stats.mean_service_s() == 7.0  # nothing measured yet
    for i in range(1, 11):
        stats.record(Outcome(True, total_s=float(i), generation_s=i / 2, tokens=10))
    stats.record(Outcome(False, total_s=0.01))
    stats.record_rejected()
    snap = stats.snapshot()
    assert snap["total_requests"] == 12 and snap["succeeded"] == 10
    assert snap["failed"] == 1 and snap["rejected"] == 1
    assert snap["success_rate"] == round(100 * 10 / 12, 2)
    assert snap["avg_response_time"] == 5.5  # successful answers only
    assert snap["p50_response_time"] == 5.0 and snap["p95_response_time"] == 10.0
    assert snap["tokens_per_second"] == round(100 / 27.5, 2)
    assert stats.mean_service_s() == 2.75
