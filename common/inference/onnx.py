"""ONNX Runtime: the CPU here, the CUDA or TensorRT execution providers where onnxruntime-gpu has them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np

from common.errors import InferenceError
from common.inference.runner import BackendUnavailable, Runner

logger = logging.getLogger(__name__)

try:
    import onnxruntime as ort
except ImportError as exc:  # the backend is disabled; the registry still imports
    ort = None
    IMPORT_ERROR: Optional[str] = f"onnxruntime did not import: {exc}"
else:
    IMPORT_ERROR = None

# Fastest first; only those this onnxruntime build has are used.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def status() -> str:
    """``ok`` with the execution providers this build has, or why the backend is off."""
    return f"off: {IMPORT_ERROR}" if ort is None else "ok: " + ", ".join(providers())


def providers(wanted: Optional[list[str]] = None) -> list[str]:
    if ort is None:
        raise BackendUnavailable(str(IMPORT_ERROR))
    have = set(ort.get_available_providers())
    chosen = [p for p in (wanted or PREFERRED_PROVIDERS) if p in have]
    return chosen or ["CPUExecutionProvider"]


class OrtRunner(Runner):
    def __init__(
        self,
        path: Path,
        intra_op_num_threads: int = 1,
        provider_list: Optional[list[str]] = None,
        output: Optional[str] = None,
    ) -> None:
        if ort is None:
            raise BackendUnavailable(f"the onnx backend is off: {IMPORT_ERROR}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_num_threads
        options.inter_op_num_threads = 1
        self._wanted = provider_list[0] if provider_list else None
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers(provider_list))
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise InferenceError(f"cannot load ONNX model {path}: {exc}") from exc
        first = self.session.get_inputs()[0]
        self.input_name: str = first.name
        self.input_shape: list[Any] = list(first.shape)
        outputs = [o.name for o in self.session.get_outputs()]
        if output is not None and output not in outputs:
            raise InferenceError(f"{path}: model has no {output!r} output (outputs: {outputs})")
        self.output = output or outputs[0]
        self.path = path

    def engine(self) -> str:
        return f"onnxruntime:{self.session.get_providers()[0]}"  # the first is the one the graph runs on

    def fallback(self) -> str:
        running = self.session.get_providers()
        if self._wanted is None or running[0] == self._wanted:
            return ""
        have = ort.get_available_providers() if ort is not None else []
        if self._wanted not in have:
            return f"{self._wanted} is not in this onnxruntime build (it has: {', '.join(have)})"
        return f"{self._wanted} did not load; running on {running[0]}"

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, batch: np.ndarray) -> np.ndarray:
        try:
            (out,) = self.session.run([self.output], {self.input_name: batch})
        except Exception as exc:  # onnxruntime's errors carry no stable types
            raise InferenceError(f"{self.path.name}: inference failed: {exc}") from exc
        return np.asarray(out)


def onnx_metadata(path: Path) -> dict[str, str]:
    """The model's custom metadata, read through an ONNX Runtime session (the edge has no ``onnx`` package)."""
    if ort is None:
        return {}
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        raise InferenceError(f"cannot load ONNX model {path}: {exc}") from exc
    return dict(session.get_modelmeta().custom_metadata_map)
