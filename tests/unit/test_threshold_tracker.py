"""Holding a target escalation rate on the device's own stream (``judge.target_escalation_rate``)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pydantic import ValidationError

from edge.config import JudgeConfig
from edge.judge import Judge, JudgeInput
from edge.judge.adapt import ThresholdTracker
from protocol.messages import Prediction


def confidences(n: int, seed: int, a: float = 6.0, b: float = 1.5) -> list[float]:
    rng = random.Random(seed)
    return [rng.betavariate(a, b) for _ in range(n)]


def test_the_threshold_settles_on_the_target_share_of_the_stream():
    stream = confidences(20_000, seed=1)
    fixed = 0.9  # on this stream a fixed 0.9 escalates far more than 15%
    assert sum(c < fixed for c in stream) / len(stream) > 0.4
    tracker = ThresholdTracker(fixed, 0.15, (0.0, 1.0), 0.002)
    escalated = []
    for c in stream:
        escalated.append(c < tracker.threshold)
        tracker.observe(c)
    late = escalated[-5000:]
    assert abs(sum(late) / len(late) - 0.15) < 0.02
    assert abs(tracker.threshold - float(np.quantile(stream, 0.15))) < 0.03


def test_it_follows_the_stream_when_the_stream_changes():
    tracker = ThresholdTracker(0.5, 0.2, (0.0, 1.0), 0.002)
    for c in confidences(10_000, seed=2):
        tracker.observe(c)
    before = tracker.threshold
    darker = confidences(10_000, seed=3, a=3.0, b=2.0)  # the light changed: the model is less sure of everything
    escalated = []
    for c in darker:
        escalated.append(c < tracker.threshold)
        tracker.observe(c)
    assert tracker.threshold < before - 0.1
    assert abs(sum(escalated[-4000:]) / 4000 - 0.2) < 0.025


def test_it_never_leaves_its_bounds():
    tracker = ThresholdTracker(0.6, 0.5, (0.55, 0.7), 0.01)
    for c in confidences(3000, seed=4):  # the stream's median is far above 0.7
        tracker.observe(c)
        assert 0.55 <= tracker.threshold <= 0.7
    assert tracker.threshold == 0.7


def test_the_judge_moves_its_confidence_policy_and_reports_the_threshold():
    config = JudgeConfig(confidence_threshold=0.9, target_escalation_rate=0.1, adapt_step=0.01)
    judge = Judge.from_config(config)
    image = np.zeros((8, 8), np.uint8)
    verdicts = []
    for c in confidences(4000, seed=5):
        prediction = Prediction("m", "a", ("a", "b"), (c, 1.0 - c))
        verdicts.append(judge.decide(JudgeInput(prediction, image)).escalate)
    assert abs(sum(verdicts[-2000:]) / 2000 - 0.1) < 0.03
    assert judge.confidence_threshold is not None and judge.confidence_threshold < 0.9  # what the heartbeat sends
    assert Judge.from_config(JudgeConfig(confidence_threshold=0.9)).confidence_threshold == 0.9  # none: fixed


def test_bounds_that_leave_out_the_starting_threshold_are_refused():
    with pytest.raises(ValidationError, match="threshold_bounds"):
        JudgeConfig(confidence_threshold=0.9, target_escalation_rate=0.1, threshold_bounds=(0.2, 0.8))
