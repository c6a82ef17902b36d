"""The device store's row types and their JSON columns."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _string
from typing import Any, Optional

from edge.judge.states import TraceMachine, TraceState, Transition
from protocol.messages import Box, Prediction


class OutboxStatus(str, enum.Enum):
    QUEUED = "QUEUED"  # to be sent at next_attempt_at (never sent, or the last send failed)
    SENT = "SENT"  # a relay (the MQTT broker) took it; sent again at next_attempt_at unless the hub confirms it
    ACCEPTED = "ACCEPTED"  # the hub has it (its EscalationAck); waits for the verdict, no more sends


@dataclass(frozen=True)
class OutboxLimits:
    max_rows: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    on_full: str = "drop_oldest"  # reject_new | drop_oldest | drop_lowest_priority


@dataclass(frozen=True)
class Dropped:
    """Outbox rows an enqueue dropped to make room (on_full), and which of their traces fell back because of it
    (the others had fallen back already, at their deadline)."""

    rows: tuple[str, ...] = ()
    fell_back: tuple[str, ...] = ()


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
    local_boxes: tuple[Box, ...] = ()  # a detector's answer on the device
    cloud_boxes: tuple[Box, ...] = ()  # and the hub's, for the whole frame


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
    relays: int = 0
    """Sends a relay took (MQTT) with no confirmation from the hub yet: sets the wait before the next one."""


OUTBOX_COLUMNS = "trace_id, payload, status, attempts, next_attempt_at, enqueued_at, last_error, priority, relays"


def outbox_row(r: tuple[Any, ...]) -> OutboxRow:
    return OutboxRow(r[0], r[1], OutboxStatus(r[2]), *r[3:])


# The three JSON columns are written for every frame, so they are put together from pieces rather
# than through json.dumps on a dict: a frame's strings go through json's own string encoder, floats
# through repr (what json.dumps uses), and a model's label list is encoded once.
_label_json: dict[tuple[str, ...], str] = {}


def _floats(values: Sequence[float]) -> str:
    text = ",".join(map(float.__repr__, values))
    # repr gives 'nan' and 'inf', which are not JSON; json.dumps writes NaN and Infinity as Python reads them.
    return f"[{text}]" if "n" not in text else json.dumps(list(values))


def prediction_json(prediction: Prediction) -> str:
    labels = _label_json.get(prediction.labels)
    if labels is None:
        labels = _label_json.setdefault(prediction.labels, json.dumps(list(prediction.labels)))
    boxes = f', "boxes": {boxes_json(prediction.boxes)}' if prediction.boxes else ""
    return (
        f'{{"model_id": {_string(prediction.model_id)}, "model_version": {_string(prediction.model_version)}, '
        f'"labels": {labels}, "scores": {_floats(prediction.scores)}, '
        f'"inference_ms": {_floats((prediction.inference_ms,))[1:-1]}{boxes}}}'
    )


def boxes_json(boxes: Sequence[Box]) -> str:
    """Boxes as [[x0, y0, x1, y1, label, score], ...]."""
    return json.dumps([[*(round(v, 2) for v in (b.x0, b.y0, b.x1, b.y1)), b.label, b.score] for b in boxes])


def boxes_from(text: Optional[str]) -> tuple[Box, ...]:
    """The boxes of a stored prediction or cloud result (none when it has none)."""
    if not text:
        return ()
    rows = json.loads(text).get("boxes") or []
    return tuple(Box(float(r[0]), float(r[1]), float(r[2]), float(r[3]), str(r[4]), float(r[5])) for r in rows)


_STATE_JSON = {state: f'"{state.value}"' for state in TraceState}


def history_json(machine: TraceMachine) -> str:
    steps = ",".join(
        f"[{t.at!r},{_STATE_JSON[t.source]},{_STATE_JSON[t.target]},{_string(t.reason)}]" for t in machine.history
    )
    return f"[{steps}]"


def reasons_json(reasons: Sequence[str]) -> str:
    return "[" + ",".join(map(_string, reasons)) + "]"


def machine_from(state: str, history: str) -> TraceMachine:
    return TraceMachine(TraceState(state), [Transition.from_json(t) for t in json.loads(history)])
