"""Domain message types. Each converts itself to and from its protobuf message.

These are what the edge and the hub pass around; the generated classes stay at
the wire. ``from_proto`` validates (schema version, trace id, aligned scores),
so a message that got past it is well formed.
"""

from __future__ import annotations

import enum
import math
import re
import secrets
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Optional, Union

from google.protobuf.timestamp_pb2 import Timestamp

from protocol._generated.tandem.v1 import tandem_pb2 as pb
from protocol.errors import InvalidTopic, MalformedMessage, UnsupportedSchemaVersion
from protocol.topics import validate_device_id

SCHEMA_VERSION = 1
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


def new_trace_id() -> str:
    """16 random bytes as 32 lowercase hex digits, usable as a W3C trace-id."""
    return secrets.token_hex(16)


def validate_trace_id(trace_id: str) -> str:
    """Return trace_id if it is 32 lowercase hex digits and not all zeros (W3C rule)."""
    if not _TRACE_ID.match(trace_id) or trace_id == "0" * 32:
        raise MalformedMessage(f"trace_id must be 32 lowercase hex digits, not all zero: {trace_id!r}")
    return trace_id


def _check_device_id(device_id: str) -> None:
    """A device id names MQTT topics and store keys, so every message checks it at the door."""
    try:
        validate_device_id(device_id)
    except InvalidTopic as exc:
        raise MalformedMessage(str(exc)) from exc


def _check_version(version: int) -> None:
    if version != SCHEMA_VERSION:
        raise UnsupportedSchemaVersion(version, SCHEMA_VERSION)


# Domain values hold exactly what the wire carries, so a round trip through
# protobuf gives an equal object: scores as float32, times in microseconds.
def _as_float32(values: tuple[float, ...]) -> tuple[float, ...]:
    return struct.unpack(f"{len(values)}f", struct.pack(f"{len(values)}f", *values))


def _as_micros(seconds: float) -> float:
    return round(seconds, 6)


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromMicroseconds(round(seconds * 1e6))
    return ts


def _seconds(ts: Timestamp) -> float:
    micros: int = ts.ToMicroseconds()
    return micros / 1e6


class AckStatus(enum.Enum):
    ACCEPTED = pb.ACK_STATUS_ACCEPTED
    DUPLICATE = pb.ACK_STATUS_DUPLICATE


class ResultStatus(enum.Enum):
    SUCCESS = pb.RESULT_STATUS_SUCCESS
    FAILED = pb.RESULT_STATUS_FAILED
    TIMED_OUT = pb.RESULT_STATUS_TIMED_OUT


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels of the input frame, with its class and score."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: str
    score: float

    def __post_init__(self) -> None:
        x0, y0, x1, y1, score = _as_float32((self.x0, self.y0, self.x1, self.y1, self.score))
        for name, value in (("x0", x0), ("y0", y0), ("x1", x1), ("y1", y1), ("score", score)):
            object.__setattr__(self, name, value)

    def to_proto(self) -> pb.Box:
        return pb.Box(x0=self.x0, y0=self.y0, x1=self.x1, y1=self.y1, label=self.label, score=self.score)

    @classmethod
    def from_proto(cls, msg: pb.Box) -> Box:
        return cls(msg.x0, msg.y0, msg.x1, msg.y1, msg.label, msg.score)


@dataclass(frozen=True)
class TextLine:
    """One line of text an OCR model read, a confidence per character, and where it was."""

    text: str
    char_scores: tuple[float, ...]
    box: Optional[Box] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "char_scores", _as_float32(tuple(self.char_scores)))

    @property
    def confidence(self) -> float:
        """The weakest character's score: a line is only as sure as its least sure character."""
        return min(self.char_scores) if self.char_scores else 0.0

    def to_proto(self) -> pb.TextLine:
        msg = pb.TextLine(text=self.text, char_scores=self.char_scores)
        if self.box is not None:
            msg.box.CopyFrom(self.box.to_proto())
        return msg

    @classmethod
    def from_proto(cls, msg: pb.TextLine) -> TextLine:
        return cls(msg.text, tuple(msg.char_scores), Box.from_proto(msg.box) if msg.HasField("box") else None)


@dataclass(frozen=True)
class Prediction:
    """One model's answer for one input; ``scores[i]`` belongs to ``labels[i]``.

    Classifiers fill labels and scores. Detectors also fill ``boxes`` (labels and
    scores then hold each class's best box score); OCR models fill ``texts``
    (labels and scores then hold each line read and its confidence).
    """

    model_id: str
    model_version: str
    labels: tuple[str, ...]
    scores: tuple[float, ...]
    inference_ms: float = 0.0
    boxes: tuple[Box, ...] = ()
    texts: tuple[TextLine, ...] = ()

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.scores):
            raise MalformedMessage(f"{len(self.labels)} labels but {len(self.scores)} scores")
        if not self.labels:
            raise MalformedMessage("a prediction needs at least one class")
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "scores", _as_float32(tuple(self.scores)))
        object.__setattr__(self, "inference_ms", _as_float32((self.inference_ms,))[0])
        object.__setattr__(self, "boxes", tuple(self.boxes))
        object.__setattr__(self, "texts", tuple(self.texts))
        # Read on every frame by the judge and the store: worked out once.
        object.__setattr__(self, "_top", max(range(len(self.scores)), key=self.scores.__getitem__))

    @property
    def top_index(self) -> int:
        return self._top  # type: ignore[attr-defined, no-any-return]

    @property
    def label(self) -> str:
        return self.labels[self.top_index]

    @property
    def confidence(self) -> float:
        return self.scores[self.top_index]

    @property
    def is_finite(self) -> bool:
        # A NaN or an infinity anywhere makes the sum NaN or infinite (inf + -inf is NaN); float32
        # values cannot add up to a float64 overflow.
        total = sum(self.scores)
        if self.boxes or self.texts:
            total += sum(b.score for b in self.boxes) + sum(c for t in self.texts for c in t.char_scores)
        return math.isfinite(total)

    def to_proto(self) -> pb.Prediction:
        return pb.Prediction(
            model_id=self.model_id,
            model_version=self.model_version,
            labels=self.labels,
            scores=self.scores,
            inference_ms=self.inference_ms,
            boxes=[b.to_proto() for b in self.boxes],
            texts=[t.to_proto() for t in self.texts],
        )

    @classmethod
    def from_proto(cls, msg: pb.Prediction) -> Prediction:
        return cls(
            model_id=msg.model_id,
            model_version=msg.model_version,
            labels=tuple(msg.labels),
            scores=tuple(msg.scores),
            inference_ms=msg.inference_ms,
            boxes=tuple(Box.from_proto(b) for b in msg.boxes),
            texts=tuple(TextLine.from_proto(t) for t in msg.texts),
        )


@dataclass(frozen=True)
class EncodedImage:
    media_type: str
    data: bytes
    width: int
    height: int

    def to_proto(self) -> pb.EncodedImage:
        return pb.EncodedImage(media_type=self.media_type, data=self.data, width=self.width, height=self.height)

    @classmethod
    def from_proto(cls, msg: pb.EncodedImage) -> EncodedImage:
        return cls(media_type=msg.media_type, data=msg.data, width=msg.width, height=msg.height)


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def to_proto(self) -> pb.Tensor:
        return pb.Tensor(dtype=self.dtype, shape=self.shape, data=self.data)

    @classmethod
    def from_proto(cls, msg: pb.Tensor) -> Tensor:
        return cls(dtype=msg.dtype, shape=tuple(msg.shape), data=msg.data)


Input = Union[EncodedImage, Tensor]


@dataclass(frozen=True)
class EscalationRequest:
    trace_id: str
    device_id: str
    local_prediction: Prediction
    input: Input
    deadline_ms: int
    model_hint: str = ""
    sent_at: float = field(default_factory=time.time)
    attributes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        validate_trace_id(self.trace_id)
        _check_device_id(self.device_id)
        if self.deadline_ms <= 0:
            raise MalformedMessage(f"deadline_ms must be positive, not {self.deadline_ms}")
        object.__setattr__(self, "sent_at", _as_micros(self.sent_at))

    def to_proto(self) -> pb.EscalationRequest:
        msg = pb.EscalationRequest(
            schema_version=SCHEMA_VERSION,
            trace_id=self.trace_id,
            device_id=self.device_id,
            sent_at=_timestamp(self.sent_at),
            model_hint=self.model_hint,
            local_prediction=self.local_prediction.to_proto(),
            deadline_ms=self.deadline_ms,
            attributes=dict(self.attributes),
        )
        if isinstance(self.input, EncodedImage):
            msg.image.CopyFrom(self.input.to_proto())
        else:
            msg.tensor.CopyFrom(self.input.to_proto())
        return msg

    @classmethod
    def from_proto(cls, msg: pb.EscalationRequest) -> EscalationRequest:
        _check_version(msg.schema_version)
        which = msg.WhichOneof("input")
        if which is None:
            raise MalformedMessage(f"escalation {msg.trace_id!r} carries no input")
        data: Input = EncodedImage.from_proto(msg.image) if which == "image" else Tensor.from_proto(msg.tensor)
        return cls(
            trace_id=msg.trace_id,
            device_id=msg.device_id,
            local_prediction=Prediction.from_proto(msg.local_prediction),
            input=data,
            deadline_ms=msg.deadline_ms,
            model_hint=msg.model_hint,
            sent_at=_seconds(msg.sent_at),
            attributes=MappingProxyType(dict(msg.attributes)),
        )


@dataclass(frozen=True)
class EscalationAck:
    trace_id: str
    status: AckStatus

    def to_proto(self) -> pb.EscalationAck:
        return pb.EscalationAck(schema_version=SCHEMA_VERSION, trace_id=self.trace_id, status=self.status.value)

    @classmethod
    def from_proto(cls, msg: pb.EscalationAck) -> EscalationAck:
        _check_version(msg.schema_version)
        try:
            status = AckStatus(msg.status)
        except ValueError as exc:
            raise MalformedMessage(f"unknown ack status {msg.status}") from exc
        return cls(trace_id=validate_trace_id(msg.trace_id), status=status)


@dataclass(frozen=True)
class HopTiming:
    hop: str
    ms: float


@dataclass(frozen=True)
class EscalationResult:
    trace_id: str
    device_id: str
    status: ResultStatus
    outputs: tuple[Prediction, ...] = ()
    final: Prediction | None = None
    timings: tuple[HopTiming, ...] = ()
    error: str = ""
    sent_at: float = field(default_factory=time.time)
    cost: float = 0.0
    """The models' cost for this answer: each call's cost_per_1k / 1000, summed."""
    route: str = ""
    """The routing rule that answered (a cached answer has a "cache" hop)."""

    def __post_init__(self) -> None:
        validate_trace_id(self.trace_id)
        _check_device_id(self.device_id)
        if self.status is ResultStatus.SUCCESS and self.final is None:
            raise MalformedMessage(f"result {self.trace_id} is SUCCESS but has no final prediction")
        object.__setattr__(self, "sent_at", _as_micros(self.sent_at))

    def to_proto(self) -> pb.EscalationResult:
        msg = pb.EscalationResult(
            schema_version=SCHEMA_VERSION,
            trace_id=self.trace_id,
            device_id=self.device_id,
            sent_at=_timestamp(self.sent_at),
            status=self.status.value,
            outputs=[p.to_proto() for p in self.outputs],
            timings=[pb.HopTiming(hop=t.hop, ms=t.ms) for t in self.timings],
            error=self.error,
            cost=self.cost,
            route=self.route,
        )
        if self.final is not None:
            msg.final.CopyFrom(self.final.to_proto())
        return msg

    @classmethod
    def from_proto(cls, msg: pb.EscalationResult) -> EscalationResult:
        _check_version(msg.schema_version)
        try:
            status = ResultStatus(msg.status)
        except ValueError as exc:
            raise MalformedMessage(f"unknown result status {msg.status}") from exc
        return cls(
            trace_id=msg.trace_id,
            device_id=msg.device_id,
            status=status,
            outputs=tuple(Prediction.from_proto(p) for p in msg.outputs),
            final=Prediction.from_proto(msg.final) if msg.HasField("final") else None,
            timings=tuple(HopTiming(hop=t.hop, ms=t.ms) for t in msg.timings),
            error=msg.error,
            sent_at=_seconds(msg.sent_at),
            cost=msg.cost,
            route=msg.route,
        )


@dataclass(frozen=True)
class ResultAck:
    """A device's confirmation that it stored the result of ``trace_id``; the hub stops resending it."""

    trace_id: str
    device_id: str
    sent_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        validate_trace_id(self.trace_id)
        _check_device_id(self.device_id)
        object.__setattr__(self, "sent_at", _as_micros(self.sent_at))

    def to_proto(self) -> pb.ResultAck:
        return pb.ResultAck(
            schema_version=SCHEMA_VERSION,
            trace_id=self.trace_id,
            device_id=self.device_id,
            sent_at=_timestamp(self.sent_at),
        )

    @classmethod
    def from_proto(cls, msg: pb.ResultAck) -> ResultAck:
        _check_version(msg.schema_version)
        return cls(trace_id=msg.trace_id, device_id=msg.device_id, sent_at=_seconds(msg.sent_at))
