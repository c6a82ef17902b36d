"""The wire decoders: any bytes decode to a valid message or raise ProtocolError; nothing else escapes."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from protocol import ProtocolError
from protocol.codec import decode_escalation_ack, decode_request, decode_result, decode_result_ack
from protocol.topics import DeviceTopic
from tests.fuzz.strategies import wire_bytes

DECODERS = (decode_request, decode_result, decode_result_ack, decode_escalation_ack)


@given(wire_bytes())
def test_protobuf_decoders_accept_or_refuse_with_a_protocol_error(payload):
    for decode in DECODERS:
        try:
            message = decode(payload)
        except ProtocolError:
            continue
        assert message.trace_id  # what decodes is valid: a trace id that passed validation


@given(st.text(max_size=300))
def test_json_payloads_accept_or_refuse_with_a_protocol_error(text):
    payload = ("{" + text).encode("utf-8", "surrogatepass")
    for decode in DECODERS:
        with contextlib.suppress(ProtocolError):
            decode(payload)


@given(st.text(max_size=120))
def test_topics_parse_exactly_or_refuse(topic):
    try:
        parsed = DeviceTopic.parse(topic)
    except ProtocolError:
        return
    assert str(parsed) == topic
