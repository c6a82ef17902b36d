"""``tools/bench edge``'s model-update figures, on real parts: a ``Hub`` without Ray, its HTTP API on uvicorn,
Mosquitto, and device runtimes in this process reading the demo stream at a camera's pace.

swap_gap_ratio   the interval between the two frames around a swap (the frame before ran on the old model, the
                 one after on the new) ÷ the median interval of the same run, the worst over the devices;
                 1.0 means the swap held no frame back
update_gap_ratio the longest interval while the devices take the bundle (verify, download, prepare beside the
                 running model, golden check, swap, probation) ÷ the median; quiet_gap_ratio the same over an
                 equal window just before, with no update: the machine's own jitter, for comparison
rollout_s        from a rollout's start (2 waves: a third, then the rest; no soak) to every device active,
                 probation included (probation.frames frames at the camera's pace)
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from cloud.api.access import token_sha256
from cloud.config import FleetConfig, HubConfig, OperatorConfig, Role
from cloud.fleet.keys import init_keys
from cloud.hub import Hub, LocalPool
from common.inference.classify import OnnxModel
from common.inference.golden import make_golden
from common.inference.preprocess import decode_image
from edge.app import EdgeRuntime
from edge.config import (
    DetectorConfig,
    EdgeConfig,
    JudgeConfig,
    ModelsConfig,
    MqttConfig,
    MqttTransportConfig,
    ProbationConfig,
    ServiceConfig,
    SourceConfig,
)
from edge.config import (
    FleetConfig as DeviceFleet,
)
from tandem.broker import MosquittoBroker, free_port

FPS = 30.0
PROBATION_FRAMES = 60
TOKEN = "bench"
QUIET_S = 6.0  # the control window before the rollout, about as long as the rollout
BENCH_OPERATOR = OperatorConfig(token_sha256=token_sha256(TOKEN), role=Role.ADMIN)
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


class _Paced(EdgeRuntime):
    """The runtime, noting when each frame was done."""

    def __init__(self, config: EdgeConfig) -> None:
        super().__init__(config)
        self.done_at: list[float] = []
        self.swapped_at: list[float] = []

    def process(self, frame, answer=None):  # type: ignore[no-untyped-def]
        state = super().process(frame, answer)
        self.done_at.append(time.monotonic())
        return state

    def model_swapped(self, manifest):  # type: ignore[no-untyped-def]
        self.swapped_at.append(time.monotonic())  # the new detector is in; the next frame runs on it
        super().model_swapped(manifest)


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"bench: no {what} in {timeout_s:.0f} s")


def _device(work: Path, demo: Path, port: int, device_id: str, root_public: str) -> EdgeConfig:
    return EdgeConfig(
        device_id=device_id,
        state_path=work / f"{device_id}.db",
        source=SourceConfig(kind="images", path=demo / "stream" / "images", max_fps=FPS, loop=True),
        detector=DetectorConfig(model_path=demo / "models" / "digits-weak.onnx"),
        judge=JudgeConfig(confidence_threshold=0.6),
        transport=MqttTransportConfig(kind="mqtt"),
        mqtt=MqttConfig(port=port),
        service=ServiceConfig(http_port=None),
        fleet=DeviceFleet(group="bench", telemetry_interval_s=0.5),
        models=ModelsConfig(root_keys=[root_public], probation=ProbationConfig(frames=PROBATION_FRAMES)),
    )


def _bundle(api: httpx.Client, model: Path, demo: Path) -> str:
    frames = [decode_image(p.read_bytes()) for p in sorted((demo / "stream" / "images").iterdir())[:8]]
    golden = make_golden(OnnxModel(model).predict, frames)
    files = {}
    for name, data, role in (("model.onnx", model.read_bytes(), "model"), ("golden.npz", golden, "golden")):
        sha256 = hashlib.sha256(data).hexdigest()
        api.put(f"/v1/artifacts/{sha256}", content=data, headers=ADMIN).raise_for_status()
        files[name] = {"sha256": sha256, "role": role}
    body = {
        "name": "bench",
        "version": model.stem,
        "files": files,
        "model": {"model_id": model.stem, "file": "model.onnx", "golden": "golden.npz"},
    }
    reply = api.post("/v1/admin/bundles", json=body, headers=ADMIN)
    reply.raise_for_status()
    return str(reply.json()["bundle_id"])


def _rollout(api: httpx.Client, bundle_id: str, waves: list[float]) -> dict[str, Any]:
    headers = ADMIN
    spec = {"bundle_id": bundle_id, "target": {"group": "bench"}, "waves": waves, "soak_s": 0.0}
    started = api.post("/v1/admin/rollouts", json=spec, headers=headers).json()
    status: dict[str, Any] = {}

    def done() -> bool:
        status.update(api.get(f"/v1/admin/rollouts/{started['rollout_id']}", headers=headers).json())
        return status["state"] in ("COMPLETED", "ABORTED")

    _wait(done, 120, "rollout end")
    return status


def measure(work: Path, demo: Path, second_model: Path, devices: int = 3) -> dict[str, float]:
    broker = MosquittoBroker(free_port())
    broker.start()
    http_port = free_port()
    config = HubConfig(
        model_path=demo / "models" / "digits-strong.onnx",
        mqtt_port=broker.port,
        mqtt_username="tandem-hub-bench",
        http_port=http_port,
        trace_store_path=work / "hub" / "hub.db",
        fleet=FleetConfig(check_every_s=0.2, operators={"bench": BENCH_OPERATOR}),
    )
    ring = init_keys(config.keys_dir(), work / "offline" / "root.pem")
    hub = Hub(config, LocalPool(config.artifacts_dir(), config.max_image_pixels))
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()

    async def start() -> None:
        hub.start()

    asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    server = uvicorn.Server(uvicorn.Config(hub.http_app(), host="127.0.0.1", port=http_port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    _wait(lambda: server.started, 30, "HTTP server")
    api = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30)
    runtimes = [_Paced(_device(work, demo, broker.port, f"bench-{i}", ring.root_public)) for i in range(devices)]
    threads = []
    try:
        for runtime in runtimes:
            runtime.start()
            threads.append(threading.Thread(target=runtime.run, daemon=True))
            threads[-1].start()
        _wait(lambda: len(api.get("/v1/devices", headers=ADMIN).json()) == devices, 30, "devices")
        bundle_id = _bundle(api, second_model, demo)
        quiet_from = time.monotonic()
        time.sleep(QUIET_S)  # the control: the same devices, broker and hub, no update
        started = time.monotonic()
        status = _rollout(api, bundle_id, [round(1.0 / devices, 3) + 0.001, 1.0])
        rollout_s = time.monotonic() - started
        if status["state"] != "COMPLETED":
            raise RuntimeError(f"bench: the rollout did not complete: {status['reason']}")
        time.sleep(1.0)
    finally:
        for runtime in runtimes:
            runtime.stop()
        for thread in threads:
            thread.join(10)
        for runtime in runtimes:
            runtime.close()
        api.close()
        server.should_exit = True
        asyncio.run_coroutine_threadsafe(hub.close(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        broker.stop()
    swap, update, quiet = [], [], []
    for runtime in runtimes:
        pairs = list(zip(runtime.done_at, runtime.done_at[1:], strict=False))
        median = statistics.median(b - a for a, b in pairs)
        swap += [(b - a) / median for a, b in pairs for t in runtime.swapped_at if a <= t < b]
        update.append(max(b - a for a, b in pairs if a >= started) / median)
        quiet.append(max(b - a for a, b in pairs if quiet_from <= a < started) / median)
    return {
        "swap_gap_ratio": max(swap),
        "update_gap_ratio": max(update),
        "quiet_gap_ratio": max(quiet),
        "frame_interval_ms": 1000.0 / FPS,
        "rollout_s": rollout_s,
        "rollout_devices": float(devices),
    }
