"""Licence plates read at the hub: the device finds text (PP-OCRv4's detector) and escalates the crop around it;
a real Ray Serve hub reads it with PP-OCRv4's recogniser and checks the reading against the plate format in a
chain (recogniser, then parser), and the device stores the verdict. A device that sends the whole frame gets the
hub's own text detector first (detector, recogniser, parser)."""

from __future__ import annotations

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
from edge.outbox.records import TraceRecord
from tests.integration.conftest import HubProcess

PLATES = ["KA51 MX7", "TN09 BQ4", "MH12 DE5"]
SIGN = "NO PARKING"  # text that is not a plate: the format check says so
PLATE_FORMAT = "[A-Z]{2}[0-9]{2} [A-Z]{2}[0-9]"


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


@pytest.fixture(scope="module")
def ocr_hub(ocr_models, mosquitto, hub, tmp_path_factory) -> Iterator[HubProcess]:
    hub.stop()  # one Ray hub at a time on this machine; later tests start the session's again
    work = tmp_path_factory.mktemp("ocr-hub")
    rec = ocr_models / "ch_PP-OCRv4_rec_infer.onnx"
    rules = {
        "models": {
            "plate-finder": {"path": str(ocr_models / "ch_PP-OCRv4_det_infer.onnx")},
            "plate-reader": {"path": str(rec)},
            "plate-format": {"kind": "parser", "pattern": PLATE_FORMAT},
        },
        "routes": [
            {
                "name": "whole-frames",
                "when": {"model_hint": ["read-frame"]},
                "strategy": "parallel",
                "aggregate": "chain",
                "steps": [{"model": "plate-finder"}, {"model": "plate-reader"}, {"model": "plate-format"}],
            },
            {
                "name": "plates",
                "strategy": "parallel",
                "aggregate": "chain",
                "steps": [{"model": "plate-reader"}, {"model": "plate-format"}],
            },
        ],
    }
    routing = work / "routing.yaml"
    routing.write_text(yaml.safe_dump(rules))
    process = HubProcess(rec, mosquitto.port, work / "hub.db", work / "hub.log", extra=("--routing", str(routing)))
    process.start()
    yield process
    process.stop()


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


def test_the_hub_reads_the_plates_the_device_found_and_checks_their_format(tmp_path, ocr_models, ocr_hub, mosquitto):
    texts = frames(tmp_path / "frames")
    sent = EscalationConfig(deadline_ms=60_000, payload="boxes", image_format="png", model_hint="plates")
    readings, payloads = played(device(tmp_path, ocr_models, ocr_hub, mosquitto.port, "plate-cam", sent), len(texts))
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


def test_a_whole_frame_is_searched_for_text_at_the_hub_then_read(tmp_path, ocr_models, ocr_hub, mosquitto):
    texts = frames(tmp_path / "frames")
    sent = EscalationConfig(deadline_ms=60_000, payload="frame", image_format="png", model_hint="read-frame")
    traces, payloads = played(device(tmp_path, ocr_models, ocr_hub, mosquitto.port, "frame-cam", sent), len(texts))
    assert payloads == {"frame": len(texts)}
    assert [traces[i].cloud_label for i in range(len(texts))] == [*PLATES, "invalid"]
