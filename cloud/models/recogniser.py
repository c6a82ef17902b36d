"""A cloud text recogniser: reads the text boxes a device found, with PP-OCR's recogniser
(``common.inference.ocr``).

A device that finds text (``text_detection``, or ``ocr`` whose reading it doubts) escalates the frame, or a crop
of it, with its boxes in the local prediction. The hub cuts each box out of what it got (mapped through the
request's region, ``protocol.regions``), reads it, and answers with the lines, the most confident first, so a
``chain`` into a ``parser`` checks the best reading against a pattern (a licence plate's format).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cloud.models.base import HubModel
from cloud.models.classifier import pixels
from common.inference.ocr import Recogniser
from common.inference.onnx import OrtRunner
from common.inference.preprocess import MAX_IMAGE_PIXELS
from protocol.messages import Box, EscalationRequest, Prediction, TextLine
from protocol.regions import Region

PAD = 0.1  # of a box's height, added on each side before it is read (a detector's box hugs the ink)
NOTHING = Prediction("pp-ocr-rec", "1", ("",), (0.0,))


class CloudRecogniser(HubModel):
    def __init__(self, path: Path, runner: OrtRunner, max_image_pixels: int = MAX_IMAGE_PIXELS) -> None:
        super().__init__(runner, max_image_pixels)
        self.recogniser = Recogniser(path, runner)
        self.model_id = runner.metadata().get("tandem.model_id", "pp-ocr-rec")

    def answer(self, request: EscalationRequest) -> Prediction:
        started = time.perf_counter()
        image = pixels(request.input, self.max_image_pixels)
        region = Region.from_attributes(request.attributes, int(image.shape[1]), int(image.shape[0]))
        local = request.local_prediction
        boxes = [t.box for t in local.texts if t.box is not None] or [b for b in local.boxes if b.label == "text"]
        lines = []
        for box in boxes:
            crop = _cut(image, box, region)
            if crop is None:
                continue
            text, scores = self.recogniser.read(crop)
            if text:
                lines.append(TextLine(text, tuple(scores), box))
        if not lines:
            return NOTHING
        lines.sort(key=lambda t: -t.confidence)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        labels, confidences = tuple(t.text for t in lines), tuple(t.confidence for t in lines)
        return Prediction(self.model_id, self.version, labels, confidences, elapsed_ms, texts=tuple(lines))


def _cut(image: np.ndarray, box: Box, region: Region) -> np.ndarray | None:
    """The box (in frame pixels), padded, cut from the escalated image (a crop of the frame, maybe scaled)."""
    pad = PAD * (box.y1 - box.y0)
    s = region.scale
    x0 = int(max(0, (box.x0 - pad - region.x0) * s))
    y0 = int(max(0, (box.y0 - pad - region.y0) * s))
    x1 = int(min(image.shape[1], (box.x1 + pad - region.x0) * s + 0.999))
    y1 = int(min(image.shape[0], (box.y1 + pad - region.y0) * s + 0.999))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None  # the box lies outside what was sent
    return image[y0:y1, x0:x1]
