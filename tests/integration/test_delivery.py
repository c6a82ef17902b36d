"""Results reach devices until they say they have them: resends and ResultAck over MQTT, HTTP callbacks,
and the gRPC call that waits for its verdict. Real Mosquitto, a real `tandem hub run`, a real HTTP server."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from common.mqtt import new_client
from edge.app import EdgeRuntime
from edge.comms.grpc_client import GrpcTransport
from edge.comms.link import Handled
from edge.config import GrpcConfig
from edge.judge import TraceState
from protocol import DeviceTopic, EncodedImage, EscalationRequest, Prediction, ResultAck, new_trace_id
from protocol.codec import decode_result, encode_result_ack
from tandem.broker import free_port
from tests.integration.conftest import HubProcess, edge_config
from tests.support.waiting import wait_for


class Endpoint:
    """An HTTP server that records each POST and answers with the next status in ``statuses`` (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.posts.append((dict(self.headers), body))
                self.send_response(statuses.pop(0) if statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/tandem/results"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Device:
    """A device's results topic, read by a plain MQTT client that acknowledges only when told to."""

    def __init__(self, device_id: str, port: int) -> None:
        self.device_id = device_id
        self.received: list[bytes] = []
        self._client = new_client(f"test-{device_id}")
        subscribed = threading.Event()
        topic = str(DeviceTopic.results(device_id))
        self._client.on_connect = lambda c, *_: c.subscribe(topic, 1)
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = lambda _c, _u, m: self.received.append(m.payload)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        assert subscribed.wait(10)

    def copies(self, trace_id: str) -> int:
        return sum(decode_result(p).trace_id == trace_id for p in list(self.received))

    def acknowledge(self, trace_id: str) -> None:
        ack = encode_result_ack(ResultAck(trace_id, self.device_id))
        self._client.publish(str(DeviceTopic.acks(self.device_id)), ack, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint([500])  # the first callback fails; the resend succeeds
    yield server
    server.close()


@pytest.fixture(scope="module")
def delivery_hub(demo_assets, mosquitto, tmp_path_factory, endpoint) -> Iterator[HubProcess]:
    work = tmp_path_factory.mktemp("delivery-hub")
    config = work / "hub.yaml"
    callbacks = [{"devices": "kiosk-*", "url": endpoint.url}]
    settings = {
        "mqtt_username": "tandem-hub-delivery",  # its own client ids and share group beside the session's hub
        "delivery": {"resend_after_s": 1, "max_sends": 4, "callbacks": callbacks},
    }
    config.write_text(yaml.safe_dump(settings))
    process = HubProcess(
        demo_assets / "models" / "digits-strong.onnx",
        mosquitto.port,
        work / "hub.db",
        work / "hub.log",
        extra=("--config", str(config)),
    )
    process.start()
    yield process
    process.stop()


def escalation(device_id: str, demo_assets) -> EscalationRequest:
    frame = sorted((demo_assets / "stream" / "images").iterdir())[0]
    return EscalationRequest(
        new_trace_id(),
        device_id,
        Prediction("weak", "1", ("0", "1"), (0.5, 0.5)),
        EncodedImage("image/png", frame.read_bytes(), 8, 8),
        deadline_ms=10_000,
    )


def send(hub: HubProcess, request: EscalationRequest, **options: object) -> list[bytes]:
    """Escalate over gRPC; with wait_for_verdict, return the results the call answered with."""
    answered: list[bytes] = []

    def on_result(payload: bytes) -> Handled:
        answered.append(payload)
        return Handled.ACK

    transport = GrpcTransport(GrpcConfig(target=f"127.0.0.1:{hub.grpc_port}", **options), on_result=on_result)
    transport.start()
    try:
        transport.send(request.trace_id, request.to_proto().SerializeToString())
    finally:
        transport.close()
    return answered


def trace(hub: HubProcess, trace_id: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{hub.http_port}/v1/traces/{trace_id}", timeout=10) as reply:
        return json.load(reply)


def unacked(hub: HubProcess, device_id: str) -> list[str]:
    url = f"http://127.0.0.1:{hub.http_port}/v1/traces?acked=false&device_id={device_id}"
    with urllib.request.urlopen(url, timeout=10) as reply:
        return [t["trace_id"] for t in json.load(reply)]


def metrics(hub: HubProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{hub.http_port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def test_a_result_is_resent_until_the_device_acknowledges_it(delivery_hub, mosquitto, demo_assets):
    device = Device("cam-silent", mosquitto.port)
    try:
        request = escalation(device.device_id, demo_assets)
        send(delivery_hub, request)
        wait_for(lambda: device.copies(request.trace_id) >= 2, 20, "the result to be sent a second time")
        assert unacked(delivery_hub, device.device_id) == [request.trace_id]

        device.acknowledge(request.trace_id)
        wait_for(lambda: trace(delivery_hub, request.trace_id)["acked_at"] is not None, 10, "the ack to be recorded")
        after = trace(delivery_hub, request.trace_id)
        assert after["next_send_at"] is None  # no more sends are planned
        assert after["sends"] >= 2 and decode_result(device.received[0]).final is not None
        assert unacked(delivery_hub, device.device_id) == []
        assert 'tandem_hub_result_acks_total{channel="mqtt"}' in metrics(delivery_hub)
    finally:
        device.close()


def test_callback_devices_get_their_results_by_http_post(delivery_hub, mosquitto, demo_assets, endpoint):
    device = Device("kiosk-1", mosquitto.port)  # listening, to show nothing comes on MQTT
    try:
        request = escalation(device.device_id, demo_assets)
        send(delivery_hub, request)
        wait_for(lambda: trace(delivery_hub, request.trace_id)["acked_at"] is not None, 20, "a 2xx from the callback")
        bodies = [body for headers, body in endpoint.posts if headers["X-Tandem-Trace-Id"] == request.trace_id]
        assert len(bodies) == 2  # 500, then the resend got 200
        assert decode_result(bodies[1]).trace_id == request.trace_id
        assert json.loads(bodies[1])["status"] == "RESULT_STATUS_SUCCESS"
        assert device.copies(request.trace_id) == 0
        assert 'tandem_hub_delivery_errors_total{channel="callback",reason="http_500"} 1.0' in metrics(delivery_hub)
    finally:
        device.close()


def test_escalate_and_wait_answers_with_the_verdict(delivery_hub, mosquitto, demo_assets):
    device = Device("cam-waiting", mosquitto.port)
    try:
        request = escalation(device.device_id, demo_assets)
        (answer,) = send(delivery_hub, request, wait_for_verdict=True, timeout_ms=10_000)
        result = decode_result(answer)
        assert result.trace_id == request.trace_id and result.final is not None
        after = trace(delivery_hub, request.trace_id)
        assert after["acked_at"] is not None and after["sends"] == 1 and after["next_send_at"] is None
        # A retry of the same call (its answer was lost) gets the stored verdict; the model does not run again.
        (again,) = send(delivery_hub, request, wait_for_verdict=True, timeout_ms=10_000)
        assert decode_result(again) == result
        assert device.copies(request.trace_id) == 0
    finally:
        device.close()


def test_devices_acknowledge_results_and_can_wait_for_them(tmp_path, demo_assets, delivery_hub, mosquitto):
    """The real runtime: over MQTT it acknowledges each result; with wait_for_verdict it gets them on gRPC."""
    for device_id, wait in (("cam-acks", False), ("cam-waits", True)):
        config = edge_config(tmp_path, demo_assets, delivery_hub, mosquitto.port, device_id=device_id, threshold=0.95)
        transport = config.transport.model_copy(update={"wait_for_verdict": wait, "timeout_ms": 20_000})
        with EdgeRuntime(config.model_copy(update={"transport": transport})) as runtime:
            runtime.run(max_frames=120)
            assert runtime.wait_resolved(60)
            sent_up = [t for t in runtime.store.traces() if t.escalated_at is not None]
            assert sent_up and all(t.state is TraceState.COMPLETE for t in sent_up)
            assert runtime.metrics.value("verdicts", outcome="duplicate") == 0
            # Waiting, every verdict came in a gRPC response and none on MQTT; otherwise all on MQTT.
            assert runtime.link.counts["messages"] == (0 if wait else len(sent_up))
        wait_for(lambda d=device_id: unacked(delivery_hub, d) == [], 10, f"{device_id}'s results to be acknowledged")
