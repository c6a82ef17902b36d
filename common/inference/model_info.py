"""What a model declares about itself: its id, version and labels (ONNX metadata ``tandem.*``, or the sidecar
JSON of an engine, whose format cannot carry them)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from common.errors import InferenceError
from common.inference.onnx import onnx_metadata
from common.inference.runner import Runner


@dataclass(frozen=True)
class ModelInfo:
    """What a model declares about itself (ONNX metadata ``tandem.*``, or an engine's sidecar JSON)."""

    model_id: str
    version: str
    labels: tuple[str, ...]


def sidecar(path: Path) -> Path:
    """Where a model's metadata lives when its format cannot carry it: ``model.engine.json``."""
    return path.with_name(path.name + ".json")


def model_metadata(path: Path, runner: Optional[Runner] = None) -> dict[str, str]:
    """Everything the model declares: ``runner``'s metadata when it read them, else the sidecar JSON of an
    engine, else the ONNX file's (read through ONNX Runtime, for backends such as OpenCV DNN that keep none)."""
    loaded = runner.metadata() if runner is not None else None
    if loaded is not None:
        return loaded
    if sidecar(path).exists():
        try:
            return dict(json.loads(sidecar(path).read_text()))
        except (OSError, ValueError) as exc:
            raise InferenceError(f"{sidecar(path)}: unreadable: {exc}") from exc
    if path.suffix == ".onnx":
        return onnx_metadata(path)
    return {}


def read_model_info(
    path: Path, default_id: str = "", labels: Sequence[str] = (), runner: Optional[Runner] = None
) -> ModelInfo:
    """The model's id, version and labels: from its sidecar JSON if there is one, else its ONNX metadata
    (from ``runner`` when it has read them, so the file is not loaded a second time)."""
    meta = model_metadata(path, runner)
    try:
        label_list = tuple(json.loads(meta["tandem.labels"])) if "tandem.labels" in meta else tuple(labels)
    except ValueError as exc:
        raise InferenceError(f"{path}: tandem.labels is not a JSON list: {exc}") from exc
    return ModelInfo(
        meta.get("tandem.model_id", default_id or path.stem), meta.get("tandem.model_version", ""), label_list
    )
