"""The ModelPool scales out on sustained load and back in when it goes, draining the replica it removes.

``tandem hub run`` with ``pool_autoscaling`` (min 1, max 2, target 2 requests per replica, short delays),
a model of about 5 ms, and callers over gRPC ``EscalateAndWait``: 16 at once until Serve runs a second
ModelPool replica, then a trickle of one while Serve takes it away again. Every call, those in flight while
the replica was drained included, must come back SUCCESS (seed 004: scale in by taking no new requests and
finishing the ones it holds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psutil
import pytest
import yaml

from edge.comms.grpc_client import GrpcTransport
from edge.config import GrpcConfig
from protocol import EncodedImage, EscalationRequest, Prediction, new_trace_id
from protocol.codec import decode_result, encode_request
from tests.integration.conftest import HubProcess
from tests.support.waiting import wait_for
from tools.bench_suite.edge_speed import build_conv

POOL = "ServeReplica:tandem:ModelPool"


@pytest.fixture
def scaling_hub(tmp_path, demo_assets, mosquitto, hub) -> Iterator[HubProcess]:
    hub.stop()
    model = build_conv(tmp_path / "conv.onnx", 48, 3)
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        yaml.safe_dump(
            {
                "models": {"conv": {"path": str(model)}},
                "routes": [{"name": "default", "steps": [{"model": "conv", "deadline_ms": 20_000}]}],
                "cache": {"enabled": False},
            }
        )
    )
    settings = tmp_path / "hub.yaml"
    settings.write_text(
        yaml.safe_dump(
            {
                "routing_path": str(routing),
                "mqtt_username": "scaling-hub",
                "pool_autoscaling": {
                    "min_replicas": 1,
                    "max_replicas": 2,
                    "target_ongoing_requests": 2,
                    "upscale_delay_s": 1.0,
                    "downscale_delay_s": 3.0,
                },
            }
        )
    )
    process = HubProcess(
        demo_assets / "models" / "digits-strong.onnx",
        mosquitto.port,
        tmp_path / "hub.db",
        tmp_path / "hub.log",
        extra=("--config", str(settings)),  # its routing file wins over the --model HubProcess gives
    )
    process.start()
    yield process
    process.stop()


def pool_replicas(hub: HubProcess) -> int:
    count = 0
    for process in hub._family():
        try:
            count += any(POOL in part for part in process.cmdline())
        except psutil.NoSuchProcess:
            continue
    return count


class Callers:
    """Threads calling EscalateAndWait in a loop; ``results`` holds each call's status (or its error)."""

    def __init__(self, grpc_port: int, image: bytes) -> None:
        self._port = grpc_port
        self._image = image
        self.results: list[str] = []
        self._lock = threading.Lock()
        self._threads: list[tuple[threading.Thread, threading.Event]] = []

    def add(self, count: int) -> None:
        for _ in range(count):
            stop = threading.Event()
            thread = threading.Thread(target=self._call, args=(stop,), daemon=True)
            thread.start()
            self._threads.append((thread, stop))

    def remove(self, count: int) -> None:
        for _ in range(count):
            thread, stop = self._threads.pop()
            stop.set()
            thread.join(60)

    def _call(self, stop: threading.Event) -> None:
        results: list[bytes] = []
        transport = GrpcTransport(
            GrpcConfig(target=f"127.0.0.1:{self._port}", wait_for_verdict=True, timeout_ms=30_000),
            on_result=results.append,
        )
        transport.start()
        try:
            while not stop.is_set():
                request = EscalationRequest(
                    new_trace_id(),
                    "cam-scaling",
                    Prediction("weak", "1", tuple(str(d) for d in range(10)), tuple([0.1] * 10)),
                    EncodedImage("image/png", self._image, 8, 8),
                    deadline_ms=30_000,
                )
                try:
                    transport.send(request.trace_id, encode_request(request))
                    outcome = decode_result(results[0]).status.name if results else "no result"
                except Exception as exc:  # counted: the test fails on any
                    outcome = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self.results.append(outcome)
                results.clear()
        finally:
            transport.close()


def test_the_pool_scales_out_under_load_and_drains_the_replica_it_removes(demo_assets, scaling_hub):
    image = (demo_assets / "stream" / "images" / "000000.png").read_bytes()
    assert pool_replicas(scaling_hub) == 1
    callers = Callers(scaling_hub.grpc_port, image)
    seen = [1]
    try:
        callers.add(16)
        wait_for(lambda: seen.append(pool_replicas(scaling_hub)) or seen[-1] == 2, 90, "a second pool replica")
        during_load = len(callers.results)
        callers.remove(15)  # one caller goes on: the replica taken away has requests in flight as it goes
        wait_for(lambda: pool_replicas(scaling_hub) == 1, 120, "the pool back at one replica")
        time.sleep(2.0)  # and the trickle goes on after the drain
        after = len(callers.results)
    finally:
        callers.remove(len(callers._threads))
    failures = [r for r in callers.results if r != "SUCCESS"]
    assert failures == [], failures[:5]
    assert during_load > 0 and after > during_load
    assert max(seen) == 2
