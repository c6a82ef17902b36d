"""Images, tensors, sensor lines and v2 requests from outside: decoded, or refused with the documented error."""

from __future__ import annotations

import asyncio
import contextlib
import json

import cv2
import numpy as np
from google.protobuf.message import DecodeError
from hypothesis import example, given
from hypothesis import strategies as st

from cloud.errors import InvalidInput, V2Error
from cloud.ingress.v2 import V2Grpc, V2Service, _parse_http_request, v2pb
from cloud.inputs import InputLimits, check_input
from common.inference.preprocess import decode_image, image_size
from edge.config import SensorConfig
from edge.errors import SourceError
from edge.sources.sensors import SensorSchema
from protocol import EncodedImage, Tensor
from tests.fuzz.strategies import mutated
from tests.support.images import png
from tests.support.v2_models import Doubler

SMALL = 256 * 256


def _jpeg() -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((16, 16, 3), 90, np.uint8))
    assert ok
    return data.tobytes()


IMAGES = st.one_of(st.binary(max_size=256), mutated(png(16, 16)), mutated(_jpeg()), mutated(png(300, 300)))


# Found by the long run (tools/fuzz): a mutated 16 x 16 PNG whose next chunk claims 2.8 GB. OpenCV's reader took
# 12 s to refuse its 100 bytes; the header check now refuses it at once.
SLOW_PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10"
    b"\x08\x00\x00\x00\x00:\x98\xa0\xbd\xa9\x00\x00+IDAT\x18\x19U\xc1\xb1\x01\x00"
    b"\x00\x00\x82 \xfd\xdc\xd3\x9b\x03\xe3\x19\xcfx\xc63\x9e\xf1\x8cg<\xe3\x19\xcfx"
    b"\xc63\x9e\xf1\x8cg\xbc\x01\x86T\x08\x11\xba\xc7\xd8\x19\x00\x00\x00\x00IEND"
    b"\xaeB`\x82"
)


@example(SLOW_PNG)
@given(IMAGES)
def test_image_bytes_decode_within_the_limit_or_raise_value_error(data):
    try:
        image = decode_image(data, max_pixels=SMALL)
    except ValueError:
        return
    assert image.size > 0 and image.shape[0] * image.shape[1] <= SMALL


@given(IMAGES)
def test_the_header_size_is_what_decoding_gives(data):
    try:
        width, height = image_size(data)
        image = decode_image(data, max_pixels=SMALL)
    except ValueError:
        return
    assert image.shape[:2] == (height, width)


@given(IMAGES, st.integers(0, 600), st.integers(0, 600))
def test_the_hubs_door_accepts_or_raises_invalid_input(data, width, height):
    with contextlib.suppress(InvalidInput):
        check_input(EncodedImage("image/png", data, width, height), InputLimits(max_image_pixels=SMALL))


@given(
    st.text(max_size=12),
    st.lists(st.integers(-3, 10_000), max_size=5).map(tuple),
    st.binary(max_size=2048),
)
def test_tensors_at_the_door_fit_their_shape_or_are_refused(dtype, shape, data):
    try:
        check_input(Tensor(dtype, shape, data), InputLimits())
    except InvalidInput:
        return
    assert np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).nbytes == len(data)


SENSOR = SensorSchema(SensorConfig(name="t", kind="stdin", fields={"c": "number", "ok": "boolean", "s": "string"}))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@given(st.one_of(st.binary(max_size=200), JSON_VALUES.map(lambda v: json.dumps(v).encode())))
def test_sensor_lines_parse_to_the_declared_fields_or_raise_source_error(line):
    try:
        reading = SENSOR.parse(line)
    except SourceError:
        return
    assert set(reading) == {"c", "ok", "s"}


@given(st.one_of(st.binary(max_size=300), JSON_VALUES.map(lambda v: json.dumps(v).encode())), st.integers(-5, 400))
def test_v2_http_bodies_parse_or_raise_v2_error(body, header_length):
    for length in (None, str(header_length)):
        with contextlib.suppress(V2Error):
            _parse_http_request(body, length)


def _infer_request() -> bytes:
    request = v2pb.ModelInferRequest(model_name="double")
    request.inputs.add(name="x", datatype="FP32", shape=[3])
    request.raw_input_contents.append(np.arange(3, dtype=np.float32).tobytes())
    request.outputs.add(name="y")
    return request.SerializeToString()


@given(st.one_of(st.binary(max_size=400), mutated(_infer_request())))
def test_v2_grpc_requests_run_or_raise_v2_error(payload):
    try:
        request = v2pb.ModelInferRequest.FromString(payload)
    except DecodeError:
        return
    request.model_name = "double"
    with contextlib.suppress(V2Error):
        asyncio.run(V2Grpc(V2Service(Doubler)).model_infer(request))
