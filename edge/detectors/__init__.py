"""Inference backends behind one interface, chosen by name from an explicit registry.

Each backend module guards its own native import, so a device without, say,
TensorRT still runs every other backend; ``available()`` says which loaded.
"""

from __future__ import annotations

from edge.config import DetectorConfig
from edge.detectors.base import Detector
from edge.detectors.onnx import OnnxClassifier

REGISTRY: dict[str, type[Detector]] = {
    OnnxClassifier.type_key: OnnxClassifier,
}


def create_detector(config: DetectorConfig) -> Detector:
    return REGISTRY[config.type](config)


__all__ = ["REGISTRY", "Detector", "OnnxClassifier", "create_detector"]
