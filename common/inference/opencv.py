"""OpenCV's DNN module as a runner for ONNX models.

OpenCV DNN runs standard ONNX operators on the CPU (or CUDA in an OpenCV
built with it); ``ai.onnx.ml`` operators (scikit-learn exports) it cannot load,
and it says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from common.errors import InferenceError
from common.inference.runner import Dim, Runner


class OpenCvRunner(Runner):
    def __init__(self, path: Path, input_shape: Sequence[Dim], output: Optional[str] = None) -> None:
        try:
            self._net = cv2.dnn.readNetFromONNX(str(path))
        except cv2.error as exc:
            raise InferenceError(f"OpenCV DNN cannot load {path}: {str(exc).strip().splitlines()[-1]}") from exc
        self.input_shape = list(input_shape)
        self._output = output
        self._path = path

    def engine(self) -> str:
        return f"opencv:{cv2.__version__}"

    def takes_batches(self) -> bool:
        return False

    def run(self, batch: np.ndarray) -> np.ndarray:
        try:
            self._net.setInput(np.ascontiguousarray(batch))
            return np.asarray(self._net.forward(self._output) if self._output else self._net.forward())
        except cv2.error as exc:
            raise InferenceError(f"{self._path.name}: OpenCV DNN failed: {exc}") from exc
