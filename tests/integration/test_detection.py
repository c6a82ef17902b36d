"""Object detection end to end: four cameras in one device process sharing the light detector (one camera hung),
crops of the doubted boxes escalated as JPEG to a real Ray Serve hub whose pool runs the strong detector, and
the hub's boxes, for the whole frame, stored on the device."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge.app import EdgeRuntime
from edge.config import (
    DetectorConfig,
    EdgeConfig,
    EscalationConfig,
    GrpcConfig,
    JudgeConfig,
    MqttConfig,
    OutboxConfig,
    ServiceConfig,
    SourceConfig,
)
from edge.judge import TraceState
from tandem.broker import free_port
from tests.integration.conftest import HubProcess
from tools.detection_models import CLASSES, mean_ap

CAMERAS = ("gate", "yard", "dock")
PER_CAMERA = 30


class HungCamera:
    """A stream server that takes connections and never sends a byte: a camera whose stream has hung."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            self._held.append(connection)

    def __enter__(self) -> HungCamera:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.close()
        for connection in self._held:
            connection.close()


@pytest.fixture(scope="module")
def detection_hub(detect_models, mosquitto, hub, tmp_path_factory) -> Iterator[HubProcess]:
    hub.stop()  # one Ray hub at a time on this machine; later tests start the session's again
    work = tmp_path_factory.mktemp("detection-hub")
    process = HubProcess(
        detect_models / "models" / "shapes-strong.onnx", mosquitto.port, work / "hub.db", work / "hub.log"
    )
    process.start()
    yield process
    process.stop()


def truth(detect_models: Path, name: str) -> np.ndarray:
    rows = json.loads((detect_models / "stream" / "labels.json").read_text())[name]
    return np.array([[*r[:4], CLASSES.index(r[4])] for r in rows], np.float32).reshape(-1, 5)


def as_array(boxes) -> np.ndarray:
    rows = [[b.x0, b.y0, b.x1, b.y1, b.score, CLASSES.index(b.label)] for b in boxes]
    return np.array(rows, np.float32).reshape(-1, 6)


def test_four_cameras_one_hung_escalate_crops_and_store_the_strong_detectors_boxes(
    tmp_path, detect_models, detection_hub, mosquitto
):
    scenes = sorted((detect_models / "stream").glob("*.png"))[: PER_CAMERA * len(CAMERAS)]
    sources, files = [], {}
    for i, name in enumerate(CAMERAS):
        folder = tmp_path / name
        folder.mkdir()
        mine = scenes[i :: len(CAMERAS)]
        for scene in mine:
            (folder / scene.name).symlink_to(scene)
        files[name] = [s.name for s in mine]
        # The dock camera's judge is its own: it doubts more, so it escalates more.
        judge = {"box_threshold": 0.7} if name == "dock" else {}
        sources.append(SourceConfig(kind="images", path=folder, source_id=name, judge=judge))
    with HungCamera() as hung:
        sources.append(
            SourceConfig(
                kind="stream", url=f"http://127.0.0.1:{hung.port}/stream.mjpg", source_id="hung", timeout_ms=2000
            )
        )
        config = EdgeConfig(
            device_id="det-cams",
            state_path=tmp_path / "edge.db",
            sources=sources,
            detector=DetectorConfig(
                kind="detection", model_path=detect_models / "models" / "shapes-light.onnx", conf_threshold=0.1
            ),
            judge=JudgeConfig(confidence_threshold=0.0, box_floor=0.25, max_weak_box_share=0.5, box_threshold=0.5),
            outbox=OutboxConfig(retry_initial_ms=100, retry_max_ms=1000),
            transport=GrpcConfig(target=f"127.0.0.1:{detection_hub.grpc_port}", timeout_ms=10_000),
            mqtt=MqttConfig(port=mosquitto.port),
            escalation=EscalationConfig(deadline_ms=60_000, payload="boxes", image_format="jpeg", jpeg_quality=90),
            service=ServiceConfig(http_port=0),
        )
        with EdgeRuntime(config) as runtime:
            # The hung camera gives nothing and holds up nothing: the three others' frames all go through.
            assert runtime.run(max_frames=PER_CAMERA * len(CAMERAS)) == PER_CAMERA * len(CAMERAS)
            assert runtime.wait_resolved(90), "escalations without a verdict"
            for name in CAMERAS:
                assert runtime.metrics.value("frames", camera=name) == PER_CAMERA, name
            assert runtime.metrics.value("frames", camera="hung") == 0
            traces = runtime.store.traces()
            sent = {
                s.labels["payload"]: s.value
                for m in runtime.metrics.registry.collect()
                for s in m.samples
                if s.name == "tandem_edge_escalation_bytes_count"
            }

    escalated = [t for t in traces if t.escalated_at is not None]
    by_camera = {name: sum(t.source_id == name for t in escalated) for name in CAMERAS}
    assert all(by_camera.values()), f"every camera escalates some frames: {by_camera}"
    assert by_camera["dock"] > max(by_camera["gate"], by_camera["yard"]), by_camera  # its own, stricter judge
    for trace in escalated:
        assert trace.state is TraceState.COMPLETE and trace.cloud_label is not None, trace
        assert trace.cloud_boxes, "the hub's verdict carries boxes"
        assert all(0 <= b.x0 < b.x1 <= 160 and 0 <= b.y0 < b.y1 <= 120 for b in trace.cloud_boxes)

    # The hub's boxes beat the device's own on exactly the frames the device doubted.
    truths = [truth(detect_models, files[t.source_id][t.frame_index]) for t in escalated]
    local = mean_ap([as_array(t.local_boxes) for t in escalated], truths)
    cloud = mean_ap([as_array(t.cloud_boxes) for t in escalated], truths)
    assert cloud > local, (local, cloud)

    # What went up were crops around the doubted boxes (the JPEG encoder's sizes are in tools/bench edge).
    assert sent.get("crop", 0) > 0, sent
    # The hub's trace says which model answered.
    with urllib.request.urlopen(f"http://127.0.0.1:{detection_hub.http_port}/v1/traces/{escalated[0].trace_id}") as r:
        body = json.load(r)
    assert body["status"] == "SUCCESS" and body["device_id"] == "det-cams"
