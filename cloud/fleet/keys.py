"""The hub's signing keys for model bundles, kept apart from everything else.

    <keys dir>/targets.pem       the targets key (signs manifests; 0600)
    <keys dir>/delegation.json   root's certificate for it (a ``protocol.bundle.TargetsKey``, signed)
    <keys dir>/root.pub          the root public key, base64: what devices put in models.root_keys

The root private key is written where ``tandem hub keys init --root-key PATH`` says and is needed again only to
rotate the targets key: keep it offline. A rotation certifies a new targets key with a higher version; a device
that has seen the new version refuses bundles signed under an older one, so a stolen targets key stops working.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cloud.errors import KeysError
from common.files import write_atomic
from common.signing import SigningKey, certify
from protocol.bundle import Signed, TargetsKey

KEY_LIFETIME_S = 365 * 86400.0


@dataclass(frozen=True)
class KeyRing:
    targets: SigningKey
    delegation: Signed
    root_public: str

    @property
    def version(self) -> int:
        return TargetsKey.model_validate(self.delegation.signed).version

    @classmethod
    def load(cls, folder: Path) -> KeyRing:
        try:
            targets = SigningKey.from_pem((folder / "targets.pem").read_bytes())
            delegation = Signed.model_validate_json((folder / "delegation.json").read_text())
            root_public = (folder / "root.pub").read_text().strip()
        except (OSError, ValueError) as exc:
            raise KeysError(f"{folder}: no usable bundle keys ({exc}); run tandem hub keys init") from exc
        return cls(targets, delegation, root_public)


def _write_private(path: Path, key: SigningKey) -> None:
    write_atomic(path, key.pem())
    os.chmod(path, 0o600)


def _certify(folder: Path, root: SigningKey, version: int) -> KeyRing:
    targets = SigningKey.generate()
    delegation = certify(root, targets.public, version, time.time() + KEY_LIFETIME_S)
    _write_private(folder / "targets.pem", targets)
    write_atomic(folder / "delegation.json", json.dumps(delegation.model_dump(), indent=1).encode())
    write_atomic(folder / "root.pub", base64.b64encode(root.public) + b"\n")
    return KeyRing(targets, delegation, base64.b64encode(root.public).decode())


def init_keys(folder: Path, root_key: Path) -> KeyRing:
    """A new root key (written to ``root_key``) and a first targets key certified by it."""
    if (folder / "targets.pem").exists() or root_key.exists():
        raise KeysError(f"keys exist already ({folder}, {root_key}); use rotate")
    root = SigningKey.generate()
    _write_private(root_key, root)
    return _certify(folder, root, version=1)


def rotate_keys(folder: Path, root_key: Path) -> KeyRing:
    """A new targets key, certified by the root key at the next version; the old one is rotated out."""
    current = KeyRing.load(folder)
    try:
        root = SigningKey.from_pem(root_key.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeysError(f"{root_key}: cannot read the root key: {exc}") from exc
    if base64.b64encode(root.public).decode() != current.root_public:
        raise KeysError(f"{root_key} is not the root key of {folder}")
    return _certify(folder, root, version=current.version + 1)
