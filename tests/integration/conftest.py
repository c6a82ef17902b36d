"""Real parts: Mosquitto from deploy/cloud/mosquitto.conf and the hub as a `tandem hub run` process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import psutil
import pytest

from cloud.config import FleetConfig, HubConfig
from cloud.fleet.keys import init_keys
from cloud.hub import Hub, LocalPool
from edge.config import (
    DetectorConfig,
    EdgeConfig,
    EscalationConfig,
    GrpcConfig,
    JudgeConfig,
    ModelsConfig,
    MqttConfig,
    MqttTransportConfig,
    OutboxConfig,
    ProbationConfig,
    ServiceConfig,
    SourceConfig,
)
from edge.config import FleetConfig as DeviceFleet
from tandem.broker import MosquittoBroker, find_mosquitto, free_port, wait_for_port
from tests.support.fleet import TOKEN, Api, HttpThread, HubThread, operator

HUB_START_TIMEOUT_S = 180


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoBroker]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: sudo apt-get install -y mosquitto (tools/test does this as root)")
    with MosquittoBroker(free_port()) as broker:
        yield broker


class HubProcess:
    """`tandem hub run` in a child process, stoppable and restartable on the same ports and store."""

    def __init__(self, model: Path, mqtt_port: int, store: Path, log: Path, extra: tuple[str, ...] = ()) -> None:
        self.model = model
        self.extra = extra
        self.mqtt_port = mqtt_port
        self.store = store
        self.log = log
        self.grpc_port = free_port()
        self.http_port = free_port()
        self._process: Optional[subprocess.Popen[str]] = None

    @property
    def running(self) -> bool:
        return self._process is not None

    def start(self) -> None:
        if self._process is not None:
            return
        command = [
            sys.executable,
            "-m",
            "tandem.cli",
            "hub",
            "run",
            "--model",
            str(self.model),
            "--grpc-port",
            str(self.grpc_port),
            "--http-port",
            str(self.http_port),
            "--mqtt-port",
            str(self.mqtt_port),
            "--store",
            str(self.store),
            *self.extra,
        ]
        self._log_file = self.log.open("a")
        self._process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            start_new_session=True,
        )
        ready = threading.Event()

        def watch() -> None:
            assert self._process is not None and self._process.stdout is not None
            for line in self._process.stdout:
                if line.startswith("hub ready"):
                    ready.set()

        self._watcher = threading.Thread(target=watch, daemon=True)
        self._watcher.start()
        deadline = time.monotonic() + HUB_START_TIMEOUT_S
        while not ready.wait(0.5):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the hub did not start; its log: {self.log}\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM, as systemd or Kubernetes would; returns once nothing listens on its ports."""
        if self._process is None:
            return
        family = self._family()
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._end(family)  # Ray's shutdown leaves its dashboard and runtime-env agents behind
        self._release()
        self._wait_closed()

    def _family(self) -> list[psutil.Process]:
        if self._process is None:
            return []
        hub = psutil.Process(self._process.pid)
        return [hub, *hub.children(recursive=True)]

    @staticmethod
    def _end(family: list[psutil.Process]) -> None:
        for process in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(family, timeout=30)

    def kill(self) -> None:
        """SIGKILL to the hub and every process it started, all at once, as a crash of its machine. (Ray's own
        processes leave the hub's process group; killed through it alone they die one by one, seconds later.)"""
        if self._process is None:
            return
        self._end(self._family())
        self._process.wait()
        self._release()
        self._wait_closed()

    def _release(self) -> None:
        """The dead hub's pipe (once the watcher has read it to its end) and its log file."""
        assert self._process is not None
        self._watcher.join(10)
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._log_file.close()
        self._process = None

    def _wait_closed(self, timeout_s: float = 30.0) -> None:
        """A Ray proxy can outlive the hub's own process for a moment; "down" means nothing answers."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if not any(wait_for_port("127.0.0.1", port, 0.05) for port in (self.grpc_port, self.http_port)):
                return
            time.sleep(0.1)
        pytest.fail(f"the hub's ports {self.grpc_port}, {self.http_port} still answer {timeout_s} s after it stopped")


@pytest.fixture(scope="session")
def hub(demo_assets, mosquitto, tmp_path_factory) -> Iterator[HubProcess]:
    """The hub, not yet started: a test calls start() (or stop()) as it needs."""
    work = tmp_path_factory.mktemp("hub")
    process = HubProcess(
        demo_assets / "models" / "digits-strong.onnx", mosquitto.port, work / "hub.db", work / "hub.log"
    )
    yield process
    process.stop()


def edge_config(
    tmp_path: Path,
    demo_assets: Path,
    hub: HubProcess | _NoGrpc,
    mqtt_port: int,
    *,
    device_id: str,
    threshold: float = 0.9,
    deadline_ms: int = 20_000,
    source: str = "video",
) -> EdgeConfig:
    stream = demo_assets / "stream"
    return EdgeConfig(
        device_id=device_id,
        state_path=tmp_path / f"{device_id}.db",
        source=SourceConfig(
            kind=source,
            path=stream / ("digits.avi" if source == "video" else "images"),
            labels_csv=stream / "labels.csv",
        ),
        detector=DetectorConfig(model_path=demo_assets / "models" / "digits-weak.onnx"),
        judge=JudgeConfig(confidence_threshold=threshold),
        outbox=OutboxConfig(retry_initial_ms=100, retry_max_ms=1000),
        transport=GrpcConfig(target=f"127.0.0.1:{hub.grpc_port}", timeout_ms=5000),
        mqtt=MqttConfig(port=mqtt_port),
        escalation=EscalationConfig(deadline_ms=deadline_ms),
        service=ServiceConfig(http_port=0),
    )


@pytest.fixture
def rollout_hub(tmp_path, demo_assets, mosquitto, hub) -> Iterator[tuple[Hub, Api]]:
    hub.stop()  # the session's Ray hub would answer the same escalations
    port = free_port()
    work = tmp_path / "hub"
    config = HubConfig(
        model_path=demo_assets / "models" / "digits-strong.onnx",
        mqtt_port=mosquitto.port,
        mqtt_username="tandem-hub-rollout",
        http_port=port,
        trace_store_path=work / "hub.db",
        fleet=FleetConfig(check_every_s=0.5, operators={"ops": operator(TOKEN)}),
    )
    init_keys(config.keys_dir(), tmp_path / "offline" / "root.pem")
    runner = HubThread(Hub(config, LocalPool(config.artifacts_dir(), config.max_image_pixels)))
    with runner as hub_object, HttpThread(hub_object.http_app(), port):
        api = Api(port)
        yield hub_object, api
        api.client.close()


def fleet_device_config(
    folder: Path,
    demo_assets: Path,
    mqtt_port: int,
    device_id: str,
    *,
    group: str,
    root_key: str,
    fps: float = 20.0,
    probation_frames: int = 60,
) -> EdgeConfig:
    """A device of a managed fleet: escalations over MQTT, the demo stream looped at ``fps``, heartbeats every
    0.5 s, bundles trusted from ``root_key``."""
    base = edge_config(folder, demo_assets, _NO_GRPC, mqtt_port, device_id=device_id, threshold=0.6)
    return base.model_copy(
        update={
            "transport": MqttTransportConfig(kind="mqtt"),
            "source": SourceConfig(kind="images", path=demo_assets / "stream" / "images", max_fps=fps, loop=True),
            "fleet": DeviceFleet(group=group, telemetry_interval_s=0.5),
            "models": ModelsConfig(
                root_keys=[root_key], probation=ProbationConfig(frames=probation_frames, max_s=30.0)
            ),
        }
    )


class _NoGrpc:
    grpc_port = 1  # escalations go over MQTT; nothing listens here


_NO_GRPC = _NoGrpc()
