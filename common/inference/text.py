"""Text detection: PP-OCRv4's detector (DBNet), boxes around text.

The model is the ONNX file `rapidocr-onnxruntime` ships (fetched by
``tools/ocr_models``); the pre- and post-processing follows PP-OCR's: the frame
scaled so each side is a multiple of 32 and the shorter one at least
``det_min_side``, normalised to -1..1, gives a text probability map; pixels over
0.3 form regions, each region's minimum-area rectangle scores the mean
probability inside it (kept from 0.5), and is grown by PP-OCR's unclip distance
(area x 1.6 / perimeter) to cover the glyphs. Shared by the device's ``text_detection`` and ``ocr`` kinds
and the hub's text detector; runs on Python 3.10 (the edge imports it).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from common.errors import InferenceError
from common.inference.ocr import normalise
from common.inference.runner import Dim, Runner
from protocol.messages import Box

DET_THRESHOLD = 0.3
BOX_THRESHOLD = 0.5
UNCLIP_RATIO = 1.6
MIN_BOX_SIDE = 3


def det_size(height: int, width: int, min_side: int, max_side: int) -> tuple[int, int]:
    scale = max(1.0, min_side / min(height, width))
    scale = min(scale, max_side / max(height, width))
    return max(32, round(height * scale / 32) * 32), max(32, round(width * scale / 32) * 32)


def find_text(runner: Runner, image: np.ndarray, min_side: int, max_side: int) -> list[tuple[np.ndarray, float]]:
    """Rotated text rectangles (4 corner points in frame pixels) with their scores."""
    height, width = image.shape[:2]
    det_h, det_w = det_size(height, width, min_side, max_side)
    resized = cv2.resize(image, (det_w, det_h), interpolation=cv2.INTER_LINEAR)
    prob = runner.run(normalise(resized))
    if prob.ndim != 4:
        raise InferenceError(f"text detector returned shape {prob.shape}, expected [1, 1, H, W]")
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


def axis_box(corners: np.ndarray, label: str, score: float) -> Box:
    return Box(
        float(corners[:, 0].min()),
        float(corners[:, 1].min()),
        float(corners[:, 0].max()),
        float(corners[:, 1].max()),
        label,
        score,
    )


def is_text_detector(input_shape: Sequence[Dim], output_shape: Sequence[Dim]) -> bool:
    """Whether a model looks like a DBNet text detector: an image [N, 3, H, W] in, one probability map
    [N, 1, H, W] out (PP-OCR's ONNX files carry no metadata saying so)."""
    return len(input_shape) == 4 and input_shape[1] == 3 and len(output_shape) == 4 and output_shape[1] == 1
