"""Detectors: a model *kind* (pre- and post-processing, one module each) on an inference *backend* (a runner
from ``common.inference``), both named in the config.

    kind              module      what it answers
    classification    classify    class scores
    detection         detect      object boxes (YOLOv8/YOLO11 ONNX exports)
    text_detection    text        PP-OCRv4 boxes around text
    ocr               ocr         PP-OCRv4 text, per-character confidence
    haar_cascade      haar        OpenCV cascade boxes (no backend needed)

The backends are ``common.inference.BACKENDS`` (onnx, opencv, tensorrt); ``available()`` says which loaded
on this machine and why the others did not.
"""

from __future__ import annotations

from common.errors import InferenceError
from common.inference import BACKENDS, BackendUnavailable, available
from edge.config import DetectorConfig
from edge.detectors.base import Detector
from edge.detectors.classify import Classifier
from edge.detectors.detect import Detection
from edge.detectors.haar import HaarCascade
from edge.detectors.ocr import Ocr
from edge.detectors.text import TextDetection

KINDS: dict[str, type[Detector]] = {
    Classifier.kind: Classifier,
    Detection.kind: Detection,
    TextDetection.kind: TextDetection,
    Ocr.kind: Ocr,
    HaarCascade.kind: HaarCascade,
}


def create_detector(config: DetectorConfig) -> Detector:
    if config.kind not in KINDS:
        raise InferenceError(f"unknown detector kind {config.kind!r}")
    return KINDS[config.kind](config, BACKENDS[config.type])


__all__ = ["BACKENDS", "KINDS", "BackendUnavailable", "Detector", "available", "create_detector"]
