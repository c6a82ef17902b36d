"""A device refuses every bundle an attacker could send, before downloading a byte, each with its reason.
The bundles are made by the hub's own code; each attack then changes one thing."""

from __future__ import annotations

import base64
import time

import pytest

from cloud.fleet.keys import KeyRing, rotate_keys
from common.signing import BundleRefused, SigningKey, certify
from edge.config import ModelsConfig
from edge.models import verify
from protocol.bundle import BundleEnvelope, Refusal, Signed
from tests.support.bundles import BundleMaker


@pytest.fixture
def maker(tmp_path) -> BundleMaker:
    return BundleMaker(tmp_path / "hub")


@pytest.fixture
def model(demo_assets):
    return demo_assets / "models" / "digits-weak.onnx"


def config(maker: BundleMaker, **fields) -> ModelsConfig:
    return ModelsConfig(root_keys=[maker.keys.root_public], **fields)


STANDING = verify.Standing("cam-1", "x86_64/cpu", release=0, key_version=0)


def refused(envelope: BundleEnvelope, models: ModelsConfig, standing=STANDING, **kw) -> Refusal:
    with pytest.raises(BundleRefused) as caught:
        verify.check(envelope, models, standing, now=kw.pop("now", time.time()), **kw)
    return caught.value.reason


def resign(maker: BundleMaker, envelope: BundleEnvelope, key: SigningKey, **changes) -> BundleEnvelope:
    """The same manifest with ``changes``, signed by ``key``."""
    signed = {**envelope.manifest.signed, **changes}
    return envelope.model_copy(update={"manifest": key.sign(signed)})


def test_a_good_bundle_passes_and_names_its_key_version(maker, model):
    envelope = maker.make(model)
    key, manifest = verify.check(envelope, config(maker), STANDING, now=time.time())
    assert (key.version, manifest.release, manifest.model.file) == (1, 1, "model.onnx")


def test_arbitrary_software_unsigned_bad_signature_wrong_key(maker, model):
    envelope = maker.make(model)
    unsigned = envelope.model_copy(update={"manifest": Signed(signed=envelope.manifest.signed, signatures=[])})
    assert refused(unsigned, config(maker)) is Refusal.UNSIGNED
    tampered = envelope.model_copy(
        update={
            "manifest": Signed(
                signed={**envelope.manifest.signed, "release": 2}, signatures=envelope.manifest.signatures
            )
        }
    )
    assert refused(tampered, config(maker)) is Refusal.BAD_SIGNATURE
    stranger = SigningKey.generate()
    assert refused(resign(maker, envelope, stranger), config(maker)) is Refusal.UNTRUSTED_KEY
    # A targets key certified by a root the device does not hold.
    other_root = SigningKey.generate()
    delegation = certify(other_root, stranger.public, 1, time.time() + 3600)
    forged = resign(maker, envelope, stranger).model_copy(update={"delegation": delegation})
    assert refused(forged, config(maker)) is Refusal.UNTRUSTED_KEY
    # No root key configured: nothing is trusted.
    assert refused(envelope, ModelsConfig()) is Refusal.UNTRUSTED_KEY


def test_a_rotated_out_targets_key_is_refused_once_the_device_has_seen_the_new_one(maker, model):
    old = maker.make(model)
    maker.keys = rotate_keys(maker.folder / "keys", maker.root_key)
    new = maker.make(model)
    key, _ = verify.check(new, config(maker), STANDING, now=time.time())
    assert key.version == 2
    seen_new = verify.Standing("cam-1", "x86_64/cpu", release=0, key_version=2)
    assert refused(old, config(maker), seen_new) is Refusal.REVOKED_KEY
    with pytest.raises(Exception, match="not the root key"):
        rotate_keys(maker.folder / "keys", maker.folder / "keys" / "targets.pem")


def test_rollback_and_fast_forward(maker, model):
    envelope = maker.make(model, release=5)
    at_5 = verify.Standing("cam-1", "x86_64/cpu", release=5, key_version=1)
    assert refused(envelope, config(maker), at_5) is Refusal.ROLLBACK
    at_7 = verify.Standing("cam-1", "x86_64/cpu", release=7, key_version=1)
    assert refused(envelope, config(maker), at_7) is Refusal.ROLLBACK
    verify.check(envelope, config(maker), at_7, rollback=True, now=time.time())  # the rollout asked to go back
    far = maker.make(model, release=5000)
    assert refused(far, config(maker, max_release_jump=100), at_7) is Refusal.FAST_FORWARD


def test_freeze_an_expired_manifest_or_key_certificate(maker, model):
    envelope = maker.make(model, expires_in_s=60)
    assert refused(envelope, config(maker), now=time.time() + 120) is Refusal.EXPIRED
    root = SigningKey.from_pem(maker.root_key.read_bytes())
    stale = certify(root, maker.keys.targets.public, 1, time.time() - 1)
    assert refused(maker.make(model).model_copy(update={"delegation": stale}), config(maker)) is Refusal.EXPIRED


def test_wrong_software_another_device_class_or_other_devices(maker, model):
    jetson = maker.make(model, device_classes=("jetson-orin-*/jp6*/trt10*",))
    assert refused(jetson, config(maker)) is Refusal.WRONG_DEVICE_CLASS
    orin = verify.Standing("cam-1", "jetson-orin-nano/jp6.1/trt10.3", release=0, key_version=0)
    verify.check(jetson, config(maker), orin, now=time.time())
    theirs = maker.make(model, devices=("cam-2", "cam-3"))
    assert refused(theirs, config(maker)) is Refusal.WRONG_DEVICE


def test_extraneous_files_and_names_outside_the_bundle(maker, model):
    envelope = maker.make(model)
    files = dict(envelope.manifest.signed["files"])
    files["backdoor.sh"] = {**files["model.onnx"], "role": "labels"}
    assert refused(resign(maker, envelope, maker.keys.targets, files=files), config(maker)) is Refusal.EXTRANEOUS
    escape = {"../../bin/evil": files["model.onnx"]}
    model_section = {**envelope.manifest.signed["model"], "file": "../../bin/evil"}
    sneaky = resign(maker, envelope, maker.keys.targets, files=escape, model=model_section)
    assert refused(sneaky, config(maker)) is Refusal.EXTRANEOUS


def test_keys_on_disk_are_usable_and_the_root_key_stays_out_of_the_hub_folder(maker):
    ring = KeyRing.load(maker.folder / "keys")
    assert base64.b64decode(ring.root_public) == SigningKey.from_pem(maker.root_key.read_bytes()).public
    assert not any("root" in p.name and p.suffix == ".pem" for p in (maker.folder / "keys").iterdir())
    assert oct((maker.folder / "keys" / "targets.pem").stat().st_mode & 0o777) == "0o600"
