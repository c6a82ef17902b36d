"""Threshold calibration: the sweep's arithmetic, the choice, and the demo cascade goal on real models."""

import pytest
import yaml

from common.errors import ConfigError
from edge.config import DetectorConfig, JudgeConfig, SourceConfig, load_config
from edge.detectors import create_detector
from edge.judge.calibrate import Sample, choose, collect, operating_point, sweep
from tandem.cli import main


def samples() -> list[Sample]:
    # confidence, edge right?, escalated by another policy?, hub right?
    rows = [
        (0.99, True, False, True),
        (0.95, True, False, True),
        (0.90, False, False, True),
        (0.70, False, False, False),
        (0.60, True, True, True),
    ]
    return [Sample(*r) for r in rows]


def test_operating_point_counts_escalations_and_final_answers():
    p = operating_point(samples(), 0.92)  # escalates 0.90 and 0.70 by confidence, 0.60 by another policy
    assert p.escalation_rate == pytest.approx(3 / 5)
    assert p.edge_accuracy == pytest.approx(3 / 5)
    assert p.kept_accuracy == 1.0
    assert p.cascade_accuracy == pytest.approx(4 / 5)  # the hub gets 0.70 wrong


def test_without_a_strong_model_escalations_count_as_right():
    unknown = [Sample(s.confidence, s.edge_correct, s.escalated_anyway, None) for s in samples()]
    assert operating_point(unknown, 0.92).cascade_accuracy == 1.0


def test_choose_by_escalation_takes_the_highest_threshold_within_the_target():
    points = sweep(samples())
    chosen = choose(points, target_escalation=0.4)
    assert chosen.escalation_rate == pytest.approx(0.4)  # the other policy's frame and the 0.70 one
    assert all(p.threshold <= chosen.threshold for p in points if p.escalation_rate <= 0.4)


def test_choose_by_accuracy_takes_the_least_escalation_that_reaches_it():
    chosen = choose(sweep(samples()), target_accuracy=0.8)
    # 0.90 must go too (kept it is wrong); 0.70 is wrong either way
    assert chosen.cascade_accuracy >= 0.8 and chosen.escalation_rate == pytest.approx(0.6)


def test_unreachable_targets_say_why():
    with pytest.raises(ConfigError, match=r"other policies already escalate 20\.0%"):
        choose(sweep(samples()), target_escalation=0.1)
    with pytest.raises(ConfigError, match="no threshold reaches accuracy"):
        choose(sweep(samples()), target_accuracy=0.99)


def _labelled(assets, split: str) -> SourceConfig:
    return SourceConfig(kind="images", path=assets / split / "images", labels_csv=assets / split / "labels.csv")


def test_cascade_goal_on_the_demo_held_out_stream(demo_assets):
    """Calibrated on the calibration split, the held-out stream reaches >= 99% of the strong model at <= 20%."""
    weak = create_detector(DetectorConfig(model_path=demo_assets / "models" / "digits-weak.onnx"))
    strong = create_detector(DetectorConfig(model_path=demo_assets / "models" / "digits-strong.onnx"))
    weak.start()
    strong.start()
    judge = JudgeConfig()
    calibration, _ = collect(weak, _labelled(demo_assets, "calibration"), judge, strong)
    chosen = choose(sweep(calibration), target_escalation=0.15)
    held_out, _ = collect(weak, _labelled(demo_assets, "stream"), judge, strong)
    result = operating_point(held_out, chosen.threshold)
    strong_accuracy = sum(bool(s.hub_correct) for s in held_out) / len(held_out)
    assert len(held_out) == 540
    assert result.escalation_rate <= 0.20
    assert result.cascade_accuracy / strong_accuracy >= 0.99
    assert result.cascade_accuracy > result.edge_accuracy


def test_calibrate_command_writes_a_config_that_loads(demo_assets, tmp_path, capsys):
    config = tmp_path / "edge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "device_id": "cam-1",
                "source": {"kind": "images", "path": str(demo_assets / "stream" / "images")},
                "detector": {"model_path": str(demo_assets / "models" / "digits-weak.onnx")},
                "judge": {"preset": "default", "min_margin": 0.05},
            }
        )
    )
    calib = demo_assets / "calibration"
    code = main(
        [
            "edge",
            "calibrate",
            "--config",
            str(config),
            "--source",
            str(calib / "images"),
            "--labels",
            str(calib / "labels.csv"),
            "--target-escalation",
            "0.2",
            "--ood",
            "--write",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "<- chosen" in out and "upper bound" in out
    loaded = load_config(config)
    assert 0.5 < loaded.judge.confidence_threshold < 1.0
    assert loaded.judge.min_margin == 0.05  # the rest of the judge section is kept
    assert loaded.judge.ood is not None and loaded.judge.ood.brightness_std > 0
