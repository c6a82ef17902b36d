"""The device store's row types and their JSON columns."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Optional

from edge.judge.states import TraceMachine, TraceState, Transition
from protocol.messages import Prediction


class OutboxStatus(str, enum.Enum):
    QUEUED = "QUEUED"
    SENT = "SENT"


@dataclass(frozen=True)
class OutboxLimits:
    max_rows: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    on_full: str = "drop_oldest"  # reject_new | drop_oldest | drop_lowest_priority


@dataclass(frozen=True)
class OutboxDepth:
    rows: int
    bytes: int
    oldest_enqueued_at: Optional[float]
    failed_rows: int = 0


@dataclass(frozen=True)
class FailedRow:
    trace_id: str
    payload: bytes
    priority: int
    attempts: int
    enqueued_at: float
    failed_at: float
    reason: str


class VerdictOutcome(enum.Enum):
    """What applying a hub result did to its trace."""

    COMPLETED = "completed"  # PENDING_CLOUD -> COMPLETE with the cloud's answer
    LATE = "late"  # the trace had fallen back; the cloud's answer now stands beside it
    FAILED = "failed"  # the hub could not answer; the trace fell back at once
    DUPLICATE = "duplicate"  # the trace already had a verdict; nothing changed
    UNKNOWN_TRACE = "unknown_trace"  # no such trace on this device


@dataclass(frozen=True)
class TraceRecord:
    trace_id: str
    state: TraceState
    source_id: str
    frame_index: int
    truth: Optional[str]
    local_label: Optional[str]
    local_confidence: Optional[float]
    cloud_label: Optional[str]
    cloud_confidence: Optional[float]
    final_label: Optional[str]
    reasons: tuple[str, ...]
    created_at: float
    escalated_at: Optional[float]
    verdict_at: Optional[float]
    history: tuple[Transition, ...]


@dataclass(frozen=True)
class OutboxRow:
    trace_id: str
    payload: bytes
    status: OutboxStatus
    attempts: int
    next_attempt_at: float
    enqueued_at: float
    last_error: Optional[str]
    priority: int = 0


OUTBOX_COLUMNS = "trace_id, payload, status, attempts, next_attempt_at, enqueued_at, last_error, priority"


def outbox_row(r: tuple[Any, ...]) -> OutboxRow:
    return OutboxRow(r[0], r[1], OutboxStatus(r[2]), r[3], r[4], r[5], r[6], r[7])


def prediction_json(prediction: Prediction) -> str:
    return json.dumps(
        {
            "model_id": prediction.model_id,
            "model_version": prediction.model_version,
            "labels": list(prediction.labels),
            "scores": list(prediction.scores),
            "inference_ms": prediction.inference_ms,
        }
    )


def history_json(machine: TraceMachine) -> str:
    return json.dumps([t.to_json() for t in machine.history])


def machine_from(state: str, history: str) -> TraceMachine:
    return TraceMachine(TraceState(state), [Transition.from_json(t) for t in json.loads(history)])
