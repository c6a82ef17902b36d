"""Bad input never stops the runtime and never loses a trace. No network: nothing is started."""

import resource
import shutil

import cv2
import numpy as np
import pytest

from common.errors import InferenceError
from edge.app import EdgeRuntime
from edge.comms.link import Handled
from edge.config import DetectorConfig, EdgeConfig, JudgeConfig, SourceConfig
from edge.detectors import create_detector
from edge.judge import TraceState
from protocol import AckStatus, EscalationAck, EscalationResult, Prediction, ResultStatus
from protocol.codec import encode_escalation_ack, encode_result
from tests.support.images import png_bomb


@pytest.fixture
def runtime(tmp_path, demo_assets):
    frames = tmp_path / "frames"
    frames.mkdir()
    images = sorted((demo_assets / "stream" / "images").iterdir())[:6]
    for p in images:
        shutil.copy(p, frames / p.name)
    (frames / "000003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # replaces a good frame
    config = EdgeConfig(
        device_id="cam-1",
        state_path=tmp_path / "edge.db",
        source=SourceConfig(kind="images", path=frames, labels_csv=demo_assets / "stream" / "labels.csv"),
        detector=DetectorConfig(model_path=demo_assets / "models" / "digits-weak.onnx"),
        judge=JudgeConfig(confidence_threshold=0.999),  # escalate nearly everything
    )
    rt = EdgeRuntime(config)
    rt.store.open()
    rt.detector.start()
    yield rt
    rt.store.close()


def test_undecodable_frame_is_recorded_as_unjudgeable_and_the_rest_go_on(runtime):
    assert runtime.run() == 6
    traces = runtime.store.traces()
    assert len(traces) == 6
    bad = [t for t in traces if t.state is TraceState.UNJUDGEABLE]
    assert [t.frame_index for t in bad] == [3]
    assert "cannot decode 000003.png" in bad[0].history[-1].reason
    assert len(runtime.store.outbox()) == sum(t.state is TraceState.PENDING_CLOUD for t in traces) > 0
    assert runtime.metrics.value("frames", outcome="unjudgeable") == 1


def test_malformed_result_is_dropped_with_a_metric_and_good_ones_still_apply(runtime):
    runtime.run()
    pending = next(t for t in runtime.store.traces() if t.state is TraceState.PENDING_CLOUD)
    assert runtime.on_result(b"\x00garbage\xff") is Handled.ACK
    assert runtime.metrics.value("bad_results", error="MalformedMessage") == 1
    final = Prediction("strong", "1", tuple(str(d) for d in range(10)), tuple([0.0] * 9 + [1.0]))
    good = EscalationResult(pending.trace_id, "cam-1", ResultStatus.SUCCESS, (final,), final)
    assert runtime.on_result(encode_result(good)) is Handled.ACK
    assert runtime.store.trace(pending.trace_id).state is TraceState.COMPLETE


def test_result_for_another_device_is_dropped(runtime):
    runtime.run()
    pending = next(t for t in runtime.store.traces() if t.state is TraceState.PENDING_CLOUD)
    final = Prediction("strong", "1", ("0",), (1.0,))
    stray = EscalationResult(pending.trace_id, "cam-2", ResultStatus.SUCCESS, (final,), final)
    runtime.on_result(encode_result(stray))
    assert runtime.store.trace(pending.trace_id).state is TraceState.PENDING_CLOUD
    assert runtime.metrics.value("bad_results", error="WrongDevice") == 1


def test_store_failure_asks_the_broker_to_redeliver(runtime):
    runtime.run()
    pending = next(t for t in runtime.store.traces() if t.state is TraceState.PENDING_CLOUD)
    final = Prediction("strong", "1", ("0",), (1.0,))
    runtime.store.close()  # the disk went away
    result = EscalationResult(pending.trace_id, "cam-1", ResultStatus.SUCCESS, (final,), final)
    assert runtime.on_result(encode_result(result)) is Handled.RETRY
    runtime.store.open()
    assert runtime.on_result(encode_result(result)) is Handled.ACK


def test_model_that_does_not_load_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(InferenceError, match=r"cannot load ONNX model .*broken.onnx"):
        create_detector(DetectorConfig(model_path=broken)).start()


def test_model_without_tandem_metadata_is_refused(tmp_path, demo_assets):
    import onnx

    model = onnx.load(demo_assets / "models" / "digits-weak.onnx")
    del model.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(model, path)
    with pytest.raises(InferenceError, match="tandem"):
        create_detector(DetectorConfig(model_path=path)).start()


def test_detector_accepts_colour_and_grey_frames_of_any_size(demo_assets):
    detector = create_detector(DetectorConfig(model_path=demo_assets / "models" / "digits-weak.onnx"))
    detector.start()
    grey = cv2.imread(str(demo_assets / "stream" / "images" / "000000.png"), cv2.IMREAD_GRAYSCALE)
    colour = cv2.resize(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), (96, 96), interpolation=cv2.INTER_NEAREST)
    a, b = detector.predict(grey), detector.predict(colour)
    assert a.label == b.label
    assert np.isclose(sum(a.scores), 1.0, atol=1e-4)


def test_max_fps_paces_the_source(runtime):
    """Six frames at 20 fps take at least five intervals (the cap is a floor on time, not a speed claim)."""
    import time

    paced = EdgeRuntime(
        runtime.config.model_copy(update={"source": runtime.config.source.model_copy(update={"max_fps": 20.0})}),
        detector=runtime.detector,
    )
    paced.store = runtime.store
    started = time.monotonic()
    assert paced.run() == 6
    assert time.monotonic() - started >= 5 * 0.05 * 0.9


def test_a_decompression_bomb_in_the_folder_is_unjudgeable_and_never_decoded(tmp_path, demo_assets):
    """A 30000 x 30000 PNG under 1 MB would decode to 900 MB: the header says so, and it is not decoded."""
    frames = tmp_path / "bombs"
    frames.mkdir()
    shutil.copy(sorted((demo_assets / "stream" / "images").iterdir())[0], frames / "000000.png")
    (frames / "000001.png").write_bytes(png_bomb(30000, 30000))
    (frames / "000002.png").write_bytes(b"")
    config = EdgeConfig(
        device_id="cam-bomb",
        state_path=tmp_path / "edge.db",
        source=SourceConfig(kind="images", path=frames),
        detector=DetectorConfig(model_path=demo_assets / "models" / "digits-weak.onnx"),
    )
    rt = EdgeRuntime(config)
    rt.store.open()
    rt.detector.start()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        assert rt.run() == 3
        traces = {t.frame_index: t for t in rt.store.traces()}
    finally:
        rt.store.close()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert traces[1].state is TraceState.UNJUDGEABLE
    assert "30000x30000 pixels is larger than the limit" in traces[1].history[-1].reason
    assert traces[2].state is TraceState.UNJUDGEABLE and "empty image" in traces[2].history[-1].reason
    assert traces[0].state is not TraceState.UNJUDGEABLE
    assert grown_mb < 200  # decoding it would have taken 900 MB at least


def test_the_hubs_confirmation_ends_the_resends_of_an_mqtt_escalation(runtime):
    runtime.run()
    pending = [t for t in runtime.store.traces() if t.state is TraceState.PENDING_CLOUD]
    runtime.store.mark_sent(pending[0].trace_id, resend_at=0.0)  # relayed by a broker, not yet confirmed
    ack = encode_escalation_ack(EscalationAck(pending[0].trace_id, AckStatus.ACCEPTED))
    assert runtime.on_accepted(ack) is Handled.ACK
    assert runtime.on_accepted(ack) is Handled.ACK  # a repeat changes nothing
    assert pending[0].trace_id not in {r.trace_id for r in runtime.store.due(now=1e12)}
    assert runtime.metrics.value("hub_acks", status="accepted") == 1
    assert runtime.metrics.value("hub_acks", status="repeat") == 1
    assert runtime.on_accepted(b"\xffnot an ack") is Handled.ACK
    assert runtime.metrics.value("bad_results", error="ack:MalformedMessage") == 1


def test_a_camera_that_cannot_be_read_is_down_and_the_others_play_on(tmp_path, demo_assets):
    images = sorted((demo_assets / "stream" / "images").iterdir())
    cameras = []
    for name, chosen in (("gate", images[:5]), ("yard", images[5:12])):
        folder = tmp_path / name
        folder.mkdir()
        for p in chosen:
            shutil.copy(p, folder / p.name)
        cameras.append(SourceConfig(kind="images", path=folder, source_id=name))
    cameras.append(SourceConfig(kind="images", path=tmp_path / "unplugged", source_id="dock"))  # no such folder
    config = EdgeConfig(
        device_id="cam-3",
        state_path=tmp_path / "edge.db",
        sources=cameras,
        detector=DetectorConfig(model_path=demo_assets / "models" / "digits-weak.onnx"),
        judge=JudgeConfig(confidence_threshold=0.0),  # keep everything: no network here
    )
    runtime = EdgeRuntime(config)
    runtime.store.open()
    runtime.detector.start()
    try:
        assert runtime.run() == 12
        assert {c: runtime.metrics.value("frames", camera=c) for c in ("gate", "yard", "dock")} == {
            "gate": 5,
            "yard": 7,
            "dock": 0,
        }
        _, body = runtime.health_probe()
        states = {s["id"]: s["state"] for s in body["sources"]}
        assert states == {"gate": "file", "yard": "file", "dock": "down"} and "source down" in body["degraded"]
        assert len(runtime.store.traces()) == 12
    finally:
        runtime.store.close()
