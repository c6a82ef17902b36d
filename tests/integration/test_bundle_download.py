"""The download-side attacks and faults, against a misbehaving HTTP server on this machine: more bytes than
declared, a trickle, another file than the manifest covers, a cut connection, an abort. Then the same through the
device runtime: a refused bundle leaves the running model byte-identical and the frame loop untouched."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time

import pytest

from common.signing import BundleRefused
from edge.app import EdgeRuntime
from edge.config import DetectorConfig, EdgeConfig, FleetConfig, ModelsConfig, ProbationConfig, SourceConfig
from edge.models.download import Download, Limits
from protocol import fleet
from protocol.bundle import FileEntry, Manifest, Refusal
from tests.support.bundles import BundleMaker, frames, tempered
from tests.support.evil_http import EvilServer
from tests.support.waiting import wait_for


@pytest.fixture
def served(tmp_path, demo_assets):
    folder = tmp_path / "served"
    folder.mkdir()
    model = demo_assets / "models" / "digits-strong.onnx"  # large enough to cut in half and trickle
    shutil.copy(model, folder / "model.onnx")
    data = model.read_bytes()
    entry = FileEntry(sha256=hashlib.sha256(data).hexdigest(), size=len(data), role="model")
    with EvilServer(folder) as server:
        yield server, entry


def fetch(server, entry, dest, mode, *, min_rate=1024, window_s=5.0, abort=None):
    server.modes["model.onnx"] = mode
    limits = Limits(min_rate, window_s, time.monotonic() + 60, attempts=3)
    Download(f"{server.url()}/model.onnx", dest, entry, limits, abort or threading.Event()).run()


def refusal(server, entry, dest, mode, **kw) -> Refusal:
    with pytest.raises(BundleRefused) as caught:
        fetch(server, entry, dest, mode, **kw)
    return caught.value.reason


def test_a_normal_download_lands_under_its_name(served, tmp_path):
    server, entry = served
    fetch(server, entry, tmp_path / "model.onnx", "normal")
    assert hashlib.sha256((tmp_path / "model.onnx").read_bytes()).hexdigest() == entry.sha256


def test_endless_data_is_cut_off_at_the_declared_size(served, tmp_path):
    server, entry = served
    assert refusal(server, entry, tmp_path / "model.onnx", "extra") is Refusal.TOO_LARGE
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "model.onnx.part").exists()


def test_slow_retrieval_is_abandoned(served, tmp_path):
    server, entry = served
    started = time.monotonic()
    assert refusal(server, entry, tmp_path / "model.onnx", "trickle", window_s=1.0) is Refusal.SLOW_RETRIEVAL
    assert time.monotonic() - started < 10  # not the hours a trickle of the whole file would take


def test_mix_and_match_another_file_is_refused(served, tmp_path):
    server, entry = served
    assert refusal(server, entry, tmp_path / "model.onnx", "swap") is Refusal.HASH_MISMATCH
    assert not (tmp_path / "model.onnx").exists()


def test_a_cut_download_resumes_with_a_range_request(served, tmp_path):
    server, entry = served
    fetch(server, entry, tmp_path / "model.onnx", "cut")
    assert hashlib.sha256((tmp_path / "model.onnx").read_bytes()).hexdigest() == entry.sha256
    ranges = [r for name, r in server.requests if name == "model.onnx"]
    assert ranges[0] == "bytes=0-" and ranges[1] == f"bytes={entry.size // 2}-", ranges


def test_an_abort_stops_the_download_at_once_and_keeps_what_came(served, tmp_path):
    server, entry = served
    abort = threading.Event()
    threading.Timer(0.5, abort.set).start()
    started = time.monotonic()
    assert refusal(server, entry, tmp_path / "model.onnx", "trickle", abort=abort) is Refusal.ABORTED
    assert time.monotonic() - started < 5
    assert 0 < (tmp_path / "model.onnx.part").stat().st_size < entry.size


def test_a_refused_bundle_leaves_the_running_model_byte_identical(tmp_path, demo_assets, served):
    """Through the runtime: the hub names a bundle whose file the server pads; the device refuses it, reports
    why, and its model file, its detector and its frames are what they were."""
    server, _entry = served
    maker = BundleMaker(tmp_path / "hub")
    own_model = tmp_path / "device" / "digits-weak.onnx"
    own_model.parent.mkdir()
    shutil.copy(demo_assets / "models" / "digits-weak.onnx", own_model)
    before = hashlib.sha256(own_model.read_bytes()).hexdigest()
    config = EdgeConfig(
        device_id="cam-1",
        state_path=tmp_path / "device" / "edge.db",
        source=SourceConfig(kind="images", path=demo_assets / "stream" / "images", max_fps=100.0, loop=True),
        detector=DetectorConfig(model_path=own_model),
        fleet=FleetConfig(),
        models=ModelsConfig(root_keys=[maker.keys.root_public], probation=ProbationConfig(frames=5)),
    )
    surer = tempered(demo_assets / "models" / "digits-weak.onnx", 1.5, tmp_path / "models" / "digits-sure.onnx")
    envelope = maker.make(surer, golden_images=frames(demo_assets / "stream"))
    manifest = Manifest.model_validate(envelope.manifest.signed)
    shutil.copy(maker.bundle_dir(envelope) / "model.onnx", server.folder / "model.onnx")
    shutil.copy(maker.bundle_dir(envelope) / "golden.npz", server.folder / "golden.npz")
    server.modes["model.onnx"] = "extra"
    reports: list[fleet.Reported] = []
    runtime = EdgeRuntime(config)
    runtime.fleet._publish = lambda payload: reports.append(fleet.decode(payload, fleet.Reported))
    runtime.store.open()
    runtime.updater.recover()
    runtime.detector.start()
    runtime.updater.start()
    frames_thread = threading.Thread(target=runtime.run, daemon=True)  # frames flow through the probation
    try:
        detector = runtime.detector
        desired = fleet.Desired(
            device_id="cam-1", sent_at=1.0, version=1, rollout_id="ro-1",
            bundle=envelope.model_copy(update={"base_url": server.url()}),
        )  # fmt: skip
        runtime.fleet.on_desired(fleet.encode(desired))
        wait_for(lambda: reports and reports[-1].update and reports[-1].update.state.value == "failed", 30, "refusal")
        assert reports[-1].update.reason == "too_large"
        assert runtime.metrics.value("model_updates", state="failed", reason="too_large") == 1
        assert runtime.detector is detector and runtime.run(max_frames=5) == 5
        assert hashlib.sha256(own_model.read_bytes()).hexdigest() == before
        assert runtime.models.active_model().model_id == "digits-weak" and runtime.slots.load().active is None
        # The same bundle from an honest server is taken: the refusal was about the bytes, not the bundle.
        server.modes["model.onnx"] = "normal"
        again = desired.model_copy(update={"version": 2, "rollout_id": "ro-2"})
        runtime.fleet.on_desired(fleet.encode(again))
        frames_thread.start()
        wait_for(lambda: reports[-1].update.state.value == "active", 30, "the honest copy to go active")
        assert runtime.models.active_model().bundle_id == f"{manifest.name}-{manifest.release}"
    finally:
        runtime.stop()
        if frames_thread.is_alive():
            frames_thread.join(10)
        runtime.updater.close()
        runtime.detector.close()
        runtime.store.close()
