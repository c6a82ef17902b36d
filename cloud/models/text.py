"""A cloud text detector: PP-OCR's detector (``common.inference.text``) on the hub, answering for the whole frame.

It finds text in what the device sent (a crop is mapped back through its region, ``protocol.regions``) and
answers with boxes labelled ``text``, in the frame's pixels. Before a recogniser in a ``chain``, its boxes are
what the recogniser reads (``cloud.routing``: a hub step reads the answer so far), so a device that sends the
frame alone gets it read.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cloud.models.classifier import pixels
from common.errors import InferenceError
from common.inference.onnx import OrtRunner
from common.inference.preprocess import MAX_IMAGE_PIXELS
from common.inference.text import axis_box, find_text
from protocol.errors import MalformedMessage
from protocol.messages import Box, EscalationRequest, Prediction
from protocol.regions import Region

MIN_SIDE, MAX_SIDE = 96, 1280  # a device's defaults are 96 and 960: the hub can afford a larger frame


class CloudTextDetector:
    def __init__(self, path: Path, runner: OrtRunner, max_image_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.runner = runner
        self._max_pixels = max_image_pixels
        self.model_id = "pp-ocr-det"

    @property
    def version(self) -> str:
        return "1"

    @property
    def session(self) -> Any:
        return self.runner.session

    def predict_requests(self, requests: list[EscalationRequest]) -> list[Prediction | Exception]:
        results: list[Prediction | Exception] = []
        for request in requests:
            try:
                results.append(self._find(request))
            except MalformedMessage as exc:
                results.append(exc)
            except (ValueError, cv2.error) as exc:
                results.append(MalformedMessage(f"escalated input: {exc}"))
        return results

    def _find(self, request: EscalationRequest) -> Prediction:
        started = time.perf_counter()
        image = pixels(request.input, self._max_pixels)
        region = Region.from_attributes(request.attributes, int(image.shape[1]), int(image.shape[0]))
        found = find_text(self.runner, image, MIN_SIDE, MAX_SIDE)
        boxes = tuple(_to_frame(axis_box(corners, "text", score), region) for corners, score in found)
        best = max((b.score for b in boxes), default=0.0)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        return Prediction(self.model_id, self.version, ("text",), (best,), elapsed_ms, boxes=boxes)

    def run_tensors(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        try:
            return dict(zip(names, self.session.run(names, inputs), strict=True))
        except Exception as exc:  # onnxruntime's errors carry no stable types
            raise InferenceError(f"{self.model_id}: inference failed: {exc}") from exc


def _to_frame(box: Box, region: Region) -> Box:
    s = region.scale
    return Box(
        box.x0 / s + region.x0,
        box.y0 / s + region.y0,
        box.x1 / s + region.x0,
        box.y1 / s + region.y0,
        box.label,
        box.score,
    )
