"""PP-OCRv4's text recogniser (SVTR, CTC), shared by the device's ``ocr`` detector and the hub's recogniser.

Recognition follows PP-OCR's: a text box is cut out upright, scaled to 48 pixels high, and decoded greedily
(CTC): the best class per time step, repeats and blanks dropped, runs of spaces made one; a character's
confidence is its step's probability. The alphabet is the model's ``character`` metadata (the ONNX files
``rapidocr-onnxruntime`` ships carry it). Runs on Python 3.10 (the edge imports it).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from common.errors import InferenceError
from common.inference.onnx import onnx_metadata
from common.inference.runner import Runner

REC_HEIGHT = 48
REC_MAX_WIDTH = 320


def normalise(image: np.ndarray) -> np.ndarray:
    """BGR/grey uint8 -> float32 [1, 3, H, W] in -1..1 (PP-OCR's mean 0.5, std 0.5, RGB order)."""
    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    nchw: np.ndarray = ((rgb.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[np.newaxis]
    return nchw


def is_recogniser(meta: dict[str, str]) -> bool:
    """Whether a model's metadata says it reads text (PP-OCR recognisers carry their ``character`` list)."""
    return "character" in meta


def upright(image: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """The rotated rectangle ``corners`` cut out and turned upright (long side horizontal)."""
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


class Recogniser:
    """Reads one upright text crop: its text and each character's confidence."""

    def __init__(self, path: Path, runner: Runner) -> None:
        self.runner = runner
        meta = runner.metadata() or onnx_metadata(path)
        if "character" not in meta:
            raise InferenceError(f"{path}: no 'character' list in the model's metadata (not a PP-OCR recogniser?)")
        self.alphabet = ["", *meta["character"].splitlines(), " "]  # CTC blank first, PP-OCR's space last

    def read(self, crop: np.ndarray) -> tuple[str, list[float]]:
        height, width = crop.shape[:2]
        target_w = int(min(REC_MAX_WIDTH, max(REC_HEIGHT // 4, round(REC_HEIGHT * width / max(height, 1)))))
        resized = cv2.resize(crop, (target_w, REC_HEIGHT))
        batch = np.zeros((1, 3, REC_HEIGHT, REC_MAX_WIDTH), dtype=np.float32)
        batch[:, :, :, :target_w] = normalise(resized)
        probs = self.runner.run(batch)[0]  # [T, classes]
        if probs.ndim != 2 or probs.shape[1] != len(self.alphabet):
            raise InferenceError(f"recogniser returned {probs.shape}; expected [T, {len(self.alphabet)}]")
        best = probs.argmax(axis=1)
        chars: list[tuple[str, float]] = []
        previous = -1
        for step, index in enumerate(best):
            space_again = self.alphabet[index] == " " and bool(chars) and chars[-1][0] == " "
            if index not in (previous, 0) and not space_again:  # one space between words, as printed
                chars.append((self.alphabet[index], float(probs[step, index])))
            previous = int(index)
        while chars and chars[0][0] == " ":
            chars.pop(0)
        while chars and chars[-1][0] == " ":
            chars.pop()
        return "".join(c for c, _ in chars), [score for _, score in chars]
