"""A cloud classifier: decodes the escalated input and runs an ONNX model on it.

It reuses the edge's ``OnnxModel`` and preprocessing on purpose: the same
model file sees the same pixels whether it runs on the device or the hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from common.errors import InferenceError
from common.inference.classify import OnnxModel
from common.inference.preprocess import MAX_IMAGE_PIXELS, decode_image
from protocol.errors import MalformedMessage
from protocol.messages import EncodedImage, EscalationRequest, Prediction, Tensor


class Classifier:
    def __init__(self, path: Path, intra_op_num_threads: int = 1, max_image_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.model = OnnxModel(path, intra_op_num_threads)
        self._max_pixels = max_image_pixels

    @property
    def model_id(self) -> str:
        return self.model.model_id

    @property
    def version(self) -> str:
        return self.model.head.info.version or "1"

    @property
    def session(self) -> Any:
        return self.model.runner.session

    def predict_requests(self, requests: list[EscalationRequest]) -> list[Prediction | Exception]:
        return self.predict_batch([r.input for r in requests])

    def predict(self, data: EncodedImage | Tensor) -> Prediction:
        answer = self.predict_batch([data])[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def predict_batch(self, inputs: list[EncodedImage | Tensor]) -> list[Prediction | Exception]:
        """One model run for every input that decodes; an input that does not gets its own MalformedMessage
        (the input's fault, never the replica's)."""
        tensors: list[np.ndarray] = []
        results: list[Prediction | Exception] = []
        for data in inputs:
            try:
                tensors.append(self.model.head.tensor(pixels(data, self._max_pixels)))
                results.append(_PENDING)
            except MalformedMessage as exc:
                results.append(exc)
            except (InferenceError, ValueError, cv2.error) as exc:  # pixels a model cannot take (shape, depth)
                results.append(MalformedMessage(f"escalated input: {exc}"))
        if tensors:
            predictions = iter(self.model.head.predict_tensors(tensors))
            results = [next(predictions) if r is _PENDING else r for r in results]
        return results

    def run_tensors(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output for raw named inputs, as the v2 protocol asks (no decoding, no labels)."""
        session = self.session
        names = [o.name for o in session.get_outputs()]
        try:
            return dict(zip(names, session.run(names, inputs), strict=True))
        except Exception as exc:  # onnxruntime's errors carry no stable types
            raise InferenceError(f"{self.model_id}: inference failed: {exc}") from exc


_PENDING = MalformedMessage("not run")  # a placeholder while the batch is put together


def pixels(data: EncodedImage | Tensor, max_image_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    if isinstance(data, EncodedImage):
        try:
            return decode_image(data.data, max_image_pixels)
        except ValueError as exc:
            raise MalformedMessage(f"escalated image: {exc}") from exc
    try:
        return np.frombuffer(data.data, dtype=np.dtype(data.dtype)).reshape(data.shape)
    except (TypeError, ValueError) as exc:
        raise MalformedMessage(f"escalated tensor {data.dtype}{list(data.shape)}: {exc}") from exc
