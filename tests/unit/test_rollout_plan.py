"""Rollout arithmetic and key handling that need no hub: waves, quality signals, the keys command."""

import pytest
from pydantic import ValidationError

from cloud.fleet.rollout_spec import RolloutSpec, plan_waves, signals
from cloud.fleet.store import Device, Session
from tandem.cli import main


def ids(n):
    return [f"cam-{i:03d}" for i in range(n)]


def test_cumulative_waves_cover_every_device_once_in_a_stable_order():
    spec = RolloutSpec(bundle_id="b-1", waves=[0.1, 0.5, 1.0])
    waves = plan_waves(spec, ids(100), "ro-1")
    assert [len(w) for w in waves] == [10, 40, 50]
    assert sorted(d for wave in waves for d in wave) == ids(100)
    assert plan_waves(spec, ids(100), "ro-1") == waves  # the same rollout id, the same waves
    assert plan_waves(spec, ids(100), "ro-2") != waves  # another rollout starts elsewhere


def test_exponential_waves_double_until_the_fleet_is_covered():
    spec = RolloutSpec(bundle_id="b-1", exponential={"first": 1, "factor": 2})
    assert [len(w) for w in plan_waves(spec, ids(20), "ro-1")] == [1, 2, 4, 8, 5]


def test_a_small_fleet_never_gets_an_empty_wave():
    spec = RolloutSpec(bundle_id="b-1", waves=[0.01, 0.02, 1.0])
    assert [len(w) for w in plan_waves(spec, ids(3), "ro-1")] == [1, 2]


@pytest.mark.parametrize("waves", [[0.5], [0.5, 0.4, 1.0], [0.0, 1.0], []])
def test_waves_must_grow_to_the_whole_target(waves):
    with pytest.raises(ValidationError):
        RolloutSpec(bundle_id="b-1", waves=waves)


def test_quality_signals_wait_for_enough_frames_of_the_new_model():
    histogram = [0] * 9 + [50]
    beat = {"model_frames": 50, "model_uncertain": 10, "model_confidence_histogram": histogram, "model_p95_ms": 1.5}
    device = Device("cam-1", 0.0, 0.0, Session.ACTIVE, 0.0, telemetry=beat)
    assert signals(device, min_frames=100) is None
    assert signals(device, min_frames=50) == {"escalation_rate": 0.2, "confidence": 0.95, "p95_ms": 1.5}


def test_keys_init_then_rotate_from_the_command_line(tmp_path, capsys):
    keys, root = tmp_path / "keys", tmp_path / "offline" / "root.pem"
    assert main(["hub", "keys", "init", "--root-key", str(root), "--keys", str(keys)]) == 0
    first = capsys.readouterr().out
    assert "targets key version 1" in first and root.exists()
    assert main(["hub", "keys", "init", "--root-key", str(root), "--keys", str(keys)]) == 1  # never overwritten
    assert main(["hub", "keys", "rotate", "--root-key", str(root), "--keys", str(keys)]) == 0
    assert "targets key version 2" in capsys.readouterr().out
