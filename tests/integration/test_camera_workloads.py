"""Camera workloads end to end against one real Ray Serve hub serving them all through routing rules.

Object detection: four cameras in one device process sharing the light detector (one camera hung), crops of the
doubted boxes escalated as JPEG, the strong detector's boxes for the whole frame stored on the device.

Licence plates: the device finds text (PP-OCRv4's detector) and escalates the crop around it; the hub reads it
with PP-OCRv4's recogniser and checks the reading against the plate format in a chain (recogniser, then parser).
A device that sends the whole frame gets the hub's own text detector first (detector, recogniser, parser).
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

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
from edge.judge.calibrate import boxes_array, mean_ap
from edge.outbox.records import TraceRecord
from tandem.broker import free_port
from tests.integration.conftest import HubProcess
from tests.support.waiting import wait_for
from tools.detection_models import CLASSES

CAMERAS = ("gate", "yard", "dock")
PER_CAMERA = 30


PLATES = ["KA51 MX7", "TN09 BQ4", "MH12 DE5"]
SIGN = "NO PARKING"  # text that is not a plate: the format check says so
PLATE_FORMAT = "[A-Z]{2}[0-9]{2} [A-Z]{2}[0-9]"


@pytest.fixture(scope="module")
def workloads_hub(detect_models, ocr_models, mosquitto, hub, tmp_path_factory) -> Iterator[HubProcess]:
    """One hub for this module's devices: the strong detector for shapes, PP-OCRv4 for plates."""
    hub.stop()  # one Ray hub at a time on this machine; later tests start the session's again
    work = tmp_path_factory.mktemp("workloads-hub")
    strong = detect_models / "models" / "shapes-strong.onnx"
    chain = {"strategy": "parallel", "aggregate": "chain"}
    rules = {
        "models": {
            "shapes-strong": {"path": str(strong)},
            "plate-finder": {"path": str(ocr_models / "ch_PP-OCRv4_det_infer.onnx")},
            "plate-reader": {"path": str(ocr_models / "ch_PP-OCRv4_rec_infer.onnx")},
            "plate-format": {"kind": "parser", "pattern": PLATE_FORMAT},
        },
        "routes": [
            {"name": "shapes", "when": {"model_hint": ["shapes"]}, "steps": [{"model": "shapes-strong"}]},
            {
                "name": "whole-frames",
                "when": {"model_hint": ["read-frame"]},
                **chain,
                "steps": [{"model": "plate-finder"}, {"model": "plate-reader"}, {"model": "plate-format"}],
            },
            {"name": "plates", **chain, "steps": [{"model": "plate-reader"}, {"model": "plate-format"}]},
        ],
    }
    routing = work / "routing.yaml"
    routing.write_text(yaml.safe_dump(rules))
    process = HubProcess(strong, mosquitto.port, work / "hub.db", work / "hub.log", extra=("--routing", str(routing)))
    process.start()
    yield process
    process.stop()


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


def truth(detect_models: Path, name: str) -> np.ndarray:
    rows = json.loads((detect_models / "stream" / "labels.json").read_text())[name]
    return np.array([[*r[:4], CLASSES.index(r[4])] for r in rows], np.float32).reshape(-1, 5)


def test_four_cameras_one_hung_escalate_crops_and_store_the_strong_detectors_boxes(
    tmp_path, detect_models, workloads_hub, mosquitto
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
        # Played at 10 fps, like cameras: the run lasts 3 s, long enough to see the hung camera go down meanwhile.
        sources.append(SourceConfig(kind="images", path=folder, source_id=name, judge=judge, max_fps=10))
    with HungCamera() as hung:
        sources.append(
            SourceConfig(
                kind="stream", url=f"http://127.0.0.1:{hung.port}/stream.mjpg", source_id="hung", timeout_ms=1000
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
            transport=GrpcConfig(target=f"127.0.0.1:{workloads_hub.grpc_port}", timeout_ms=10_000),
            mqtt=MqttConfig(port=mosquitto.port),
            escalation=EscalationConfig(
                deadline_ms=60_000, payload="boxes", image_format="jpeg", jpeg_quality=90, model_hint="shapes"
            ),
            service=ServiceConfig(http_port=0),
        )
        with EdgeRuntime(config) as runtime:
            # The hung camera gives nothing and holds up nothing: the three others' frames all go through.
            ran: list[int] = []
            loop = threading.Thread(target=lambda: ran.append(runtime.run(max_frames=PER_CAMERA * len(CAMERAS))))
            loop.start()
            # Meanwhile /healthz names each camera; the hung one goes down (its stream timed out): degraded.
            wait_for(lambda: "source down" in runtime.health_probe()[1]["degraded"], 10, "the hung camera down")
            alive, body = runtime.health_probe()
            assert alive and {s["id"]: s["state"] for s in body["sources"]}["hung"] == "down"
            assert {s["id"]: s["state"] for s in body["sources"] if s["id"] != "hung"} == dict.fromkeys(CAMERAS, "file")
            loop.join(60)
            assert ran == [PER_CAMERA * len(CAMERAS)]
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
    local = mean_ap([boxes_array(t.local_boxes, CLASSES) for t in escalated], truths)
    cloud = mean_ap([boxes_array(t.cloud_boxes, CLASSES) for t in escalated], truths)
    assert cloud > local, (local, cloud)

    # What went up were crops around the doubted boxes (the JPEG encoder's sizes are in tools/bench edge).
    assert sent.get("crop", 0) > 0, sent
    # The hub's trace says which model answered.
    with urllib.request.urlopen(f"http://127.0.0.1:{workloads_hub.http_port}/v1/traces/{escalated[0].trace_id}") as r:
        body = json.load(r)
    assert body["status"] == "SUCCESS" and body["device_id"] == "det-cams"


# -- licence plates ----------------------------------------------------------------------------------------------------


def scene(text: str, left: int) -> np.ndarray:
    """A 640x360 street-like frame with a white, black-bordered plate somewhere in it."""
    image = np.full((360, 640, 3), 90, np.uint8)
    cv2.rectangle(image, (0, 250), (640, 360), (60, 60, 60), -1)  # the road
    top = 140
    cv2.rectangle(image, (left, top), (left + 360, top + 80), (255, 255, 255), -1)
    cv2.rectangle(image, (left, top), (left + 360, top + 80), (0, 0, 0), 3)
    scale = 2.0 if len(text) <= 8 else 1.3
    cv2.putText(image, text, (left + 20, top + 65), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 5)
    return image


def frames(folder: Path) -> list[str]:
    folder.mkdir()
    texts = [*PLATES, SIGN]
    for i, text in enumerate(texts):
        cv2.imwrite(str(folder / f"{i:03d}.png"), scene(text, left=40 + 60 * i))
    return texts


def device(
    tmp_path: Path, ocr_models: Path, hub: HubProcess, mqtt_port: int, name: str, escalation: EscalationConfig
) -> EdgeConfig:
    return EdgeConfig(
        device_id=name,
        state_path=tmp_path / "edge.db",
        source=SourceConfig(kind="images", path=tmp_path / "frames", source_id="gate"),
        detector=DetectorConfig(kind="text_detection", model_path=ocr_models / "ch_PP-OCRv4_det_infer.onnx"),
        # Every box the text detector finds is doubted (no box scores 1.0): the device reads nothing itself.
        judge=JudgeConfig(confidence_threshold=0.0, box_threshold=1.0, max_weak_box_share=0.0),
        outbox=OutboxConfig(retry_initial_ms=100, retry_max_ms=1000),
        transport=GrpcConfig(target=f"127.0.0.1:{hub.grpc_port}", timeout_ms=10_000),
        mqtt=MqttConfig(port=mqtt_port),
        escalation=escalation,
        service=ServiceConfig(http_port=0),
    )


def played(config: EdgeConfig, frames: int) -> tuple[dict[int, TraceRecord], dict[str, float]]:
    """Every frame through the device, every verdict in: its traces by frame, and its escalations by payload."""
    with EdgeRuntime(config) as runtime:
        assert runtime.run() == frames
        assert runtime.wait_resolved(90), "escalations without a verdict"
        traces = {t.frame_index: t for t in runtime.store.traces()}
        sent = {
            s.labels["payload"]: s.value
            for m in runtime.metrics.registry.collect()
            for s in m.samples
            if s.name == "tandem_edge_escalation_bytes_count"
        }
    return traces, sent


def test_the_hub_reads_the_plates_the_device_found_and_checks_their_format(
    tmp_path, ocr_models, workloads_hub, mosquitto
):
    texts = frames(tmp_path / "frames")
    sent = EscalationConfig(deadline_ms=60_000, payload="boxes", image_format="png", model_hint="plates")
    readings, payloads = played(
        device(tmp_path, ocr_models, workloads_hub, mosquitto.port, "plate-cam", sent), len(texts)
    )
    assert payloads == {"crop": len(texts)}  # the crop around the text went up, never the 640x360 frame
    for i, text in enumerate(PLATES):
        trace = readings[i]
        assert trace.state is TraceState.COMPLETE and trace.escalated_at is not None
        assert trace.local_label == "text"  # the device found text and read none of it
        assert trace.cloud_label == text, f"frame {i}: read {trace.cloud_label!r}, expected {text!r}"
        assert trace.cloud_confidence and trace.cloud_confidence > 0.5
    sign = readings[len(PLATES)]
    assert sign.state is TraceState.COMPLETE
    assert sign.cloud_label == "invalid" and sign.cloud_confidence == 0.0  # read, but not a plate


def test_a_whole_frame_is_searched_for_text_at_the_hub_then_read(tmp_path, ocr_models, workloads_hub, mosquitto):
    texts = frames(tmp_path / "frames")
    sent = EscalationConfig(deadline_ms=60_000, payload="frame", image_format="png", model_hint="read-frame")
    traces, payloads = played(
        device(tmp_path, ocr_models, workloads_hub, mosquitto.port, "frame-cam", sent), len(texts)
    )
    assert payloads == {"frame": len(texts)}
    assert [traces[i].cloud_label for i in range(len(texts))] == [*PLATES, "invalid"]
