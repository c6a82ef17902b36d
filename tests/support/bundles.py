"""Signed bundles for tests, made by the hub's own code (``cloud.fleet.keys``, ``cloud.fleet.bundles``)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
from onnx import numpy_helper

from cloud.fleet.bundles import BundleRequest, BundleStore
from cloud.fleet.keys import KeyRing, init_keys
from common.inference.classify import OnnxModel
from common.inference.golden import make_golden
from common.inference.preprocess import decode_image
from protocol.bundle import BundleEnvelope, ModelSection


class BundleMaker:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.artifacts = folder / "artifacts"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.root_key = folder / "root.pem"
        self.keys: KeyRing = init_keys(folder / "keys", self.root_key)
        self.store = BundleStore(folder / "bundles", self.artifacts)

    def artifact(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        (self.artifacts / sha256).write_bytes(data)
        return sha256

    def make(
        self,
        model: Path,
        *,
        name: str = "digits",
        release: Optional[int] = None,
        device_classes: tuple[str, ...] = ("*",),
        devices: tuple[str, ...] = (),
        golden_from: Optional[Path] = None,
        golden_images: Optional[list[np.ndarray]] = None,
        judge: Optional[dict] = None,
        expires_in_s: float = 3600.0,
    ) -> BundleEnvelope:
        """A bundle of ``model``; golden samples from ``golden_from``'s answers (another model: a wrong claim)."""
        files = {"model.onnx": (self.artifact(model.read_bytes()), "model")}
        golden = None
        if golden_images is not None:
            reference = OnnxModel(golden_from or model)
            files["golden.npz"] = (self.artifact(make_golden(reference.predict, golden_images)), "golden")
            golden = "golden.npz"
        request = BundleRequest(
            name=name,
            version=f"v{release or self.store.next_release(name)}",
            model=ModelSection(model_id=model.stem, file="model.onnx", golden=golden),
            files=files,
            device_classes=list(device_classes),
            devices=list(devices),
            judge=judge or {},
            expires_in_s=expires_in_s,
            release=release,
        )
        return self.store.create(request, self.keys)

    def bundle_dir(self, envelope: BundleEnvelope) -> Path:
        signed = envelope.manifest.signed
        return self.folder / "bundles" / f"{signed['name']}-{signed['release']}"


def frames(stream: Path, count: int = 8) -> list[np.ndarray]:
    """The first frames of the demo stream, as the device reads them."""
    paths = sorted((stream / "images").iterdir())[:count]
    return [decode_image(p.read_bytes()) for p in paths]


def copy_model(model: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, target)
    return target


def tempered(model: Path, factor: float, out: Path) -> Path:
    """The digits-weak linear model with its logits scaled by ``factor``: the same answers, more (factor > 1) or
    less (factor < 1) sure of them. A different file, model id and confidence profile, from the same weights."""
    proto = onnx.load(str(model))
    for tensor in proto.graph.initializer:
        if tensor.name in ("weights", "bias"):
            scaled = (numpy_helper.to_array(tensor) * factor).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(scaled, tensor.name))
    for prop in proto.metadata_props:
        if prop.key == "tandem.model_id":
            prop.value = out.stem
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    return out
