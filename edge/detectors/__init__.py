"""Detectors: a model *kind* on an inference *backend*, both named in the config, from explicit registries.

    backends (runners)                   kinds (pre- and post-processing)
    onnx      ONNX Runtime               classification   class scores
    opencv    OpenCV DNN                 text_detection   PP-OCRv4 boxes around text
    tensorrt  TensorRT engine + pycuda   ocr              PP-OCRv4 text, per-character confidence
                                         haar_cascade     OpenCV cascade boxes (no backend needed)

Each backend module guards its own native import, so a device without, say,
TensorRT still runs every other backend; ``available()`` says which loaded and
why the others did not.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

from edge.config import DetectorConfig
from edge.detectors import onnx as onnx_backend
from edge.detectors import tensorrt as tensorrt_backend
from edge.detectors.base import Detector
from edge.detectors.classify import Classifier
from edge.detectors.ocr import Ocr, TextDetection
from edge.detectors.opencv import HaarCascade, OpenCvRunner
from edge.detectors.runner import BackendUnavailable, Runner
from edge.errors import DetectorError


def _onnx(config: DetectorConfig, path: Path, output: Optional[str]) -> Runner:
    return onnx_backend.OrtRunner(path, config.intra_op_num_threads, config.providers or None, output)


def _opencv(config: DetectorConfig, path: Path, output: Optional[str]) -> Runner:
    # OpenCV DNN does not report an ONNX model's input shape; ONNX Runtime reads it (and the metadata) once.
    shape = onnx_backend.OrtRunner(path).input_shape if onnx_backend.ort is not None else ["N", 3, "H", "W"]
    return OpenCvRunner(path, shape, output)


def _tensorrt(_config: DetectorConfig, path: Path, output: Optional[str]) -> Runner:
    return tensorrt_backend.TensorRtRunner(path, output)


BACKENDS: dict[str, Callable[[DetectorConfig, Path, Optional[str]], Runner]] = {
    "onnx": _onnx,
    "opencv": _opencv,
    "tensorrt": _tensorrt,
}

KINDS: dict[str, type[Detector]] = {
    Classifier.kind: Classifier,
    TextDetection.kind: TextDetection,
    Ocr.kind: Ocr,
    HaarCascade.kind: HaarCascade,
}


def available() -> dict[str, str]:
    """Each backend: ``ok`` with what it runs on, or why it is off."""
    status = {}
    if onnx_backend.ort is None:
        status["onnx"] = f"off: {onnx_backend.IMPORT_ERROR}"
    else:
        status["onnx"] = "ok: " + ", ".join(onnx_backend.providers())
    import cv2

    status["opencv"] = f"ok: OpenCV {cv2.__version__}"
    status["tensorrt"] = (
        f"off: {tensorrt_backend.IMPORT_ERROR}"
        if tensorrt_backend.trt is None
        else (f"ok: TensorRT {tensorrt_backend.trt.__version__}")
    )
    return status


def create_detector(config: DetectorConfig) -> Detector:
    if config.kind not in KINDS:
        raise DetectorError(f"unknown detector kind {config.kind!r}")
    return KINDS[config.kind](config, BACKENDS[config.type])


__all__ = ["BACKENDS", "KINDS", "BackendUnavailable", "Detector", "available", "create_detector"]
