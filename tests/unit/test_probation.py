"""The probation verdict: a new model stays unless it is clearly worse than the one before it."""

from __future__ import annotations

from edge.config import ProbationConfig
from edge.models.quality import FrameStat, summarize, verdict


def frames(latency_ms: float, n: int = 100, uncertain_every: int = 0) -> list[FrameStat]:
    return [FrameStat(True, latency_ms, bool(uncertain_every) and i % uncertain_every == 0, 0.9) for i in range(n)]


def test_a_slower_model_goes_only_when_it_is_slower_by_both_bounds():
    bounds = ProbationConfig()  # x2 and at least 2 ms
    before = summarize(frames(1.0))
    assert verdict(before, summarize(frames(3.5)), bounds) == "p95 latency 3.50 ms against 1.00 ms before (bound x2)"
    assert verdict(before, summarize(frames(1.9)), bounds) is None  # under x2
    tiny = summarize(frames(0.2))
    assert verdict(tiny, summarize(frames(0.9)), bounds) is None  # x4.5, but 0.7 ms: noise, not a slower model


def test_one_slow_frame_in_a_hundred_is_not_a_slower_model():
    before = summarize(frames(1.0))
    trial = [*frames(1.0, 99), FrameStat(True, 40.0, False, 0.9)]
    assert verdict(before, summarize(trial), ProbationConfig()) is None
