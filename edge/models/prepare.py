"""From an installed bundle to the detector config that runs it on this device's backend.

onnx, opencv   the bundle's ONNX model, as is
tensorrt       the bundle's engine for this device class if it brings one; else an engine built here from
               the ONNX model, cached under <fleet state dir>/engines/ by the model's sha256, TensorRT's
               version and the GPU (an engine runs only where it was built), with its sidecar JSON
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import re
from pathlib import Path

from common.inference import tensorrt
from common.inference.model_info import read_model_info, sidecar
from edge.config import DetectorConfig
from protocol.bundle import Manifest

logger = logging.getLogger(__name__)


def detector_config(
    base: DetectorConfig, manifest: Manifest, folder: Path, device_class: str, engines: Path
) -> DetectorConfig:
    """``base`` (the device's backend and its options) with the bundle's model; InferenceError if it cannot be."""
    model = folder / manifest.model.file
    update: dict[str, object] = {"kind": manifest.model.kind, "model_path": model}
    if base.type == "tensorrt":
        update["model_path"] = engine_for(manifest, folder, device_class, engines)
    return base.model_copy(update=update)


def engine_for(manifest: Manifest, folder: Path, device_class: str, engines: Path) -> Path:
    for pattern, name in manifest.model.engines.items():
        if fnmatch.fnmatchcase(device_class, pattern):
            return folder / name
    onnx = folder / manifest.model.file
    sha256 = manifest.files[manifest.model.file].sha256
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{sha256[:16]}-{tensorrt.platform()}")
    engine = engines / f"{key}.engine"
    if engine.exists() and sidecar(engine).exists():
        logger.info("models: engine for %s from the cache (%s)", manifest.model.model_id, engine.name)
        return engine
    engines.mkdir(parents=True, exist_ok=True)
    logger.info("models: building a TensorRT engine for %s on this device", manifest.model.model_id)
    tensorrt.build_engine(onnx, engine)
    info = read_model_info(onnx)
    sidecar(engine).write_text(
        json.dumps(
            {
                "tandem.model_id": info.model_id,
                "tandem.model_version": info.version,
                "tandem.labels": json.dumps(list(info.labels)),
                "source_sha256": hashlib.sha256(onnx.read_bytes()).hexdigest(),
            },
            indent=2,
        )
    )
    return engine
