"""The hub's models: whatever kind a model file is, one interface for the model pool.

    predict_requests(requests)  each escalation's verdict, run together; a bad input fails only its own
    run_tensors(inputs)         raw named tensors in and out (the v2 inference protocol)
    model_id, version, session  what it is, and its ONNX Runtime session (for the v2 model spec)

``load_model`` reads the file's metadata and picks the kind: a detector when it says so (Ultralytics writes
``task: detect``), a text recogniser when it carries PP-OCR's ``character`` list, a text detector when its
shapes are DBNet's (an image in, one probability map out), else a classifier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from cloud.models.classifier import Classifier
from cloud.models.detector import CloudDetector
from cloud.models.recogniser import CloudRecogniser
from cloud.models.text import CloudTextDetector
from common.inference.detect import is_detector
from common.inference.ocr import is_recogniser
from common.inference.onnx import OrtRunner
from common.inference.preprocess import MAX_IMAGE_PIXELS
from common.inference.text import is_text_detector

CloudModel = Union[Classifier, CloudDetector, CloudRecogniser, CloudTextDetector]


def load_model(path: Path, max_image_pixels: int = MAX_IMAGE_PIXELS) -> CloudModel:
    runner = OrtRunner(path, intra_op_num_threads=1)
    meta = runner.metadata()
    if is_detector(meta):
        return CloudDetector(path, runner, max_image_pixels)
    if is_recogniser(meta):
        return CloudRecogniser(path, runner, max_image_pixels)
    if is_text_detector(runner.input_shape, runner.session.get_outputs()[0].shape):
        return CloudTextDetector(runner, max_image_pixels)
    runner.close()  # a classifier opens its own, on its scores output
    return Classifier(path, max_image_pixels=max_image_pixels)


__all__ = ["Classifier", "CloudDetector", "CloudModel", "CloudRecogniser", "CloudTextDetector", "load_model"]
