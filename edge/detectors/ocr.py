"""OCR: PP-OCRv4's text detector (``edge.detectors.text``) and recogniser (SVTR), the text per character.

The models are the ONNX files `rapidocr-onnxruntime` ships (fetched by
``tools/ocr_models``). Recognition is ``common.inference.ocr``'s, which the hub's recogniser runs too.
"""

from __future__ import annotations

import time

import numpy as np

from common.errors import InferenceError
from common.inference.ocr import REC_HEIGHT, Recogniser, upright
from common.inference.text import axis_box, find_text
from edge.detectors.base import Detector
from protocol.messages import Prediction, TextLine


class Ocr(Detector):
    """Text lines with a confidence per character; labels/scores hold each line and its confidence.

    A frame with no text gives the single label ``""`` with score 1.0 when the
    detector found nothing at all (a confident 'no text here').
    """

    kind = "ocr"

    def start(self) -> None:
        if self.config.rec_model_path is None:
            raise InferenceError("an ocr detector needs rec_model_path (the recogniser)")
        self._det = self.make_runner(self.config.model_path)
        self._rec = Recogniser(self.config.rec_model_path, self.make_runner(self.config.rec_model_path))
        # A blank frame has no text, so warm the recogniser on its own: a backend that cannot run it
        # (OpenCV 4's DNN on PP-OCRv4 rec) fails here, at start, not on the first frame with text.
        self._rec.read(np.full((REC_HEIGHT, REC_HEIGHT * 4, 3), 255, np.uint8))
        self.warm_up()

    def infer(self, image: np.ndarray) -> Prediction:
        started = time.perf_counter()
        found = find_text(self._det, image, self.config.det_min_side, self.config.det_max_side)
        lines = []
        for corners, score in found:
            text, char_scores = self._rec.read(upright(image, corners))
            if text:
                lines.append(TextLine(text, tuple(char_scores), axis_box(corners, "text", score)))
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        if not lines:
            return Prediction("pp-ocrv4", "4", ("",), (1.0 if not found else 0.0,), elapsed_ms)
        return Prediction(
            "pp-ocrv4",
            "4",
            tuple(t.text for t in lines),
            tuple(t.confidence for t in lines),
            elapsed_ms,
            texts=tuple(lines),
        )
