"""The device's side of desired and reported state, with no broker: the runtime's own agent, fed messages."""

import json
import shutil

import pytest

from edge.app import EdgeRuntime
from edge.comms.link import Handled
from edge.config import DetectorConfig, EdgeConfig, FleetConfig, JudgeConfig, SourceConfig
from edge.judge import TraceState
from edge.models.settings import SettingsRefused, merge
from edge.telemetry import Heartbeat
from protocol import fleet
from protocol.errors import MalformedMessage, UnsupportedSchemaVersion


def make_config(tmp_path, demo_assets, **judge):
    frames = tmp_path / "frames"
    frames.mkdir(exist_ok=True)
    for p in sorted((demo_assets / "stream" / "images").iterdir())[:20]:
        shutil.copy(p, frames / p.name)
    return EdgeConfig(
        device_id="cam-1",
        state_path=tmp_path / "edge.db",
        source=SourceConfig(kind="images", path=frames),
        detector=DetectorConfig(model_path=demo_assets / "models" / "digits-weak.onnx"),
        judge=JudgeConfig(**judge),
        fleet=FleetConfig(group="lobby", tags=["night", "site-a"]),
    )


class Reports:
    """Stands in for the broker's retained ``reported`` topic."""

    def __init__(self):
        self.sent: list[fleet.Reported] = []

    def __call__(self, payload: bytes) -> None:
        self.sent.append(fleet.decode(payload, fleet.Reported))

    @property
    def last(self) -> fleet.Reported:
        return self.sent[-1]


@pytest.fixture
def runtime(tmp_path, demo_assets):
    rt = EdgeRuntime(make_config(tmp_path, demo_assets, confidence_threshold=0.0))  # nothing escalated
    rt.fleet._publish = Reports()
    rt.store.open()
    rt.fleet.start()
    rt.detector.start()
    yield rt
    rt.detector.close()
    rt.store.close()


def desired(version, **settings):
    return fleet.encode(fleet.Desired(device_id="cam-1", sent_at=1.0, version=version, settings=settings))


def test_a_threshold_from_the_hub_applies_from_the_next_frame_without_a_restart(runtime):
    runtime.run(max_frames=5)
    assert not any(t.state is TraceState.PENDING_CLOUD for t in runtime.store.traces())
    judge_before = runtime.live.judge
    assert runtime.fleet.on_desired(desired(1, judge={"confidence_threshold": 1.0})) is Handled.ACK
    assert runtime.live.judge is not judge_before
    runtime.run(max_frames=5)
    later = runtime.store.traces()[5:]
    assert later and all(t.state is TraceState.PENDING_CLOUD for t in later)  # every frame is below 1.0
    report = runtime.fleet._publish.last
    assert (report.applied_version, report.settings) == (1, {"judge": {"confidence_threshold": 1.0}})
    assert (report.group, report.tags, report.device_class.endswith("/cpu")) == ("lobby", ("night", "site-a"), True)
    assert report.model.backend == "onnxruntime:CPUExecutionProvider" and len(report.model.sha256) == 64


def test_settings_that_do_not_validate_are_refused_and_nothing_changes(runtime):
    judge_before = runtime.live.judge
    runtime.fleet.on_desired(desired(3, judge={"confidence_threshold": 7}))
    assert runtime.live.judge is judge_before
    report = runtime.fleet._publish.last
    assert (report.applied_version, report.refused_version) == (0, 3)
    assert "confidence_threshold" in report.refused_reason
    runtime.fleet.on_desired(desired(4, camera={"fps": 3}))
    assert "unknown settings sections ['camera']" in runtime.fleet._publish.last.refused_reason
    assert runtime.live.judge is judge_before


def test_an_old_or_repeated_version_is_not_applied_twice(runtime):
    runtime.fleet.on_desired(desired(5, judge={"confidence_threshold": 0.5}))
    applied = runtime.live
    runtime.fleet.on_desired(desired(5, judge={"confidence_threshold": 0.5}))  # the retained copy after reconnect
    runtime.fleet.on_desired(desired(2, judge={"confidence_threshold": 0.9}))  # older
    assert runtime.live is applied
    assert runtime.fleet._publish.last.applied_version == 5


def test_desired_state_for_another_device_or_malformed_is_dropped(runtime):
    judge_before = runtime.live.judge
    other = fleet.encode(fleet.Desired(device_id="cam-2", sent_at=1.0, version=9, settings={"judge": {}}))
    assert runtime.fleet.on_desired(other) is Handled.ACK
    assert runtime.fleet.on_desired(b"{not json") is Handled.ACK
    assert runtime.live.judge is judge_before
    assert runtime.fleet._publish.sent == []


def test_applied_settings_survive_a_restart(tmp_path, demo_assets, runtime):
    runtime.fleet.on_desired(desired(2, escalation={"deadline_ms": 1234}))
    again = EdgeRuntime(runtime.config)
    again.fleet.start()
    assert again.live.escalation.deadline_ms == 1234
    assert again.fleet.applied_version == 2


def test_a_hub_preset_replaces_the_device_judge_section_and_other_fields_stay_on_top(tmp_path, demo_assets):
    base = make_config(tmp_path, demo_assets, confidence_threshold=0.3, min_margin=0.2)
    hot = merge(base, {"judge": {"min_margin": 0.1}})
    assert (hot.judge.confidence_threshold, hot.judge.min_margin) == (0.3, 0.1)
    hot = merge(base, {"judge": {"preset": "no_cloud", "audit_rate": 0.05}})
    assert (hot.judge.escalate, hot.judge.min_margin, hot.judge.audit_rate) == ("never", 0.0, 0.05)
    with pytest.raises(SettingsRefused, match="deadline_ms"):
        merge(base, {"escalation": {"deadline_ms": -1}})


def test_control_messages_refuse_unknown_versions_and_keep_unknown_fields():
    body = json.loads(desired(1))
    assert fleet.decode(json.dumps({**body, "future": 1}).encode(), fleet.Desired).model_extra == {"future": 1}
    with pytest.raises(UnsupportedSchemaVersion):
        fleet.decode(json.dumps({**body, "schema_version": 2}).encode(), fleet.Desired)
    with pytest.raises(MalformedMessage, match="device_id"):
        fleet.decode(json.dumps({**body, "device_id": "cam/+"}).encode(), fleet.Desired)
    with pytest.raises(MalformedMessage, match="version"):
        fleet.decode(json.dumps({**body, "version": 0}).encode(), fleet.Desired)


def test_the_heartbeat_counts_frames_escalations_and_confidences(runtime):
    runtime.heartbeat.snapshot(0, 0.0)  # start counting from here
    runtime.run(max_frames=8)
    beat = runtime.heartbeat.snapshot(3, 1.5)
    assert sum(beat.confidence_histogram) == 8
    assert beat.fps > 0 and beat.escalations_per_s == 0 and beat.memory_mb > 0
    assert (beat.outbox_rows, beat.outbox_oldest_age_s) == (3, 1.5)
    assert sum(runtime.heartbeat.snapshot(0, 0.0).confidence_histogram) == 0
    assert beat.camera_fps.keys() == {runtime.config.cameras[0].source_id}  # frames/s per camera
    assert beat.camera_fps[runtime.config.cameras[0].source_id] == pytest.approx(beat.fps)


def test_a_heartbeat_names_at_most_max_cameras_and_no_negative_rate():
    beat = {
        "schema_version": 1, "device_id": "cam-1", "sent_at": 1.0, "interval_s": 5, "fps": 1, "escalations_per_s": 0,
        "fallbacks_per_s": 0, "outbox_rows": 0, "outbox_oldest_age_s": 0, "confidence_histogram": [0] * 10,
        "cpu_percent": 0, "memory_mb": 0,
    }  # fmt: skip
    assert fleet.decode(json.dumps(beat).encode(), fleet.Telemetry).camera_fps == {}  # an older device: none
    for cameras in ({"gate": -1.0}, {f"c{i}": 1.0 for i in range(fleet.MAX_CAMERAS + 1)}):
        with pytest.raises(MalformedMessage, match="camera"):
            fleet.decode(json.dumps({**beat, "camera_fps": cameras}).encode(), fleet.Telemetry)


def test_a_camera_that_gives_no_frames_is_reported_at_zero_frames_per_second():
    """A hung camera shows as one: every source the device reads is in every heartbeat."""
    heartbeat = Heartbeat("cam-1", cameras=["gate", "yard"])
    heartbeat.snapshot(0, 0.0)
    for _ in range(5):
        heartbeat.frame(0.9, False, 1.0, camera="gate")
    heartbeat.frame(0.9, False, 1.0, camera="dock")  # a source named later counts from its first frame
    beat = heartbeat.snapshot(0, 0.0)
    assert list(beat.camera_fps) == ["gate", "yard", "dock"]
    assert beat.camera_fps["yard"] == 0.0 and beat.camera_fps["gate"] > 0
    assert heartbeat.snapshot(0, 0.0).camera_fps.keys() == {"gate", "yard", "dock"}  # still there, at 0
