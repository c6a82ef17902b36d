"""A cloud classifier: decodes the escalated input and runs an ONNX model on it.

It reuses the edge's ``OnnxModel`` and preprocessing on purpose: the same
model file sees the same pixels whether it runs on the device or the hub.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.detectors.onnx import OnnxModel
from edge.detectors.preprocess import decode_image
from protocol.errors import MalformedMessage
from protocol.messages import EncodedImage, Prediction, Tensor


class Classifier:
    def __init__(self, path: Path, intra_op_num_threads: int = 1) -> None:
        self.model = OnnxModel(path, intra_op_num_threads)

    @property
    def model_id(self) -> str:
        return self.model.model_id

    def predict(self, data: EncodedImage | Tensor) -> Prediction:
        if isinstance(data, EncodedImage):
            try:
                image = decode_image(data.data)
            except ValueError as exc:
                raise MalformedMessage(f"escalated image: {exc}") from exc
            return self.model.predict(image)
        try:
            array = np.frombuffer(data.data, dtype=np.dtype(data.dtype)).reshape(data.shape)
        except (TypeError, ValueError) as exc:
            raise MalformedMessage(f"escalated tensor {data.dtype}{list(data.shape)}: {exc}") from exc
        return self.model.predict(array)
