"""The runner layer: one inference engine (ONNX Runtime session, OpenCV DNN net, TensorRT engine) behind one call.

Detectors (classification, text detection, OCR) do their pre- and
post-processing around a ``Runner``; a runner only turns one input tensor
into the named output tensor. A backend whose native library is missing
raises ``BackendUnavailable`` with the reason, and only that backend is off.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from edge.errors import DetectorError

Dim = Union[int, str, None]


class BackendUnavailable(DetectorError):
    """The backend's native library is not installed or cannot load."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model declares about itself (ONNX metadata ``tandem.*``, or an engine's sidecar JSON)."""

    model_id: str
    version: str
    labels: tuple[str, ...]


class Runner(abc.ABC):
    input_shape: Sequence[Dim]

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """One input tensor -> the model's output tensor; raise DetectorError on failure."""

    def close(self) -> None:  # noqa: B027 - most runners free their memory with their last reference
        """Free the engine's resources. Safe to call twice."""

    def metadata(self) -> Optional[dict[str, str]]:
        """The model's custom metadata when the engine has already read it (None: read it from the file)."""
        return None


def sidecar(path: Path) -> Path:
    """Where a model's metadata lives when its format cannot carry it: ``model.engine.json``."""
    return path.with_name(path.name + ".json")


def read_model_info(
    path: Path, default_id: str = "", labels: Sequence[str] = (), runner: Optional[Runner] = None
) -> ModelInfo:
    """The model's id, version and labels: from its sidecar JSON if there is one, else its ONNX metadata
    (from ``runner`` when it has read them, so the file is not loaded a second time)."""
    meta: dict[str, str] = {}
    loaded = runner.metadata() if runner is not None else None
    if loaded is not None:
        meta = loaded
    elif sidecar(path).exists():
        try:
            meta = json.loads(sidecar(path).read_text())
        except (OSError, ValueError) as exc:
            raise DetectorError(f"{sidecar(path)}: unreadable: {exc}") from exc
    elif path.suffix == ".onnx":
        from edge.detectors.onnx import onnx_metadata

        meta = onnx_metadata(path)
    try:
        label_list = tuple(json.loads(meta["tandem.labels"])) if "tandem.labels" in meta else tuple(labels)
    except ValueError as exc:
        raise DetectorError(f"{path}: tandem.labels is not a JSON list: {exc}") from exc
    return ModelInfo(
        meta.get("tandem.model_id", default_id or path.stem), meta.get("tandem.model_version", ""), label_list
    )
