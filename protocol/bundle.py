"""Signed model bundles: the manifest a device checks before anything touches its model, and the envelope that
carries the signatures (the shape of TUF's signed metadata, reduced to what a model push needs).

    BundleEnvelope
      delegation: Signed[TargetsKey]   the targets key, certified by the (offline) root key the device holds
      manifest:   Signed[Manifest]     the bundle, signed by that targets key

A manifest covers every part that must match: each file's size and sha256 and role, the model (ONNX, and a
TensorRT engine per device class where there is one), labels, preprocessing, the judge settings that go with it,
the device classes (and, optionally, the devices) it is for, a release counter, and an expiry.

Signatures are over ``canonical(signed)``: JSON with sorted keys, no spaces, UTF-8. No I/O and no cryptography
here; ``common.signing`` signs and verifies.
"""

from __future__ import annotations

import enum
import json
import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

BUNDLE_SCHEMA_VERSION = 1
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # no path separators: files live in one folder
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def canonical(value: Any) -> bytes:
    """The bytes a signature covers."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    sha256: str = Field(pattern=_SHA256.pattern)
    size: int = Field(ge=0)
    role: Literal["model", "engine", "labels", "golden"] = Field(
        description="model: the ONNX model; engine: a TensorRT engine for one device class; labels; golden: "
        "sample inputs and the outputs the model must give for them"
    )


class ModelSection(_Strict):
    model_id: str = Field(min_length=1, max_length=128)
    kind: str = Field("classification", description="the detector kind, as in the device's detector.kind")
    file: str = Field(description="the ONNX model among files")
    engines: dict[str, str] = Field({}, description="device class: the TensorRT engine built for it, among files")
    labels: Optional[str] = Field(None, description="a labels file among files (JSON list), if the model lacks them")
    golden: Optional[str] = Field(None, description="golden samples among files (.npz with inputs and outputs)")


class Manifest(_Strict):
    schema_version: int = BUNDLE_SCHEMA_VERSION
    type: Literal["tandem-bundle"] = "tandem-bundle"
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    version: str = Field(min_length=1, max_length=64)
    release: int = Field(ge=1, description="grows with every bundle of this name; devices refuse to go back")
    expires_at: float = Field(description="Unix seconds; past it the manifest is refused (a frozen repository)")
    device_classes: list[str] = Field(min_length=1, description="the device classes it is for (glob patterns)")
    devices: list[str] = Field([], description="if not empty, the only devices it is for")
    files: dict[str, FileEntry] = Field(min_length=1)
    model: ModelSection
    judge: dict[str, Any] = Field({}, description="judge settings that go with this model")
    preprocess: dict[str, Any] = Field({}, description="preprocessing that goes with this model")

    def uses(self) -> dict[str, str]:
        """The files the model section names, with the role each is used as."""
        used = {self.model.file: "model", **{f: "engine" for f in self.model.engines.values()}}
        if self.model.labels:
            used[self.model.labels] = "labels"
        if self.model.golden:
            used[self.model.golden] = "golden"
        return used

    def problems(self) -> tuple[list[str], list[str]]:
        """(what is missing or mis-declared, what is extraneous): a file the model names must be listed with the
        role it is used as; a file listed without a use, or with a name that is not a plain file name, is
        extraneous (how an attacker ships something the device does not need, or writes outside its folder)."""
        missing = [
            f"{name} ({role})"
            for name, role in self.uses().items()
            if getattr(self.files.get(name), "role", None) != role
        ]
        extraneous = sorted(set(self.files) - set(self.uses()))
        extraneous += [name for name in self.files if not _FILE_NAME.match(name) and name not in extraneous]
        return missing, extraneous

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())


class TargetsKey(_Strict):
    """The root key's certificate for a targets key: the key that signs manifests, until root says otherwise."""

    type: Literal["tandem-targets-key"] = "tandem-targets-key"
    keyid: str = Field(pattern=_SHA256.pattern)
    public_key: str = Field(description="the Ed25519 public key, 32 bytes, base64")
    version: int = Field(ge=1, description="grows with each rotation; devices refuse a lower one than they have seen")
    expires_at: float


class Signature(_Strict):
    keyid: str
    sig: str = Field(description="base64 Ed25519 signature over canonical(signed)")


class Signed(_Strict):
    signed: dict[str, Any]
    signatures: list[Signature]


class BundleEnvelope(_Strict):
    delegation: Signed
    manifest: Signed
    base_url: str = Field("", description="where the files are: GET {base_url}/{file name}, with Range")


class Refusal(str, enum.Enum):
    """Why a device refused a bundle (reported to the hub); one per attack class TUF and Uptane name."""

    UNSIGNED = "unsigned"  # arbitrary software: no signature at all
    BAD_SIGNATURE = "bad_signature"  # arbitrary software: a signature that does not verify
    UNTRUSTED_KEY = "untrusted_key"  # arbitrary software: signed, but not by the key root certified
    REVOKED_KEY = "revoked_key"  # a targets key older than one root has since certified (rotated out)
    ROLLBACK = "rollback"  # a release counter not above the active one
    FAST_FORWARD = "fast_forward"  # a release counter too far above the active one
    EXPIRED = "expired"  # freeze: the manifest (or its key) is past its expiry
    TOO_LARGE = "too_large"  # endless data: more bytes than the manifest declares
    SLOW_RETRIEVAL = "slow_retrieval"  # a download below the minimum rate or past its deadline
    HASH_MISMATCH = "hash_mismatch"  # mix-and-match: a file that is not the one this manifest covers
    WRONG_DEVICE_CLASS = "wrong_device_class"  # wrong software: built for another kind of device
    WRONG_DEVICE = "wrong_device"  # wrong software: a manifest for other devices
    EXTRANEOUS = "extraneous"  # a file listed without a use, or a file name outside the bundle
    MALFORMED = "malformed"  # not a manifest at all
    DOWNLOAD_FAILED = "download_failed"  # the files could not be fetched (after retries)
    PREPARE_FAILED = "prepare_failed"  # the model would not load or build
    GOLDEN_MISMATCH = "golden_mismatch"  # the model's outputs on the golden samples are not the expected ones
    PROBATION_FAILED = "probation_failed"  # worse than the model it replaced, on the device's own frames
    ABORTED = "aborted"  # the hub withdrew it
