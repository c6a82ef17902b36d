"""A run's summary, read from the device store: what happened to every frame."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from edge.judge.states import TraceState
from edge.outbox.store import EdgeStore


@dataclass(frozen=True)
class RunSummary:
    frames: int
    local: int
    """Frames the device answered itself (COMPLETE without escalating)."""
    escalated: int
    verdicts: int
    """Escalated frames whose final answer is the hub's (in time, or late after a fallback)."""
    fallbacks: int
    """Escalated frames that ended FALLBACK_COMPLETE (deadline passed, or the hub failed)."""
    unjudgeable: int
    unresolved: int
    """Escalated frames with neither a verdict nor a fallback yet."""
    accuracy_edge: Optional[float]
    """The device model's accuracy over every frame it answered (needs ground truth)."""
    accuracy_final: Optional[float]
    """Accuracy of the final answers: local, the hub's, or the fallback."""
    rtt_p50_ms: Optional[float]
    rtt_p99_ms: Optional[float]
    """Escalation round trip: trace written on the device -> verdict stored on the device."""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _percentile(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    rank = q / 100.0 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _accuracy(pairs: list[tuple[Optional[str], Optional[str]]]) -> Optional[float]:
    judged = [(answer, truth) for answer, truth in pairs if truth is not None and answer is not None]
    if not judged:
        return None
    return round(sum(a == t for a, t in judged) / len(judged), 4)


def summarize(store: EdgeStore) -> RunSummary:
    traces = store.traces()
    escalated = [t for t in traces if t.escalated_at is not None]
    rtts = [
        (t.verdict_at - t.escalated_at) * 1000.0 for t in escalated if t.verdict_at and t.cloud_label and t.escalated_at
    ]
    p50, p99 = _percentile(rtts, 50), _percentile(rtts, 99)
    return RunSummary(
        frames=len(traces),
        local=sum(t.state is TraceState.COMPLETE and t.escalated_at is None for t in traces),
        escalated=len(escalated),
        verdicts=sum(t.cloud_label is not None for t in escalated),
        fallbacks=sum(t.state is TraceState.FALLBACK_COMPLETE for t in escalated),
        unjudgeable=sum(t.state is TraceState.UNJUDGEABLE for t in traces),
        unresolved=sum(t.state is TraceState.PENDING_CLOUD for t in escalated),
        accuracy_edge=_accuracy([(t.local_label, t.truth) for t in traces]),
        accuracy_final=_accuracy([(t.final_label, t.truth) for t in traces]),
        rtt_p50_ms=None if p50 is None else round(p50, 2),
        rtt_p99_ms=None if p99 is None else round(p99, 2),
    )


def format_table(summary: RunSummary) -> str:
    width = max(len(k) for k in summary.as_dict())
    rows = []
    for key, value in summary.as_dict().items():
        shown = "-" if value is None else (f"{value:.4f}" if isinstance(value, float) and "accuracy" in key else value)
        rows.append(f"{key.ljust(width)}  {shown}")
    return "\n".join(rows)
