"""A cloud classifier: decodes the escalated input and runs an ONNX model on it.

It reuses the edge's ``OnnxModel`` and preprocessing on purpose: the same
model file sees the same pixels whether it runs on the device or the hub.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.detectors.onnx import OnnxModel
from edge.detectors.preprocess import decode_image
from edge.errors import DetectorError
from protocol.errors import MalformedMessage
from protocol.messages import EncodedImage, Prediction, Tensor


class Classifier:
    def __init__(self, path: Path, intra_op_num_threads: int = 1) -> None:
        self.model = OnnxModel(path, intra_op_num_threads)

    @property
    def model_id(self) -> str:
        return self.model.model_id

    def predict(self, data: EncodedImage | Tensor) -> Prediction:
        answer = self.predict_batch([data])[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def predict_batch(self, inputs: list[EncodedImage | Tensor]) -> list[Prediction | Exception]:
        """One model run for every input that decodes; an input that does not gets its own error."""
        tensors: list[np.ndarray] = []
        results: list[Prediction | Exception] = []
        for data in inputs:
            try:
                tensors.append(self.model.head.tensor(pixels(data)))
                results.append(_PENDING)
            except (MalformedMessage, DetectorError) as exc:
                results.append(MalformedMessage(str(exc)) if isinstance(exc, DetectorError) else exc)
        if tensors:
            predictions = iter(self.model.head.predict_tensors(tensors))
            results = [next(predictions) if r is _PENDING else r for r in results]
        return results

    def run_tensors(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output for raw named inputs, as the v2 protocol asks (no decoding, no labels)."""
        session = self.model.runner.session
        names = [o.name for o in session.get_outputs()]
        try:
            return dict(zip(names, session.run(names, inputs), strict=True))
        except Exception as exc:  # onnxruntime's errors carry no stable types
            raise DetectorError(f"{self.model_id}: inference failed: {exc}") from exc


_PENDING = MalformedMessage("not run")  # a placeholder while the batch is put together


def pixels(data: EncodedImage | Tensor) -> np.ndarray:
    if isinstance(data, EncodedImage):
        try:
            return decode_image(data.data)
        except ValueError as exc:
            raise MalformedMessage(f"escalated image: {exc}") from exc
    try:
        return np.frombuffer(data.data, dtype=np.dtype(data.dtype)).reshape(data.shape)
    except (TypeError, ValueError) as exc:
        raise MalformedMessage(f"escalated tensor {data.dtype}{list(data.shape)}: {exc}") from exc
