import math

import numpy as np
import pytest

from edge.config import JudgeConfig, OodConfig, SensorGateConfig
from edge.judge import IllegalTransition, Judge, JudgeInput, RateLimit, TraceMachine, TraceState, Verdict
from edge.judge.policies import Blur, Entropy
from protocol import Box, Prediction


def prediction(confidence: float, labels=("cat", "dog", "owl"), boxes=()) -> Prediction:
    rest = (1.0 - confidence) / (len(labels) - 1)
    return Prediction("m", "1", labels, (confidence, *[rest] * (len(labels) - 1)), boxes=boxes)


def judged(config: JudgeConfig, confidence: float = 0.95, **kw) -> tuple[Verdict, tuple[str, ...]]:
    image = kw.pop("image", None)
    sensors = kw.pop("sensors", {})
    decision = Judge.from_config(config).decide(JudgeInput(prediction(confidence, **kw), image, sensors))
    return decision.verdict, decision.reasons


@pytest.fixture
def judge() -> Judge:
    return Judge.from_config(JudgeConfig(confidence_threshold=0.8))


def test_confident_answer_is_kept(judge):
    decision = judge.decide(JudgeInput(prediction(0.95)))
    assert decision.verdict is Verdict.KEEP and not decision.escalate and not decision.uncertain


def test_uncertain_answer_is_escalated_with_its_reason(judge):
    decision = judge.decide(JudgeInput(prediction(0.6)))
    assert decision.escalate and decision.uncertain
    assert decision.reasons == ("confidence: cat at 0.600 < 0.800",)


def test_threshold_is_inclusive(judge):
    assert not judge.decide(JudgeInput(prediction(0.8))).escalate


def test_nan_scores_are_unjudgeable_never_confident(judge):
    bad = Prediction("m", "1", ("cat", "dog"), (math.nan, 0.99))
    decision = judge.decide(JudgeInput(bad))
    assert decision.verdict is Verdict.UNJUDGEABLE
    assert "not finite" in decision.reasons[0]


def test_nan_box_score_is_unjudgeable(judge):
    bad = prediction(0.99, boxes=(Box(0, 0, 1, 1, "cat", math.nan),))
    assert judge.decide(JudgeInput(bad)).verdict is Verdict.UNJUDGEABLE


def test_per_class_threshold_overrides_the_global_one():
    config = JudgeConfig(confidence_threshold=0.5, class_thresholds={"cat": 0.97})
    assert judged(config, 0.95)[0] is Verdict.ESCALATE
    assert judged(config, 0.95, labels=("dog", "cat"))[0] is Verdict.KEEP


def test_per_class_threshold_out_of_range_is_a_config_error():
    with pytest.raises(ValueError, match="between 0 and 1"):
        JudgeConfig(class_thresholds={"cat": 1.5})


def test_margin_escalates_a_model_torn_between_two_classes():
    torn = Prediction("m", "1", ("a", "b", "c"), (0.48, 0.47, 0.05))
    config = JudgeConfig(confidence_threshold=0.0, min_margin=0.1)
    decision = Judge.from_config(config).decide(JudgeInput(torn))
    assert decision.escalate and "margin: top two 0.010 apart" in decision.reasons[0]


def test_entropy_is_normalised_between_certain_and_uniform():
    assert Entropy.normalised((1.0, 0.0, 0.0)) == 0.0
    assert Entropy.normalised((0.25, 0.25, 0.25, 0.25)) == pytest.approx(1.0)
    config = JudgeConfig(confidence_threshold=0.0, max_entropy=0.5)
    assert judged(config, 0.99)[0] is Verdict.KEEP
    assert judged(config, 0.4)[0] is Verdict.ESCALATE


def test_unknown_class_is_always_escalated():
    config = JudgeConfig(confidence_threshold=0.0, unknown_labels=["unknown"])
    verdict, reasons = judged(config, 0.99, labels=("unknown", "car"))
    assert verdict is Verdict.ESCALATE and "unknown_class" in reasons[0]


def test_blur_escalates_a_smoothed_frame_and_keeps_a_sharp_one():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    blurred = np.full((64, 64), 128, dtype=np.uint8)
    assert Blur.sharpness(sharp) > 1000 > Blur.sharpness(blurred)
    config = JudgeConfig(confidence_threshold=0.0, min_sharpness=100.0)
    assert judged(config, image=sharp)[0] is Verdict.KEEP
    verdict, reasons = judged(config, image=blurred)
    assert verdict is Verdict.ESCALATE and "blurred" in reasons[0]


def test_box_thresholds_judge_the_share_of_weak_boxes():
    config = JudgeConfig(confidence_threshold=0.0, box_threshold=0.5, max_weak_box_share=0.5)
    strong, weak = Box(0, 0, 1, 1, "cat", 0.9), Box(0, 0, 1, 1, "cat", 0.2)
    assert judged(config, boxes=(strong, strong, weak))[0] is Verdict.KEEP
    verdict, reasons = judged(config, boxes=(strong, weak, weak))
    assert verdict is Verdict.ESCALATE and "2/3 boxes below 0.50" in reasons[0]
    assert judged(config, boxes=())[0] is Verdict.KEEP


def test_out_of_distribution_frame_is_escalated_even_when_the_model_is_sure():
    ood = OodConfig(brightness_mean=100, brightness_std=10, contrast_mean=50, contrast_std=10, z_tolerance=3)
    config = JudgeConfig(confidence_threshold=0.8, ood=ood)
    rng = np.random.default_rng(0)
    usual = np.clip(rng.normal(100, 50, (32, 32)), 0, 255).astype(np.uint8)
    dark = np.zeros((32, 32), dtype=np.uint8)
    assert judged(config, 0.99, image=usual)[0] is Verdict.KEEP
    verdict, reasons = judged(config, 0.99, image=dark)
    assert verdict is Verdict.ESCALATE and reasons[0].startswith("ood: z ")


def test_sensor_gate_escalates_while_the_sensor_is_out_of_range():
    config = JudgeConfig(confidence_threshold=0.0, sensor_gates=[SensorGateConfig(sensor="thermo.celsius", above=60)])
    assert judged(config, sensors={})[0] is Verdict.KEEP  # no reading yet
    assert judged(config, sensors={"thermo.celsius": 20.0})[0] is Verdict.KEEP
    verdict, reasons = judged(config, sensors={"thermo.celsius": 75.0})
    assert verdict is Verdict.ESCALATE and reasons == ("sensor: thermo.celsius = 75 > 60",)


def test_audit_escalates_about_its_share_of_confident_answers():
    judge = Judge.from_config(JudgeConfig(audit_rate=0.1, audit_seed=7))
    decisions = [judge.decide(JudgeInput(prediction(0.99))) for _ in range(2000)]
    audited = [d for d in decisions if d.escalate]
    assert 150 < len(audited) < 250
    assert all(not d.uncertain and d.reasons[-1].startswith("audit:") for d in audited)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_keeps_the_local_answer_once_the_budget_is_spent():
    clock = FakeClock()
    judge = Judge.from_config(JudgeConfig(max_escalations_per_minute=3), clock)
    first = [judge.decide(JudgeInput(prediction(0.5))) for _ in range(5)]
    assert [d.escalate for d in first] == [True, True, True, False, False]
    assert first[-1].uncertain and "rate_limit: 3/min spent" in first[-1].reasons[-1]
    clock.now = 61.0
    assert judge.decide(JudgeInput(prediction(0.5))).escalate


def test_rate_limit_window_slides():
    clock = FakeClock()
    limit = RateLimit(2, clock)
    assert limit.allow() and limit.allow() and not limit.allow()
    clock.now = 59.0
    assert not limit.allow()
    clock.now = 60.5
    assert limit.allow()


@pytest.mark.parametrize(
    ("preset", "confident", "uncertain"),
    [
        ("default", Verdict.KEEP, Verdict.ESCALATE),
        ("no_cloud", Verdict.KEEP, Verdict.KEEP),
        ("cloud_only", Verdict.ESCALATE, Verdict.ESCALATE),
    ],
)
def test_presets(preset, confident, uncertain):
    config = JudgeConfig(preset=preset)
    assert judged(config, 0.99)[0] is confident
    assert judged(config, 0.3)[0] is uncertain


def test_no_cloud_records_why_the_uncertain_answer_was_kept():
    decision = Judge.from_config(JudgeConfig(preset="no_cloud")).decide(JudgeInput(prediction(0.3)))
    assert decision.uncertain and decision.reasons[-1] == "escalate=never: kept on the device"


def test_preset_fields_yield_to_explicit_ones():
    config = JudgeConfig(preset="edge_answers_with_escalation", audit_rate=0.0)
    assert config.answer == "immediately" and config.audit_rate == 0.0
    assert JudgeConfig(preset="edge_answers_with_escalation").audit_rate == 0.01


def test_unjudgeable_stays_unjudgeable_even_in_cloud_only():
    bad = Prediction("m", "1", ("cat", "dog"), (math.nan, 0.5))
    assert Judge.from_config(JudgeConfig(preset="cloud_only")).decide(JudgeInput(bad)).verdict is Verdict.UNJUDGEABLE


def test_state_machine_records_every_step():
    m = TraceMachine()
    for state in (
        TraceState.INFERRED,
        TraceState.JUDGED,
        TraceState.PENDING_CLOUD,
        TraceState.TIMED_OUT,
        TraceState.FALLBACK_COMPLETE,
    ):
        m.advance(state, f"to {state.value}", at=1.0)
    assert [t.target for t in m.history][-1] is TraceState.FALLBACK_COMPLETE
    assert m.history[0].source is TraceState.RAW


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ((), TraceState.COMPLETE),  # RAW cannot complete without inference and judgement
        ((TraceState.INFERRED, TraceState.JUDGED, TraceState.COMPLETE), TraceState.PENDING_CLOUD),
        ((TraceState.UNJUDGEABLE,), TraceState.INFERRED),
        ((TraceState.INFERRED, TraceState.JUDGED, TraceState.PENDING_CLOUD), TraceState.FALLBACK_COMPLETE),
    ],
)
def test_illegal_transitions_raise(path, illegal):
    m = TraceMachine()
    for state in path:
        m.advance(state, "", at=0.0)
    with pytest.raises(IllegalTransition):
        m.advance(illegal, "", at=0.0)
    assert m.state is (path[-1] if path else TraceState.RAW)
