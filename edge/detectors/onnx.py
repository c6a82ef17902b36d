"""ONNX Runtime classification backend (CPU here; CUDA or TensorRT providers when present).

The model declares its own contract: input ``image`` [N, C, H, W] float32
0-255, output ``scores`` [N, K], and metadata ``tandem.model_id``,
``tandem.model_version`` and ``tandem.labels`` (a JSON list of K names).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from edge.config import DetectorConfig
from edge.detectors.base import Detector
from edge.detectors.preprocess import image_to_nchw
from edge.errors import DetectorError
from protocol.messages import Prediction

logger = logging.getLogger(__name__)

try:
    import onnxruntime as ort
except ImportError as exc:  # the backend is disabled; the registry still imports
    ort = None
    _IMPORT_ERROR: Optional[ImportError] = exc
else:
    _IMPORT_ERROR = None

SCORES_OUTPUT = "scores"


class OnnxModel:
    """An ONNX classifier session and its declared contract. Shared by the edge and the hub."""

    def __init__(self, path: Path, intra_op_num_threads: int = 1, providers: Optional[list[str]] = None) -> None:
        if ort is None:
            raise DetectorError(f"the onnx backend needs onnxruntime, which did not import: {_IMPORT_ERROR}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_num_threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise DetectorError(f"cannot load ONNX model {path}: {exc}") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        model_input = self.session.get_inputs()[0]
        self.input_name: str = model_input.name
        self.input_shape: list[Any] = list(model_input.shape)
        outputs = [o.name for o in self.session.get_outputs()]
        if SCORES_OUTPUT not in outputs:
            raise DetectorError(f"{path}: model has no {SCORES_OUTPUT!r} output (outputs: {outputs})")
        try:
            self.labels: tuple[str, ...] = tuple(json.loads(meta["tandem.labels"]))
            self.model_id: str = meta["tandem.model_id"]
            self.model_version: str = meta.get("tandem.model_version", "")
        except (KeyError, ValueError) as exc:
            raise DetectorError(f"{path}: missing or bad tandem.* metadata: {exc}") from exc

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """[N, C, H, W] -> [N, K] scores."""
        try:
            (out,) = self.session.run([SCORES_OUTPUT], {self.input_name: batch})
        except Exception as exc:  # onnxruntime's errors carry no stable types
            raise DetectorError(f"{self.model_id}: inference failed: {exc}") from exc
        return np.asarray(out)

    def predict(self, image: np.ndarray) -> Prediction:
        try:
            tensor = image_to_nchw(image, self.input_shape)
        except (ValueError, cv2.error) as exc:
            raise DetectorError(
                f"{self.model_id}: cannot prepare a {getattr(image, 'shape', '?')} image: {exc}"
            ) from exc
        started = time.perf_counter()
        row = self.scores(tensor)[0]
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        if row.shape != (len(self.labels),):
            raise DetectorError(f"{self.model_id}: {row.shape} scores for {len(self.labels)} labels")
        return Prediction(self.model_id, self.model_version, self.labels, tuple(row.tolist()), elapsed_ms)


class OnnxClassifier(Detector):
    type_key = "onnx"

    def __init__(self, config: DetectorConfig) -> None:
        self._config = config
        self._model: Optional[OnnxModel] = None

    def start(self) -> None:
        self._model = OnnxModel(self._config.model_path, self._config.intra_op_num_threads)
        self._warm_up(self._model)
        logger.info(
            "detector onnx: %s v%s from %s", self._model.model_id, self._model.model_version, self._config.model_path
        )

    @staticmethod
    def _warm_up(model: OnnxModel) -> None:
        """Run one blank input so the first real frame does not pay for ONNX Runtime's lazy set-up.

        The first run allocates buffers and picks kernels; without this the
        first frame's latency is several times the steady state.
        """
        _, channels, height, width = model.input_shape
        blank = np.zeros((height, width) if channels == 1 else (height, width, 3), dtype=np.uint8)
        model.predict(blank)

    def predict(self, image: np.ndarray) -> Prediction:
        if self._model is None:
            raise DetectorError("detector used before start()")
        return self._model.predict(image)

    def close(self) -> None:
        self._model = None
