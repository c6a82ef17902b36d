"""Model bundles on the hub: built from registry artifacts, signed with the targets key, served with Range.

    <bundles dir>/<name>-<release>/bundle.json   the BundleEnvelope (without base_url: the hub adds its own)
    <bundles dir>/<name>-<release>/<file>        each file the manifest covers

Bundles are immutable once written; a new model, or new judge settings with it, is a new release.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pydantic import ValidationError

from cloud.errors import BundleError, BundleNotFound
from cloud.fleet.keys import KeyRing
from common.files import write_atomic
from protocol.bundle import BundleEnvelope, FileEntry, Manifest, ModelSection

_BUNDLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}-[0-9]{1,12}$")
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
OWNER_FILE = ".owner"  # not a bundle file: _FILE refuses names starting with a dot


@dataclass(frozen=True)
class BundleRequest:
    """What an operator asks for; the hub fills in sizes, hashes, release and signature."""

    name: str
    version: str
    model: ModelSection
    files: dict[str, tuple[str, str]]
    """file name -> (artifact sha256, role)"""
    device_classes: list[str]
    devices: list[str]
    judge: dict[str, Any]
    expires_in_s: float
    release: Optional[int] = None
    owner: str = ""
    """the tenant the bundle belongs to; empty: the hub's (kept beside the bundle, outside what is signed)"""


class BundleStore:
    def __init__(self, folder: Path, artifacts: Path) -> None:
        self._folder = folder
        self._artifacts = artifacts

    def create(self, request: BundleRequest, keys: KeyRing) -> BundleEnvelope:
        release = request.release or self.next_release(request.name)
        entries: dict[str, FileEntry] = {}
        for name, (sha256, role) in request.files.items():
            source = self._artifacts / sha256
            if not re.fullmatch(r"[0-9a-f]{64}", sha256) or not source.is_file():
                raise BundleError(f"{name}: no artifact {sha256[:16]}; upload it first (PUT /v1/artifacts/SHA256)")
            try:
                entries[name] = FileEntry(sha256=sha256, size=source.stat().st_size, role=role)
            except ValidationError as exc:
                raise BundleError(f"{name}: {exc.errors()[0]['msg']}") from exc
        try:
            manifest = Manifest(
                name=request.name,
                version=request.version,
                release=release,
                expires_at=time.time() + request.expires_in_s,
                device_classes=request.device_classes,
                devices=request.devices,
                files=entries,
                model=request.model,
                judge=request.judge,
            )
        except ValidationError as exc:
            raise BundleError(f"bundle manifest: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc
        missing, extraneous = manifest.problems()
        if missing or extraneous:
            raise BundleError(f"bundle files: missing or mis-declared {missing}, without a use {extraneous}")
        bundle_id = f"{manifest.name}-{release}"
        target = self._folder / bundle_id
        if target.exists():
            raise BundleError(f"bundle {bundle_id} exists already; bundles are immutable, make a new release")
        staging = self._folder / f".{bundle_id}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name, entry in entries.items():
            shutil.copyfile(self._artifacts / entry.sha256, staging / name)
        envelope = BundleEnvelope(delegation=keys.delegation, manifest=keys.targets.sign(manifest.model_dump()))
        write_atomic(staging / "bundle.json", envelope.model_dump_json(indent=1).encode())
        if request.owner:
            write_atomic(staging / OWNER_FILE, request.owner.encode())
        staging.rename(target)
        return envelope

    def next_release(self, name: str) -> int:
        releases = [m.release for m in self.manifests() if m.name == name]
        return max(releases, default=0) + 1

    def manifests(self) -> list[Manifest]:
        found = []
        for path in sorted(self._folder.glob("*/bundle.json")):
            try:
                envelope = BundleEnvelope.model_validate_json(path.read_text())
                found.append(Manifest.model_validate(envelope.manifest.signed))
            except (OSError, ValueError):
                continue  # not one of ours; listed by nothing
        return found

    def get(self, bundle_id: str) -> BundleEnvelope:
        if not _BUNDLE_ID.match(bundle_id):
            raise BundleNotFound(f"no bundle {bundle_id!r}")
        try:
            return BundleEnvelope.model_validate_json((self._folder / bundle_id / "bundle.json").read_text())
        except OSError as exc:
            raise BundleNotFound(f"no bundle {bundle_id}") from exc

    def file(self, bundle_id: str, name: str) -> Path:
        manifest = Manifest.model_validate(self.get(bundle_id).manifest.signed)
        if not _FILE.match(name) or name not in manifest.files:
            raise BundleNotFound(f"bundle {bundle_id} has no file {name!r}")
        return self._folder / bundle_id / name

    def owner(self, bundle_id: str) -> str:
        """The tenant a bundle belongs to; empty for the hub's."""
        self.get(bundle_id)  # BundleNotFound for an unknown id
        path = self._folder / bundle_id / OWNER_FILE
        return path.read_text().strip() if path.exists() else ""

    def owners(self, name: str) -> set[str]:
        """The owners of a bundle name's releases (a name belongs to one owner)."""
        return {self.owner(f"{m.name}-{m.release}") for m in self.manifests() if m.name == name}

    def summary(self, bundle_id: str) -> dict[str, Any]:
        manifest = Manifest.model_validate(self.get(bundle_id).manifest.signed)
        return {
            "bundle_id": bundle_id,
            "owner": self.owner(bundle_id),
            **json.loads(manifest.model_dump_json(include={"name", "version", "release", "expires_at"})),
            "model_id": manifest.model.model_id,
            "device_classes": manifest.device_classes,
            "bytes": manifest.total_bytes,
        }
