"""OCR: PP-OCRv4's text detector (``edge.detectors.text``) and recogniser (SVTR), the text per character.

The models are the ONNX files `rapidocr-onnxruntime` ships (fetched by
``tools/ocr_models``). Recognition follows PP-OCR's: each box is cut out
upright, scaled to 48 pixels high, and decoded greedily (CTC): the best class
per time step, repeats and blanks dropped; a character's confidence is its
step's probability.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from common.errors import InferenceError
from common.inference.onnx import onnx_metadata
from common.inference.runner import Runner
from edge.detectors.base import Detector
from edge.detectors.text import axis_box, find_text, normalise
from protocol.messages import Prediction, TextLine

REC_HEIGHT = 48
REC_MAX_WIDTH = 320


def _crop(image: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """The rotated rectangle cut out and turned upright (long side horizontal)."""
    tl, tr, br, bl = _order(corners)
    width = int(max(np.linalg.norm(tr - tl), np.linalg.norm(br - bl)))
    height = int(max(np.linalg.norm(bl - tl), np.linalg.norm(br - tr)))
    width, height = max(width, 1), max(height, 1)
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(np.array([tl, tr, br, bl], dtype=np.float32), target)
    crop = cv2.warpPerspective(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)
    if height > width * 1.5:
        crop = np.rot90(crop)
    return crop


def _order(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    s = corners.sum(axis=1)
    d = np.diff(corners, axis=1).ravel()
    return corners[np.argmin(s)], corners[np.argmin(d)], corners[np.argmax(s)], corners[np.argmax(d)]


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
        self._rec = self.make_runner(self.config.rec_model_path)
        characters = _characters(self.config.rec_model_path, self._rec)
        self._alphabet = ["", *characters, " "]  # CTC blank first, PP-OCR's space last
        # A blank frame has no text, so warm the recogniser on its own: a backend that cannot run it
        # (OpenCV 4's DNN on PP-OCRv4 rec) fails here, at start, not on the first frame with text.
        self._read(np.full((REC_HEIGHT, REC_HEIGHT * 4, 3), 255, np.uint8))
        self.warm_up()

    def infer(self, image: np.ndarray) -> Prediction:
        started = time.perf_counter()
        found = find_text(self._det, image, self.config.det_min_side, self.config.det_max_side)
        lines = []
        for corners, score in found:
            crop = _crop(image, corners)
            text, char_scores = self._read(crop)
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

    def _read(self, crop: np.ndarray) -> tuple[str, list[float]]:
        height, width = crop.shape[:2]
        target_w = int(min(REC_MAX_WIDTH, max(REC_HEIGHT // 4, round(REC_HEIGHT * width / max(height, 1)))))
        resized = cv2.resize(crop, (target_w, REC_HEIGHT))
        batch = np.zeros((1, 3, REC_HEIGHT, REC_MAX_WIDTH), dtype=np.float32)
        batch[:, :, :, :target_w] = normalise(resized)
        probs = self._rec.run(batch)[0]  # [T, classes]
        if probs.ndim != 2 or probs.shape[1] != len(self._alphabet):
            raise InferenceError(f"recogniser returned {probs.shape}; expected [T, {len(self._alphabet)}]")
        best = probs.argmax(axis=1)
        chars: list[tuple[str, float]] = []
        previous = -1
        for step, index in enumerate(best):
            if index not in (previous, 0):
                chars.append((self._alphabet[index], float(probs[step, index])))
            previous = index
        while chars and chars[0][0] == " ":
            chars.pop(0)
        while chars and chars[-1][0] == " ":
            chars.pop()
        return "".join(c for c, _ in chars), [score for _, score in chars]


def _characters(path: Path, runner: Runner) -> list[str]:
    meta = runner.metadata() or onnx_metadata(path)
    if "character" not in meta:
        raise InferenceError(f"{path}: no 'character' list in the model's metadata (not a PP-OCR recogniser?)")
    return meta["character"].splitlines()
