"""The runner layer: one inference engine (ONNX Runtime session, OpenCV DNN net, TensorRT engine) behind one call.

Detectors (classification, text detection, OCR) do their pre- and
post-processing around a ``Runner``; a runner only turns one input tensor
into the named output tensor. A backend whose native library is missing
raises ``BackendUnavailable`` with the reason, and only that backend is off.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Optional, Union

import numpy as np

from common.errors import InferenceError

Dim = Union[int, str, None]


class BackendUnavailable(InferenceError):
    """The backend's native library is not installed or cannot load."""


class Runner(abc.ABC):
    input_shape: Sequence[Dim]

    def takes_batches(self) -> bool:
        """Whether one run may hold several inputs: the model's batch axis is open and the engine honours it.
        OpenCV DNN does not broadcast against a dynamic batch, so it says no."""
        return bool(self.input_shape) and not isinstance(self.input_shape[0], int)

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """One input tensor -> the model's output tensor; raise InferenceError on failure."""

    def close(self) -> None:  # noqa: B027 - most runners free their memory with their last reference
        """Free the engine's resources. Safe to call twice."""

    def engine(self) -> str:
        """What really runs the model, for the device's report: ``onnxruntime:CPUExecutionProvider``,
        ``opencv:dnn``, ``tensorrt:10.3.0``."""
        return type(self).__name__

    def fallback(self) -> str:
        """Why the engine running is not the one configured first (empty: it is, or none was named)."""
        return ""

    def metadata(self) -> Optional[dict[str, str]]:
        """The model's custom metadata when the engine has already read it (None: read it from the file)."""
        return None
