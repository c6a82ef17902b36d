import pytest

from protocol import (
    AckStatus,
    Channel,
    DeviceTopic,
    EncodedImage,
    EscalationAck,
    EscalationRequest,
    EscalationResult,
    HopTiming,
    InvalidTopic,
    MalformedMessage,
    Prediction,
    ResultStatus,
    Tensor,
    UnsupportedSchemaVersion,
    new_trace_id,
)
from protocol._generated.tandem.v1 import tandem_pb2 as pb
from protocol.codec import Encoding, decode_request, decode_result, encode_request, encode_result, result_to_json

LABELS = tuple(str(d) for d in range(10))


def prediction(top: int = 3, model_id: str = "digits-weak") -> Prediction:
    scores = [0.01] * 10
    scores[top] = 0.91
    return Prediction(model_id, "1", LABELS, tuple(scores), inference_ms=0.2)


def result(**changes) -> EscalationResult:
    fields = dict(
        trace_id=new_trace_id(),
        device_id="cam-7",
        status=ResultStatus.SUCCESS,
        outputs=(prediction(5, "digits-strong"),),
        final=prediction(5, "aggregate:single"),
        timings=(HopTiming("queue", 0.4), HopTiming("model:digits-strong", 3.25)),
    )
    fields.update(changes)
    return EscalationResult(**fields)


def test_trace_ids_are_w3c_shaped_and_unique():
    ids = {new_trace_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(t) == 32 and int(t, 16) > 0 for t in ids)


@pytest.mark.parametrize("encoding", list(Encoding))
def test_result_round_trips_in_both_encodings(encoding):
    original = result()
    assert decode_result(encode_result(original, encoding)) == original


def test_json_rendering_is_readable():
    original = result()
    text = result_to_json(encode_result(original))
    assert f'"traceId": "{original.trace_id}"' in text
    assert '"status": "RESULT_STATUS_SUCCESS"' in text


@pytest.mark.parametrize(
    "data",
    [EncodedImage("image/png", b"\x89PNG...", 32, 32), Tensor("uint8", (8, 8), bytes(range(64)))],
)
def test_request_round_trips_with_either_input(data):
    original = EscalationRequest(
        trace_id=new_trace_id(),
        device_id="cam-7",
        local_prediction=prediction(),
        input=data,
        deadline_ms=1500,
        model_hint="digits",
        attributes={"frame_index": "12"},
    )
    assert decode_request(encode_request(original)) == original


def test_ack_round_trip():
    ack = EscalationAck(new_trace_id(), AckStatus.DUPLICATE)
    assert EscalationAck.from_proto(ack.to_proto()) == ack


def test_unknown_schema_version_is_rejected_by_name():
    msg = result().to_proto()
    msg.schema_version = 2
    with pytest.raises(UnsupportedSchemaVersion, match="schema_version 2 is not supported"):
        decode_result(msg.SerializeToString())


def test_unknown_fields_survive_a_pass_through():
    # A newer sender adds field 99; an older relay that parses and re-serializes keeps it.
    wire = result().to_proto().SerializeToString() + b"\x9a\x06\x05extra"  # field 99, length-delimited
    relayed = pb.EscalationResult.FromString(wire).SerializeToString()
    assert b"extra" in relayed
    decode_result(wire)  # and it still decodes


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"{not json", b'{"traceId": 5}'])
def test_garbage_is_a_malformed_message(payload):
    with pytest.raises(MalformedMessage):
        decode_result(payload)


def test_result_without_a_trace_id_is_malformed():
    msg = result().to_proto()
    msg.trace_id = ""
    with pytest.raises(MalformedMessage, match="trace_id"):
        decode_result(msg.SerializeToString())


def test_success_needs_a_final_answer():
    with pytest.raises(MalformedMessage, match="no final prediction"):
        result(final=None)


def test_prediction_checks_alignment():
    with pytest.raises(MalformedMessage, match="2 labels but 3 scores"):
        Prediction("m", "1", ("a", "b"), (0.1, 0.2, 0.7))


def test_topics_build_and_parse():
    topic = DeviceTopic.results("cam-7")
    assert str(topic) == "tandem/v1/devices/cam-7/results"
    assert DeviceTopic.parse("tandem/v1/devices/cam-7/desired") == DeviceTopic("cam-7", Channel.DESIRED)
    assert DeviceTopic.parse(str(DeviceTopic.availability("a.b_c-1"))).channel is Channel.AVAILABILITY


@pytest.mark.parametrize("device_id", ["", "cam/7", "cam+", "cam#", "-cam", "x" * 65, "cam 7"])
def test_device_ids_that_would_break_the_scheme_are_refused(device_id):
    with pytest.raises(InvalidTopic):
        DeviceTopic.results(device_id)


@pytest.mark.parametrize(
    "topic", ["tandem/v2/devices/cam/results", "tandem/v1/devices/cam/nope", "tandem/v1/devices/cam", "x"]
)
def test_parse_refuses_topics_outside_the_scheme(topic):
    with pytest.raises(InvalidTopic):
        DeviceTopic.parse(topic)
