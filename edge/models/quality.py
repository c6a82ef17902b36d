"""How a model does on the device's own frames: the window before a swap (the baseline), and the frames after it
(probation). A new model is rolled back when it is clearly worse than the one it replaced.

    error rate        frames whose inference failed
    p95 latency       inference time
    escalation rate   frames the judge found uncertain (escalated or not: the rate limit must not hide it)
    mean confidence   of the top answer
"""

from __future__ import annotations

import collections
import threading
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Optional

import numpy as np

from edge.config import ProbationConfig


class FrameStat(NamedTuple):
    ok: bool
    latency_ms: float
    uncertain: bool
    confidence: float


@dataclass(frozen=True)
class Summary:
    frames: int
    error_rate: float
    p95_latency_ms: float
    escalation_rate: float
    mean_confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def summarize(stats: list[FrameStat]) -> Optional[Summary]:
    if not stats:
        return None
    good = [s for s in stats if s.ok]
    latencies = [s.latency_ms for s in good]
    return Summary(
        frames=len(stats),
        error_rate=1 - len(good) / len(stats),
        p95_latency_ms=float(np.percentile(latencies, 95)) if latencies else 0.0,
        escalation_rate=sum(s.uncertain for s in good) / len(good) if good else 0.0,
        mean_confidence=sum(s.confidence for s in good) / len(good) if good else 0.0,
    )


def verdict(baseline: Optional[Summary], trial: Summary, bounds: ProbationConfig) -> Optional[str]:
    """None if the new model may stay; else why it goes. Without a baseline (no frames before the swap) only the
    error rate can be judged."""
    if trial.error_rate > bounds.max_error_rate:
        return f"error rate {trial.error_rate:.1%} above {bounds.max_error_rate:.1%}"
    if baseline is None or baseline.frames == 0:
        return None
    rate, old_rate = trial.escalation_rate, baseline.escalation_rate
    if rate - old_rate >= bounds.min_escalation_change and rate > old_rate * bounds.max_escalation_ratio:
        return f"escalation rate {rate:.1%} against {old_rate:.1%} before (bound x{bounds.max_escalation_ratio:g})"
    slower = trial.p95_latency_ms - baseline.p95_latency_ms >= bounds.min_latency_change_ms
    if (
        slower
        and baseline.p95_latency_ms > 0
        and trial.p95_latency_ms > baseline.p95_latency_ms * bounds.max_latency_ratio
    ):
        return (
            f"p95 latency {trial.p95_latency_ms:.2f} ms against {baseline.p95_latency_ms:.2f} ms before "
            f"(bound x{bounds.max_latency_ratio:g})"
        )
    if baseline.mean_confidence - trial.mean_confidence > bounds.max_confidence_drop:
        return (
            f"mean confidence {trial.mean_confidence:.3f} against {baseline.mean_confidence:.3f} before "
            f"(bound -{bounds.max_confidence_drop:g})"
        )
    return None


class Quality:
    """Fed once per frame by the frame loop; the baseline window is always kept, probation only while asked.

    ``frame`` takes no lock (it is on the frame path): a deque's and a list's append are atomic, and a frame
    that lands in a trial list just abandoned by ``end_trial`` is one frame of a finished probation."""

    def __init__(self, window: int) -> None:
        self._lock = threading.Lock()  # for the trial's start and end, not for frames
        self._recent: collections.deque[FrameStat] = collections.deque(maxlen=window)
        self._trial: Optional[list[FrameStat]] = None

    def frame(self, ok: bool, latency_ms: float, uncertain: bool, confidence: float) -> None:
        stat = FrameStat(ok, latency_ms, uncertain, confidence)
        self._recent.append(stat)
        trial = self._trial
        if trial is not None:
            trial.append(stat)

    def baseline(self) -> Optional[Summary]:
        with self._lock:
            return summarize(list(self._recent))

    def start_trial(self) -> None:
        with self._lock:
            self._trial = []
            self._recent.clear()  # from here the window is the new model's

    def trial(self) -> Optional[Summary]:
        with self._lock:
            return summarize(self._trial) if self._trial is not None else None

    def end_trial(self) -> None:
        with self._lock:
            self._trial = None
