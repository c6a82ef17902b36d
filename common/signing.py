"""Ed25519 keys and the bundle's chain of signatures (``protocol.bundle``), with ``cryptography``.

    root key (offline)  --signs-->  TargetsKey (a targets key, its version and expiry)
    targets key         --signs-->  Manifest

``verify_chain`` checks both links against the root public keys a device holds and returns the manifest;
anything short of that raises ``BundleRefused`` with the attack class it stops. No policy about releases or
device classes here: that is the device's (``edge.models.verify``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from common.errors import TandemError
from protocol.bundle import BundleEnvelope, Manifest, Refusal, Signature, Signed, TargetsKey, canonical


class BundleRefused(TandemError):
    """A bundle a device must not install; ``reason`` is the attack class (or failure) that stopped it."""

    def __init__(self, reason: Refusal, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keyid(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()


@dataclass(frozen=True)
class SigningKey:
    """A private key and its id."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise TandemError("not an Ed25519 private key")
        return cls(key)

    def pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def public(self) -> bytes:
        return public_bytes(self.private.public_key())

    @property
    def keyid(self) -> str:
        return keyid(self.public)

    def sign(self, signed: dict[str, Any]) -> Signed:
        sig = self.private.sign(canonical(signed))
        return Signed(signed=signed, signatures=[Signature(keyid=self.keyid, sig=base64.b64encode(sig).decode())])


def certify(root: SigningKey, targets_public: bytes, version: int, expires_at: float) -> Signed:
    """Root's certificate for a targets key."""
    key = TargetsKey(
        keyid=keyid(targets_public),
        public_key=base64.b64encode(targets_public).decode(),
        version=version,
        expires_at=expires_at,
    )
    return root.sign(key.model_dump())


def _check(signed: Signed, trusted: dict[str, bytes], what: str) -> None:
    """At least one signature by a trusted key verifies; else the attack class that explains why not."""
    if not signed.signatures:
        raise BundleRefused(Refusal.UNSIGNED, f"the {what} carries no signature")
    known = [s for s in signed.signatures if s.keyid in trusted]
    if not known:
        ids = ", ".join(s.keyid[:12] for s in signed.signatures)
        raise BundleRefused(Refusal.UNTRUSTED_KEY, f"the {what} is signed by {ids}, not a trusted key")
    message = canonical(signed.signed)
    for signature in known:
        try:
            Ed25519PublicKey.from_public_bytes(trusted[signature.keyid]).verify(
                base64.b64decode(signature.sig, validate=True), message
            )
            return
        except (InvalidSignature, binascii.Error, ValueError):
            continue
    raise BundleRefused(Refusal.BAD_SIGNATURE, f"the {what}'s signature does not verify")


def verify_chain(
    envelope: BundleEnvelope, root_keys: Sequence[bytes], min_key_version: int = 0, now: float | None = None
) -> tuple[TargetsKey, Manifest]:
    """The targets key root certified, and the manifest it signed; BundleRefused otherwise.

    ``min_key_version``: the highest targets-key version this device has accepted; an older certificate is a key
    root has rotated out since.
    """
    now = time.time() if now is None else now
    _check(envelope.delegation, {keyid(k): k for k in root_keys}, "targets key certificate")
    try:
        targets = TargetsKey.model_validate(envelope.delegation.signed)
        public = base64.b64decode(targets.public_key, validate=True)
    except (ValidationError, binascii.Error, ValueError) as exc:
        raise BundleRefused(Refusal.MALFORMED, f"targets key certificate: {exc}") from exc
    if keyid(public) != targets.keyid:
        raise BundleRefused(Refusal.MALFORMED, "the targets key's id is not the hash of its public key")
    if targets.version < min_key_version:
        raise BundleRefused(
            Refusal.REVOKED_KEY,
            f"targets key version {targets.version} was rotated out (this device has seen {min_key_version})",
        )
    if targets.expires_at <= now:
        raise BundleRefused(Refusal.EXPIRED, "the targets key's certificate has expired")
    _check(envelope.manifest, {targets.keyid: public}, "manifest")
    try:
        manifest = Manifest.model_validate(envelope.manifest.signed)
    except ValidationError as exc:
        raise BundleRefused(Refusal.MALFORMED, f"manifest: {exc.errors()[0]['msg']}") from exc
    missing, extraneous = manifest.problems()
    if extraneous:
        raise BundleRefused(
            Refusal.EXTRANEOUS, f"files without a use in the model, or outside the bundle: {extraneous}"
        )
    if missing:
        raise BundleRefused(Refusal.MALFORMED, f"the model names files not listed with that role: {missing}")
    if manifest.expires_at <= now:
        raise BundleRefused(Refusal.EXPIRED, f"the manifest expired at {manifest.expires_at:.0f}")
    return targets, manifest
