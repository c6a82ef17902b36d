"""A classifier's pre- and post-processing around any runner: frame -> the model's declared input -> class
scores -> ``Prediction``.

``OnnxModel`` is the classifier contract the edge and the hub share: input
``image`` [N, C, H, W] float32 0-255, output ``scores`` [N, K], metadata
``tandem.model_id``, ``tandem.model_version`` and ``tandem.labels``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from common.errors import InferenceError
from common.inference.model_info import read_model_info
from common.inference.onnx import OrtRunner
from common.inference.preprocess import image_to_nchw
from common.inference.runner import Runner
from protocol.messages import Prediction

SCORES_OUTPUT = "scores"


class ClassifierHead:
    """Pre- and post-processing of a classifier around its runner."""

    def __init__(self, path: Path, runner: Runner) -> None:
        self.runner = runner
        self.info = read_model_info(path, runner=runner)
        if not self.info.labels:
            raise InferenceError(f"{path}: missing or bad tandem.* metadata: no tandem.labels")

    def tensor(self, image: np.ndarray) -> np.ndarray:
        try:
            return image_to_nchw(image, self.runner.input_shape)
        except (ValueError, cv2.error) as exc:
            raise InferenceError(
                f"{self.info.model_id}: cannot prepare a {getattr(image, 'shape', '?')} image: {exc}"
            ) from exc

    def predict(self, image: np.ndarray) -> Prediction:
        return self.predict_tensors([self.tensor(image)])[0]

    def predict_tensors(self, tensors: list[np.ndarray]) -> list[Prediction]:
        """Prepared [1, C, H, W] tensors run as one batch; each prediction carries the batch's time."""
        started = time.perf_counter()
        rows = self.runner.run(np.concatenate(tensors) if len(tensors) > 1 else tensors[0])
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        if rows.shape != (len(tensors), len(self.info.labels)):
            raise InferenceError(
                f"{self.info.model_id}: {rows.shape} scores for {len(tensors)} x {len(self.info.labels)}"
            )
        return [
            Prediction(self.info.model_id, self.info.version, self.info.labels, tuple(row.tolist()), elapsed_ms)
            for row in rows
        ]


class OnnxModel:
    """An ONNX classifier and its declared contract, on ONNX Runtime. Shared by the edge and the hub."""

    def __init__(self, path: Path, intra_op_num_threads: int = 1, provider_list: Optional[list[str]] = None) -> None:
        self.runner = OrtRunner(path, intra_op_num_threads, provider_list, output=SCORES_OUTPUT)
        self.head = ClassifierHead(path, self.runner)
        self.model_id = self.head.info.model_id
        self.labels = self.head.info.labels

    def predict(self, image: np.ndarray) -> Prediction:
        return self.head.predict(image)
