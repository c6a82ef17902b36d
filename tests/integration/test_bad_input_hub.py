"""Bad input sent to the real hub from the outside: each gets its clear error, and the hub goes on serving.

Over gRPC (through Ray Serve's proxy), HTTP and MQTT: empty, undecodable and decompression-bomb images, tensors
whose bytes do not fit, device ids no topic can carry, requests over the size limit, bytes that are no request at
all. Afterwards a good escalation still gets its verdict and no replica's circuit has opened."""

from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from edge.comms.grpc_client import GrpcTransport
from edge.config import GrpcConfig
from edge.errors import TransportError
from protocol import DeviceTopic, EncodedImage, EscalationRequest, Prediction, Tensor, new_trace_id
from protocol.codec import decode_result
from protocol.topics import Channel
from tests.support.images import png, png_bomb
from tests.support.waiting import wait_for

README = Path(__file__).resolve().parents[2] / "README.md"
LABELS = tuple(str(d) for d in range(10))
METADATA = (("application", "tandem"),)


def request(data, device_id: str = "cam-bad-input") -> EscalationRequest:
    local = Prediction("weak", "1", LABELS, (0.1,) * 10)
    return EscalationRequest(new_trace_id(), device_id, local, data, deadline_ms=5000)


def call(hub, payload: bytes, method: str = "Escalate") -> bytes:
    with grpc.insecure_channel(f"127.0.0.1:{hub.grpc_port}") as channel:
        return channel.unary_unary(f"/tandem.v1.Escalation/{method}")(payload, timeout=30, metadata=METADATA)


def refused(hub, payload: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(hub, payload)
    return error.value


def http(hub, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{hub.http_port}{path}", data=body, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def still_serving(hub) -> None:
    """A good escalation gets its verdict, and every replica's circuit is closed."""
    good = request(EncodedImage("image/png", png(8, 8, 30), 8, 8))
    result = decode_result(call(hub, good.to_proto().SerializeToString(), "EscalateAndWait"))
    assert result.status.name == "SUCCESS", result.error
    _, routing = http(hub, "GET", "/v1/routing")
    assert {state for replicas in routing["replicas"].values() for state in replicas.values()} == {"closed"}


def test_bad_images_and_tensors_are_refused_at_the_door_and_the_model_stays_in_service(hub):
    hub.start()
    bad = {
        "empty image": EncodedImage("image/png", b"", 0, 0),
        "not a decodable image": EncodedImage("image/png", b"\x89PNG\r\n\x1a\nnot really", 8, 8),
        "30000x30000 pixels is larger than the limit": EncodedImage("image/png", png_bomb(30000, 30000), 8, 8),
        "needs 256 bytes, not 3": Tensor("float32", (1, 1, 8, 8), b"abc"),
    }
    for words, data in bad.items():
        for _ in range(6):  # more than the breaker's failure_threshold (5), had they counted
            error = refused(hub, request(data).to_proto().SerializeToString())
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and words in error.details(), error.details()
    still_serving(hub)


def test_a_failed_result_says_why_in_one_short_line(hub):
    """A tensor the door accepts but the model cannot take (float64 pixels) fails in the replica; the device
    hears why in one line, without Ray's traceback, colours, pid or address, and the replica is not blamed."""
    hub.start()
    for _ in range(6):
        odd = request(Tensor("float64", (8, 8), np.zeros((8, 8)).tobytes()))
        result = decode_result(call(hub, odd.to_proto().SerializeToString(), "EscalateAndWait"))
        assert result.status.name == "FAILED"
        assert "bad input" in result.error and "8-bit pixels" in result.error, result.error
        assert "\n" not in result.error and len(result.error) <= 500
        assert not re.search(r"\x1b\[|pid=|ip=|ray::|Traceback|File \"", result.error), result.error
    still_serving(hub)


def test_a_device_id_no_topic_can_carry_is_refused_at_the_door(hub):
    hub.start()
    wire = request(EncodedImage("image/png", png(), 8, 8)).to_proto()
    wire.device_id = "cam/+/#"
    error = refused(hub, wire.SerializeToString())
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT and "device id 'cam/+/#'" in error.details()
    still_serving(hub)


def test_bytes_that_are_no_request_get_invalid_argument_and_the_device_stops_sending_them(hub):
    hub.start()
    garbage = b"\xff\x00\x13 this is not protobuf"
    error = refused(hub, garbage)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    transport = GrpcTransport(GrpcConfig(target=f"127.0.0.1:{hub.grpc_port}"))
    transport.start()
    try:
        with pytest.raises(TransportError) as failed:
            transport.send(new_trace_id(), garbage)
    finally:
        transport.close()
    assert not failed.value.retryable  # to the failed table, not retried for a day
    still_serving(hub)


def test_requests_over_the_size_limit_are_refused_on_grpc_http_and_mqtt(hub, mosquitto):
    hub.start()
    five_mb = png() + bytes(5 << 20)
    error = refused(hub, request(EncodedImage("image/png", five_mb, 8, 8)).to_proto().SerializeToString())
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, (error.code(), error.details())

    status, body = http(hub, "POST", "/v2/models/strong/infer", b"{" + b" " * (5 << 20) + b"}")
    assert status == 413 and "larger than the limit" in body["error"]

    # Over the hub's 4 MiB but under the broker's packet limit: the hub answers with a FAILED result.
    device = "cam-too-large"
    results: list[bytes] = []
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device)
    client.on_message = lambda _c, _u, m: results.append(m.payload)
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        client.subscribe(str(DeviceTopic.results(device)), qos=1)
        assert subscribed.wait(10)
        big = request(EncodedImage("image/png", png() + bytes((4 << 20) + 1000), 8, 8), device_id=device)
        client.publish(str(DeviceTopic(device, Channel.ESCALATIONS)), big.to_proto().SerializeToString(), qos=1)
        wait_for(lambda: results, 30, "the FAILED result for the oversized MQTT escalation")
    finally:
        client.disconnect()
        client.loop_stop()
    result = decode_result(results[0])
    assert result.trace_id == big.trace_id and result.status.name == "FAILED"
    assert "larger than the hub's limit" in result.error
    still_serving(hub)


def test_readme_v2_example_runs_against_the_readme_hub(hub):
    """README's tritonclient block, as written, against a hub started as README says (--model digits-strong)."""
    hub.start()
    block = re.search(r"```\n(import numpy as np, tritonclient\.http as t\n.*?)```", README.read_text(), re.S)
    assert block, "README's v2 example is gone"
    code = block.group(1).replace("127.0.0.1:8000", f"127.0.0.1:{hub.http_port}")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    scores = np.array(json.loads(re.sub(r"\s+", ",", printed.getvalue().strip()).replace("[,", "[")))
    assert scores.shape == (1, 10) and abs(scores.sum() - 1.0) < 1e-3
    status, body = http(hub, "POST", "/v2/models/digits-strong/infer", b"{}")
    assert status == 404 and "unknown model 'digits-strong'" in body["error"]
