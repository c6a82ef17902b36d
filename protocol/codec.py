"""Bytes <-> messages. Protobuf on the wire; JSON for people and ``mosquitto_sub``.

A result payload is either protobuf (the default) or its canonical JSON
rendering (``Encoding.JSON``, for a hub configured to publish readable
results). ``decode_result`` accepts both: a JSON payload starts with ``{``,
which no tandem.v1 protobuf message does (it would be field 15, wire type 3,
a group, and the schema has neither).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from protocol._generated.tandem.v1 import tandem_pb2 as pb
from protocol.errors import MalformedMessage, ProtocolError
from protocol.messages import EscalationAck, EscalationRequest, EscalationResult, ResultAck

M = TypeVar("M", bound=Message)
T = TypeVar("T")


class Encoding(enum.Enum):
    PROTOBUF = "protobuf"
    JSON = "json"


def _parse(payload: bytes, message_type: type[M]) -> M:
    msg: M = message_type()
    try:
        if payload[:1] == b"{":
            json_format.Parse(payload.decode("utf-8"), msg, ignore_unknown_fields=True)
        else:
            msg.ParseFromString(payload)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
        raise MalformedMessage(f"not a {message_type.DESCRIPTOR.full_name}: {exc}") from exc
    return msg


def _bytes(msg: Message) -> bytes:
    data: bytes = msg.SerializeToString()
    return data


def _convert(msg: M, convert: Callable[[M], T]) -> T:
    try:
        return convert(msg)
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:
        raise MalformedMessage(f"invalid {msg.DESCRIPTOR.full_name}: {exc}") from exc


def encode_result(result: EscalationResult, encoding: Encoding = Encoding.PROTOBUF) -> bytes:
    msg = result.to_proto()
    if encoding is Encoding.JSON:
        text: str = json_format.MessageToJson(msg, indent=None, sort_keys=True)
        return text.encode("utf-8")
    return _bytes(msg)


def decode_result(payload: bytes) -> EscalationResult:
    """Parse a result in either encoding; raise MalformedMessage or UnsupportedSchemaVersion."""
    return _convert(_parse(payload, pb.EscalationResult), EscalationResult.from_proto)


def parse_result(payload: bytes) -> pb.EscalationResult:
    """A result payload (either encoding) as its protobuf message, unchecked beyond parsing; MalformedMessage."""
    return _parse(payload, pb.EscalationResult)


def result_to_json(payload: bytes) -> str:
    """Render a result payload (either encoding) as indented JSON, for people."""
    text: str = json_format.MessageToJson(_parse(payload, pb.EscalationResult), indent=2, sort_keys=True)
    return text


def encode_request(request: EscalationRequest) -> bytes:
    return _bytes(request.to_proto())


def decode_request(payload: bytes) -> EscalationRequest:
    return _convert(_parse(payload, pb.EscalationRequest), EscalationRequest.from_proto)


def encode_result_ack(ack: ResultAck) -> bytes:
    return _bytes(ack.to_proto())


def decode_result_ack(payload: bytes) -> ResultAck:
    """Parse a device's ResultAck (protobuf or JSON); raise MalformedMessage or UnsupportedSchemaVersion."""
    return _convert(_parse(payload, pb.ResultAck), ResultAck.from_proto)


def encode_escalation_ack(ack: EscalationAck) -> bytes:
    return _bytes(ack.to_proto())


def decode_escalation_ack(payload: bytes) -> EscalationAck:
    """Parse the hub's EscalationAck (protobuf or JSON); raise MalformedMessage or UnsupportedSchemaVersion."""
    return _convert(_parse(payload, pb.EscalationAck), EscalationAck.from_proto)
