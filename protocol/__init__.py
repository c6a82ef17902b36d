"""Tandem's wire protocol: message types, MQTT topics and codecs. No I/O lives here.

The ``.proto`` source is ``protocol/proto/tandem/v1/tandem.proto``; the code
generated from it is in ``protocol._generated`` (committed; regenerate with
``python -m tools.gen_proto``). Everything else in the project uses the domain
types below, which convert themselves with ``to_proto``/``from_proto``.
"""

from protocol.errors import (
    InvalidTopic,
    MalformedMessage,
    ProtocolError,
    UnsupportedSchemaVersion,
)
from protocol.messages import (
    SCHEMA_VERSION,
    AckStatus,
    Box,
    EncodedImage,
    EscalationAck,
    EscalationRequest,
    EscalationResult,
    HopTiming,
    Prediction,
    ResultAck,
    ResultStatus,
    Tensor,
    TextLine,
    new_trace_id,
    validate_trace_id,
)
from protocol.topics import Channel, DeviceTopic

__all__ = [
    "SCHEMA_VERSION",
    "AckStatus",
    "Box",
    "Channel",
    "DeviceTopic",
    "EncodedImage",
    "EscalationAck",
    "EscalationRequest",
    "EscalationResult",
    "HopTiming",
    "InvalidTopic",
    "MalformedMessage",
    "Prediction",
    "ProtocolError",
    "ResultAck",
    "ResultStatus",
    "Tensor",
    "TextLine",
    "UnsupportedSchemaVersion",
    "new_trace_id",
    "validate_trace_id",
]
