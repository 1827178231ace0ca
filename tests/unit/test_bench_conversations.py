"""The conversation bench's own arithmetic (no server): the think-time schedule both
contenders share, and the ratio table the issue's targets are read from."""

from __future__ import annotations

from argparse import Namespace

from tests.bench.bench_conversations import in_flight_at_arrival, table, think_times


def test_think_times_are_seeded_per_user_and_within_half_to_one_and_a_half_times():
    a = think_times(7, 3, 12, 10.0)
    assert a == think_times(7, 3, 12, 10.0)  # the peer gets the very same schedule
    assert a != think_times(7, 4, 12, 10.0) and a != think_times(8, 3, 12, 10.0)
    assert len(a) == 12 and 0 <= a[0] <= 10.0
    assert all(5.0 <= t <= 15.0 for t in a[1:])


def _row(contender: str, tokens: int, wall: float, p95: float, evaluated: int,
         turn_p50: list[float]) -> dict:
    return {"model": "m.gguf", "contender": contender, "users": 8, "requests": 16,
            "tokens": tokens, "wall": wall, "tok_s": tokens / wall, "ttft_p50": 0.1,
            "ttft_p95": p95, "turn_p50": turn_p50, "turn_p95": [p95, p95],
            "evaluated": evaluated, "reused": 100,
            "restored": 40 if contender.startswith("ours") else None, "load": (3.0, 4.0),
            "in_flight": 1.5}


def test_the_ratio_table_gives_ours_over_the_peer_and_our_own_turn_ratio():
    args = Namespace(turns=2, think_s=10.0, seed=7, max_tokens=32, users=[8],
                     ours_streamed=False)
    rows = [_row("ours, batched engine", 600, 100.0, 0.5, 900, [0.2, 0.3]),
            _row("llama-server -np 8", 600, 120.0, 1.0, 1000, [0.1, 0.5])]
    text = table(rows, args, 2.5)
    # tok/s 6.0 / 5.0, TTFT p95 0.5 / 1.0, evaluated 900 / 1000; turn 2 / turn 1 ours: 1.5
    assert "| 8 | 1.20 | 0.50 | 0.90 | 200 / 300 | 1.50 | 3.0-4.0 / 3.0-4.0 |" in text
    assert "| m.gguf | ours, batched engine | 8 | 16 | 600 | 100 | 6.0 |" in text


def test_without_a_peer_only_our_own_columns_are_filled():
    args = Namespace(turns=2, think_s=10.0, seed=7, max_tokens=32, users=[8],
                     ours_streamed=True)
    text = table([_row("ours, batched engine", 600, 100.0, 0.5, 900, [0.2, 0.1])], args, 1.0)
    assert "| 8 | - | - | - | 200 / 100 | 0.50 | 3.0-4.0 |" in text
    assert "ours through its streamed turn" in text


def test_in_flight_at_arrival_counts_the_other_requests_being_answered_when_one_arrives():
    # a [0, 10) and b [2, 5) overlap at b's arrival; c [6, 7) arrives during a only; d alone.
    spans = [(0.0, 10.0), (2.0, 5.0), (6.0, 7.0), (20.0, 21.0)]
    assert in_flight_at_arrival(spans) == (0 + 1 + 1 + 0) / 4
    assert in_flight_at_arrival([]) == 0.0
