"""Text detection as a detector kind: PP-OCRv4's detector (DBNet), boxes around text; the pre- and
post-processing is ``common.inference.text``'s, which the hub runs too."""

from __future__ import annotations

import time

import numpy as np

from common.inference.text import axis_box, find_text
from edge.detectors.base import Detector
from protocol.messages import Prediction


class TextDetection(Detector):
    """Boxes around text; labels/scores hold ``text`` and the best box score (0 when there is none)."""

    kind = "text_detection"

    def start(self) -> None:
        self._det = self.make_runner(self.config.model_path)
        self.warm_up()

    def infer(self, image: np.ndarray) -> Prediction:
        started = time.perf_counter()
        found = find_text(self._det, image, self.config.det_min_side, self.config.det_max_side)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        boxes = tuple(axis_box(c, "text", s) for c, s in found)
        best = max((b.score for b in boxes), default=0.0)
        return Prediction("pp-ocrv4-det", "4", ("text",), (best,), elapsed_ms, boxes=boxes)
