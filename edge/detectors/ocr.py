"""Text: PP-OCRv4's text detector (boxes around text) and detector + recogniser (the text, per character).

The models are the ONNX files `rapidocr-onnxruntime` ships (fetched by
``tools/ocr_models``); the pre- and post-processing follows PP-OCR's:

- detection (DBNet): the frame scaled so each side is a multiple of 32 and the
  shorter one at least ``det_min_side``, normalised to -1..1, gives a text
  probability map; pixels over 0.3 form regions, each region's minimum-area
  rectangle scores the mean probability inside it (kept from 0.5), and is grown
  by PP-OCR's unclip distance (area x 1.6 / perimeter) to cover the glyphs.
- recognition (SVTR, CTC): each box is cut out upright, scaled to 48 pixels
  high, and decoded greedily: the best class per time step, repeats and blanks
  dropped; a character's confidence is its step's probability.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from edge.detectors.base import Detector
from edge.detectors.onnx import onnx_metadata
from edge.detectors.runner import Runner
from edge.errors import DetectorError
from protocol.messages import Box, Prediction, TextLine

DET_THRESHOLD = 0.3
BOX_THRESHOLD = 0.5
UNCLIP_RATIO = 1.6
MIN_BOX_SIDE = 3
REC_HEIGHT = 48
REC_MAX_WIDTH = 320


def _normalise(image: np.ndarray) -> np.ndarray:
    """BGR/grey uint8 -> float32 [1, 3, H, W] in -1..1 (PP-OCR's mean 0.5, std 0.5, RGB order)."""
    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return ((rgb.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[np.newaxis]


def _det_size(height: int, width: int, min_side: int, max_side: int) -> tuple[int, int]:
    scale = max(1.0, min_side / min(height, width))
    scale = min(scale, max_side / max(height, width))
    return max(32, round(height * scale / 32) * 32), max(32, round(width * scale / 32) * 32)


def find_text(runner: Runner, image: np.ndarray, min_side: int, max_side: int) -> list[tuple[np.ndarray, float]]:
    """Rotated text rectangles (4 corner points in frame pixels) with their scores."""
    height, width = image.shape[:2]
    det_h, det_w = _det_size(height, width, min_side, max_side)
    resized = cv2.resize(image, (det_w, det_h), interpolation=cv2.INTER_LINEAR)
    prob = runner.run(_normalise(resized))
    if prob.ndim != 4:
        raise DetectorError(f"text detector returned shape {prob.shape}, expected [1, 1, H, W]")
    prob_map = prob[0, 0]
    mask = (prob_map > DET_THRESHOLD).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    found = []
    sx, sy = width / det_w, height / det_h
    for contour in contours:
        (cx, cy), (w, h), angle = cv2.minAreaRect(contour)
        if min(w, h) < MIN_BOX_SIDE:
            continue
        region = np.zeros_like(mask)
        cv2.fillPoly(region, [contour], 1)
        score = float(prob_map[region.astype(bool)].mean())
        if score < BOX_THRESHOLD:
            continue
        grow = w * h * UNCLIP_RATIO / (2 * (w + h))
        corners = cv2.boxPoints(((cx, cy), (w + 2 * grow, h + 2 * grow), angle))
        corners[:, 0] = np.clip(corners[:, 0] * sx, 0, width - 1)
        corners[:, 1] = np.clip(corners[:, 1] * sy, 0, height - 1)
        found.append((corners, score))
    # Reading order: top to bottom, then left to right.
    found.sort(key=lambda item: (round(float(item[0][:, 1].min()) / 10), float(item[0][:, 0].min())))
    return found


def _axis_box(corners: np.ndarray, label: str, score: float) -> Box:
    return Box(
        float(corners[:, 0].min()),
        float(corners[:, 1].min()),
        float(corners[:, 0].max()),
        float(corners[:, 1].max()),
        label,
        score,
    )


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
        boxes = tuple(_axis_box(c, "text", s) for c, s in found)
        best = max((b.score for b in boxes), default=0.0)
        return Prediction("pp-ocrv4-det", "4", ("text",), (best,), elapsed_ms, boxes=boxes)


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
            raise DetectorError("an ocr detector needs rec_model_path (the recogniser)")
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
                lines.append(TextLine(text, tuple(char_scores), _axis_box(corners, "text", score)))
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
        batch[:, :, :, :target_w] = _normalise(resized)
        probs = self._rec.run(batch)[0]  # [T, classes]
        if probs.ndim != 2 or probs.shape[1] != len(self._alphabet):
            raise DetectorError(f"recogniser returned {probs.shape}; expected [T, {len(self._alphabet)}]")
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
        raise DetectorError(f"{path}: no 'character' list in the model's metadata (not a PP-OCR recogniser?)")
    return meta["character"].splitlines()
