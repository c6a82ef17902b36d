"""Coverage-guided fuzz targets for atheris (libFuzzer), run by tools/fuzz.

Each target takes raw bytes, feeds them to one of the project's readers of outside input, and lets through
only the error that reader documents; anything else (a crash, another exception) is a finding, and libFuzzer
writes the input that caused it to crash-* in the working folder. The property-based tests in tests/fuzz
cover the same readers briefly on every run of tools/test; this goes on for as long as it is given.

    python -m tools.fuzz_targets TARGET [libFuzzer options, e.g. -max_total_time=60]
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris
from google.protobuf.message import DecodeError

with atheris.instrument_imports():
    from cloud.errors import InvalidInput, RoutingError, V2Error
    from cloud.ingress.v2 import V2Grpc, V2Service, _parse_http_request, v2pb
    from cloud.inputs import InputLimits, check_input
    from cloud.routing import load_routing
    from common.errors import ConfigError
    from common.inference.preprocess import decode_image
    from edge.config import SensorConfig, load_config
    from edge.errors import SourceError
    from edge.sources.sensors import SensorSchema
    from protocol import EncodedImage, ProtocolError, Tensor
    from protocol.codec import decode_escalation_ack, decode_request, decode_result, decode_result_ack

SENSOR = SensorSchema(SensorConfig(name="t", kind="stdin", fields={"c": "number", "ok": "boolean", "s": "string"}))
LIMITS = InputLimits(max_image_pixels=1 << 20)
SCRATCH = Path(tempfile.mkdtemp(prefix="tandem-fuzz-"))


def protocol(data: bytes) -> None:
    for decode in (decode_request, decode_result, decode_result_ack, decode_escalation_ack):
        with contextlib.suppress(ProtocolError):
            decode(data)


def image(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        decode_image(data, max_pixels=1 << 20)
    with contextlib.suppress(InvalidInput):
        check_input(EncodedImage("image/png", data, 0, 0), LIMITS)


def tensor(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    dtype = fdp.ConsumeUnicodeNoSurrogates(8)
    shape = tuple(fdp.ConsumeIntInRange(-2, 64) for _ in range(fdp.ConsumeIntInRange(0, 4)))
    with contextlib.suppress(InvalidInput):
        check_input(Tensor(dtype, shape, fdp.ConsumeBytes(fdp.remaining_bytes())), LIMITS)


def sensor_line(data: bytes) -> None:
    with contextlib.suppress(SourceError):
        SENSOR.parse(data)


def v2_http(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    length = str(fdp.ConsumeIntInRange(-1, 64)) if fdp.ConsumeBool() else None
    with contextlib.suppress(V2Error):
        _parse_http_request(fdp.ConsumeBytes(fdp.remaining_bytes()), length)


def v2_grpc(data: bytes) -> None:
    from tests.support.v2_models import Doubler

    try:
        request = v2pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return
    request.model_name = "double"
    with contextlib.suppress(V2Error):
        asyncio.run(V2Grpc(V2Service(Doubler)).model_infer(request))


def configs(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    for name, load, errors in (
        ("edge.yaml", load_config, (ConfigError,)),
        ("routing.yaml", load_routing, (RoutingError,)),
    ):
        path = SCRATCH / name
        path.write_text(text)
        with contextlib.suppress(errors):
            load(path)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "protocol": protocol,
    "image": image,
    "tensor": tensor,
    "sensor_line": sensor_line,
    "v2_http": v2_http,
    "v2_grpc": v2_grpc,
    "configs": configs,
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tools.fuzz_targets {{{'|'.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
