"""Fault tests: the real hub, a real Mosquitto and real devices, with faults injected between and into them.

The hub here talks to the broker through a ``FaultProxy`` (``broker_link``),
resends results after 2 s rather than 30 s so a test drains in seconds, and
is the only hub running (the session's other hub is stopped: one Ray at a
time on a small machine).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from edge.app import EdgeRuntime
from edge.config import EdgeConfig, JudgeConfig, MqttConfig, MqttTransportConfig, OutboxConfig
from tandem.broker import free_port
from tests.integration.conftest import HubProcess, edge_config
from tests.support.ledger import DeviceBooks, audit_device
from tests.support.tcp_proxy import FaultProxy


@pytest.fixture(scope="package")
def broker_link(mosquitto) -> Iterator[FaultProxy]:
    """The hub's way to the broker."""
    proxy = FaultProxy(free_port(), mosquitto.port)
    yield proxy
    proxy.close()


@pytest.fixture(scope="package")
def fault_hub(demo_assets, hub, broker_link, tmp_path_factory) -> Iterator[HubProcess]:
    hub.stop()
    work = tmp_path_factory.mktemp("fault-hub")
    settings = work / "hub.yaml"
    settings.write_text(
        yaml.safe_dump({"mqtt_username": "fault-hub", "delivery": {"resend_after_s": 2.0, "max_sends": 60}})
    )
    process = HubProcess(
        demo_assets / "models" / "digits-strong.onnx",
        broker_link.port,
        work / "hub.db",
        work / "hub.log",
        extra=("--config", str(settings)),
    )
    process.start()
    yield process
    process.stop()


def fault_device(
    tmp_path: Path,
    demo_assets: Path,
    hub: HubProcess,
    *,
    device_id: str,
    mqtt_port: int,
    transport: str = "grpc",
    grpc_port: int | None = None,
    fps: float = 10.0,
    deadline_ms: int = 2000,
) -> EdgeConfig:
    """A device that escalates every frame at ``fps``, with short retry and confirmation timers."""
    config = edge_config(tmp_path, demo_assets, hub, mqtt_port, device_id=device_id, deadline_ms=deadline_ms)
    updates: dict[str, object] = {
        "judge": JudgeConfig(preset="cloud_only"),
        "source": config.source.model_copy(update={"max_fps": fps}),
        # Room for every escalation of the longest run, so the outbox's bound (a policy, tested on its own in
        # tests/unit/test_outbox.py) never drops one here.
        "outbox": OutboxConfig(
            retry_initial_ms=100,
            retry_max_ms=1000,
            confirm_timeout_ms=1000,
            confirm_timeout_max_ms=4000,
            max_rows=100_000,
        ),
        "mqtt": MqttConfig(port=mqtt_port, keepalive_s=5),
    }
    if transport == "mqtt":
        updates["transport"] = MqttTransportConfig(kind="mqtt", timeout_ms=2000)
    elif grpc_port is not None:
        updates["transport"] = config.transport.model_copy(update={"target": f"127.0.0.1:{grpc_port}"})
    return config.model_copy(update=updates)


def drained(path: Path, timeout_s: float) -> DeviceBooks:
    """Wait until every escalation on the device has its verdict (or was set aside), then return the books."""
    end = time.monotonic() + timeout_s
    while True:
        books = audit_device(path)
        if books.escalated > 0 and books.waiting == 0:
            return books
        if time.monotonic() > end:
            pytest.fail(f"the device's escalations did not drain in {timeout_s:g} s: {books.figures()}")
        time.sleep(0.5)


class Chaos:
    """A script of faults run in a thread at set times after start(), while the test drives the device."""

    def __init__(self, steps: list[tuple[float, str, Callable[[], None]]]) -> None:
        self._steps = sorted(steps, key=lambda s: s[0])
        self.done: list[str] = []
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def start(self) -> Chaos:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def join(self, timeout_s: float = 300.0) -> None:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            pytest.fail("the fault script did not finish")
        if self.errors:
            raise self.errors[0]

    def _run(self) -> None:
        for at, what, step in self._steps:
            time.sleep(max(0.0, self._started + at - time.monotonic()))
            try:
                step()
            except BaseException as exc:  # reported to the test by join()
                self.errors.append(exc)
                return
            self.done.append(f"{time.monotonic() - self._started:.1f}s {what}")


def run_with_chaos(
    configs: list[EdgeConfig], frames: int, steps: list[tuple[float, str, Callable[[], None]]], drain_s: float
) -> tuple[list[DeviceBooks], Chaos]:
    """Every device runs ``frames`` frames at once (a thread each) while the fault script runs; then, once each
    device's escalations are drained, its books (in the order of ``configs``) and the script's record."""
    runtimes = [EdgeRuntime(config) for config in configs]
    for runtime in runtimes:
        runtime.start()
    try:
        chaos = Chaos(steps).start()
        threads = [threading.Thread(target=r.run, kwargs={"max_frames": frames}) for r in runtimes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(drain_s)
        chaos.join()
        return [drained(config.state_path, drain_s) for config in configs], chaos
    finally:
        for runtime in runtimes:
            runtime.close()
