"""Golden samples: inputs shipped in a model bundle with the answers the model must give for them.

The file is an ``.npz`` (no pickles) with ``images`` (N frames of one shape, uint8), ``labels`` (N strings) and
``scores`` (N x K float32, the model's scores). The hub writes it from the model it signs; the device runs the
model it has just prepared on the same frames and refuses it if any label differs or any score is further than
the tolerance from the expected one: a file that is intact but not the model it claims, or a build (a TensorRT
engine) that does not compute what the ONNX model does.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from common.errors import InferenceError
from protocol.messages import Prediction

Predict = Callable[[np.ndarray], Prediction]


@dataclass(frozen=True)
class Golden:
    images: np.ndarray
    labels: tuple[str, ...]
    scores: np.ndarray


def make_golden(predict: Predict, images: Sequence[np.ndarray]) -> bytes:
    """The golden file for these frames, from the model's own answers."""
    if not images:
        raise InferenceError("golden samples need at least one image")
    answers = [predict(image) for image in images]
    width = max(len(a.scores) for a in answers)
    scores = np.zeros((len(answers), width), dtype=np.float32)
    for row, answer in zip(scores, answers, strict=True):
        row[: len(answer.scores)] = answer.scores
    out = io.BytesIO()
    np.savez_compressed(out, images=np.stack(images), labels=np.array([a.label for a in answers]), scores=scores)
    return out.getvalue()


def load_golden(path: Path) -> Golden:
    try:
        with np.load(path, allow_pickle=False) as data:
            golden = Golden(data["images"], tuple(str(x) for x in data["labels"]), data["scores"])
    except (OSError, ValueError, KeyError) as exc:
        raise InferenceError(f"{path.name}: not a golden-samples file: {exc}") from exc
    if not len(golden.images) == len(golden.labels) == len(golden.scores):
        raise InferenceError(f"{path.name}: images, labels and scores differ in number")
    return golden


def mismatch(predict: Predict, golden: Golden, tolerance: float) -> Optional[str]:
    """None if the model gives the expected answers; else what differs, for the first sample that does."""
    for index, (image, label, expected) in enumerate(zip(golden.images, golden.labels, golden.scores, strict=True)):
        answer = predict(image)
        if answer.label != label:
            return f"sample {index}: label {answer.label!r}, expected {label!r}"
        got = np.zeros_like(expected)
        got[: len(answer.scores)] = answer.scores[: len(expected)]
        worst = float(np.max(np.abs(got - expected))) if len(expected) else 0.0
        if worst > tolerance:
            return f"sample {index}: scores differ by {worst:.4g} (tolerance {tolerance:g})"
    return None
