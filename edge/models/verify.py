"""The device's checks on a bundle, before a byte of it is downloaded: the signature chain (``common.signing``),
then this device's policy. Each refusal names the attack class it stops (``protocol.bundle.Refusal``).

    signatures   root -> targets key -> manifest; no older targets key than one already accepted
    freshness    neither the key's certificate nor the manifest has expired (freeze)
    target       one of the manifest's device classes matches this device's, and its device list (if any) names
                 this device (wrong software)
    release      above the active release (rollback) unless the rollout asks to go back, and at most
                 max_release_jump above it (fast-forward)

The files are checked as they arrive (``download``): no more bytes than declared (endless data), at a minimum
rate (slow retrieval), and each one's sha256 (mix-and-match).
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from common.signing import BundleRefused, verify_chain
from edge.config import ModelsConfig
from protocol.bundle import BundleEnvelope, Manifest, Refusal, TargetsKey


@dataclass(frozen=True)
class Standing:
    """What the device has now, against which a new bundle is judged."""

    device_id: str
    device_class: str
    release: int
    """The active bundle's release counter; 0 for the model the device was installed with."""
    key_version: int
    """The highest targets-key version the device has accepted."""


def root_keys(config: ModelsConfig) -> list[bytes]:
    try:
        return [base64.b64decode(k, validate=True) for k in config.root_keys]
    except (binascii.Error, ValueError) as exc:
        raise BundleRefused(Refusal.UNTRUSTED_KEY, f"models.root_keys: not base64: {exc}") from exc


def check(
    envelope: BundleEnvelope,
    config: ModelsConfig,
    standing: Standing,
    *,
    rollback: bool = False,
    now: float,
) -> tuple[TargetsKey, Manifest]:
    keys: Sequence[bytes] = root_keys(config)
    targets, manifest = verify_chain(envelope, keys, standing.key_version, now)
    if not any(fnmatch.fnmatchcase(standing.device_class, pattern) for pattern in manifest.device_classes):
        raise BundleRefused(
            Refusal.WRONG_DEVICE_CLASS,
            f"for {manifest.device_classes}, and this device is {standing.device_class}",
        )
    if manifest.devices and standing.device_id not in manifest.devices:
        raise BundleRefused(Refusal.WRONG_DEVICE, f"for devices {manifest.devices[:5]}, not {standing.device_id}")
    if manifest.release <= standing.release and not rollback:
        raise BundleRefused(
            Refusal.ROLLBACK, f"release {manifest.release} is not above the active release {standing.release}"
        )
    if manifest.release > standing.release + config.max_release_jump:
        raise BundleRefused(
            Refusal.FAST_FORWARD,
            f"release {manifest.release} is more than {config.max_release_jump} above the active {standing.release}",
        )
    return targets, manifest
