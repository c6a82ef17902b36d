import math

import pytest

from edge.config import JudgeConfig
from edge.judge import IllegalTransition, Judge, TraceMachine, TraceState, Verdict
from protocol import Prediction


def prediction(confidence: float) -> Prediction:
    rest = (1.0 - confidence) / 2
    return Prediction("m", "1", ("cat", "dog", "owl"), (confidence, rest, rest))


@pytest.fixture
def judge() -> Judge:
    return Judge.from_config(JudgeConfig(confidence_threshold=0.8))


def test_confident_answer_is_kept(judge):
    decision = judge.decide(prediction(0.95))
    assert decision.verdict is Verdict.KEEP and not decision.escalate


def test_uncertain_answer_is_escalated_with_its_reason(judge):
    decision = judge.decide(prediction(0.6))
    assert decision.escalate
    assert decision.reasons == ("confidence: confidence 0.600 < 0.800",)


def test_threshold_is_inclusive(judge):
    assert not judge.decide(prediction(0.8)).escalate


def test_nan_scores_are_unjudgeable_never_confident(judge):
    bad = Prediction("m", "1", ("cat", "dog"), (math.nan, 0.99))
    decision = judge.decide(bad)
    assert decision.verdict is Verdict.UNJUDGEABLE
    assert "not finite" in decision.reasons[0]


def test_state_machine_records_every_step():
    m = TraceMachine()
    for state in (TraceState.INFERRED, TraceState.JUDGED, TraceState.PENDING_CLOUD, TraceState.TIMED_OUT,
                  TraceState.FALLBACK_COMPLETE):
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
