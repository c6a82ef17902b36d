"""Inference runners both sides use, from an explicit registry: a model file in, one output tensor out.

    backend   runner                          on
    onnx      ONNX Runtime                    CPU; CUDA or TensorRT providers where onnxruntime-gpu has them
    opencv    OpenCV DNN                      CPU (CUDA in an OpenCV built with it)
    tensorrt  TensorRT engine + pycuda        NVIDIA GPU (Jetson: JetPack's TensorRT)

Each backend module guards its own native import, so a machine without, say,
TensorRT still runs every other backend; ``available()`` says which loaded and
why the others did not. Pre- and post-processing live above the runners:
``preprocess`` and ``classify`` here (the classifier head both sides run), the
other kinds in ``edge.detectors``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from common.inference import onnx as onnx_backend
from common.inference import tensorrt as tensorrt_backend
from common.inference.opencv import OpenCvRunner
from common.inference.runner import BackendUnavailable, Dim, Runner


@dataclass(frozen=True)
class RunnerOptions:
    """What a backend may be told beyond the model file (each uses what applies to it)."""

    intra_op_num_threads: int = 1
    providers: Optional[list[str]] = None


def _onnx(path: Path, output: Optional[str], options: RunnerOptions) -> Runner:
    return onnx_backend.OrtRunner(path, options.intra_op_num_threads, options.providers or None, output)


def _opencv(path: Path, output: Optional[str], _options: RunnerOptions) -> Runner:
    # OpenCV DNN does not report an ONNX model's input shape; ONNX Runtime reads it (and the metadata) once.
    shape: list[Dim] = ["N", 3, "H", "W"]
    if onnx_backend.IMPORT_ERROR is None:
        shape = onnx_backend.OrtRunner(path).input_shape
    return OpenCvRunner(path, shape, output)


def _tensorrt(path: Path, output: Optional[str], _options: RunnerOptions) -> Runner:
    return tensorrt_backend.TensorRtRunner(path, output)


RunnerFactory = Callable[[Path, Optional[str], RunnerOptions], Runner]

BACKENDS: dict[str, RunnerFactory] = {
    "onnx": _onnx,
    "opencv": _opencv,
    "tensorrt": _tensorrt,
}


def available() -> dict[str, str]:
    """Each backend: ``ok`` with what it runs on, or why it is off."""
    import cv2

    return {
        "onnx": onnx_backend.status(),
        "opencv": f"ok: OpenCV {cv2.__version__}",
        "tensorrt": tensorrt_backend.status(),
    }


__all__ = ["BACKENDS", "BackendUnavailable", "Runner", "RunnerFactory", "RunnerOptions", "available"]
