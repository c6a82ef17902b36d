"""When actions fire: once per settled answer, again only when a verdict corrects an answer already acted on."""

import json

import pytest

from edge.actions import Actions, Settlement
from edge.config import ActionsConfig, DetectorConfig, EdgeConfig, JudgeConfig, SourceConfig
from edge.judge import TraceMachine, TraceState
from edge.metrics import EdgeMetrics
from edge.outbox import EdgeStore
from edge.sources import Frame
from protocol import EscalationResult, Prediction, ResultStatus, new_trace_id

LABELS = ("cat", "dog")


def pred(label: str, confidence: float) -> Prediction:
    scores = (confidence, 1 - confidence) if label == "cat" else (1 - confidence, confidence)
    return Prediction("m", "1", LABELS, scores)


class Harness:
    def __init__(self, tmp_path, answer: str) -> None:
        self.config = EdgeConfig(
            device_id="cam-1",
            source=SourceConfig(kind="camera"),
            detector=DetectorConfig(model_path="m.onnx"),
            judge=JudgeConfig(answer=answer),
            actions=ActionsConfig(enabled=True),
        )
        self.store = EdgeStore(tmp_path / "edge.db")
        self.store.open()
        self.sent: list[dict] = []
        actions = Actions(self.config.actions, lambda _t, body: self.sent.append(json.loads(body)), EdgeMetrics())
        self.settle = Settlement(self.config, self.store, actions, EdgeMetrics(), lambda: 200.0)

    def frame(self, prediction: Prediction, escalate: bool) -> str:
        trace_id, m = new_trace_id(), TraceMachine()
        for s in (
            TraceState.INFERRED,
            TraceState.JUDGED,
            TraceState.PENDING_CLOUD if escalate else TraceState.COMPLETE,
        ):
            m.advance(s, s.value, 100.0)
        self.store.record_trace(
            trace_id,
            m,
            source_id="cam0",
            frame_index=0,
            truth=None,
            prediction=prediction,
            reasons=(),
            created_at=100.0,
            escalation=b"req" if escalate else None,
            deadline_at=105.0 if escalate else None,
        )
        self.settle.new_trace(trace_id, Frame("cam0", 0, 100.0, None), prediction, m.state, 100.0)
        return trace_id

    def verdict(self, trace_id: str, label: str) -> None:
        final = pred(label, 0.99)
        result = EscalationResult(trace_id, "cam-1", ResultStatus.SUCCESS, (final,), final)
        self.settle.verdict(trace_id, self.store.apply_result(result, 150.0))

    def deadline(self) -> None:
        self.settle.fallback(self.store.expire(1000.0))

    def fired(self) -> list[tuple[str, str, bool]]:
        return [(a["label"], a["decided_by"], a["corrected"]) for a in self.sent]


@pytest.fixture
def after_verdict(tmp_path):
    return Harness(tmp_path, "after_verdict")


def test_confident_answer_fires_once(after_verdict):
    after_verdict.frame(pred("cat", 0.99), escalate=False)
    assert after_verdict.fired() == [("cat", "edge", False)]


def test_escalated_answer_fires_on_the_verdict_only(after_verdict):
    trace_id = after_verdict.frame(pred("cat", 0.6), escalate=True)
    assert after_verdict.fired() == []
    after_verdict.verdict(trace_id, "dog")
    assert after_verdict.fired() == [("dog", "cloud", False)]


def test_fallback_fires_and_a_late_verdict_fires_only_when_it_corrects(after_verdict):
    same, other = after_verdict.frame(pred("cat", 0.6), True), after_verdict.frame(pred("cat", 0.6), True)
    after_verdict.deadline()
    assert after_verdict.fired() == [("cat", "fallback", False)] * 2
    after_verdict.verdict(same, "cat")
    after_verdict.verdict(other, "dog")
    assert after_verdict.fired()[2:] == [("dog", "cloud", True)]


def test_answer_immediately_fires_the_provisional_answer_then_corrections(tmp_path):
    h = Harness(tmp_path, "immediately")
    kept, changed = h.frame(pred("cat", 0.6), True), h.frame(pred("cat", 0.6), True)
    assert h.fired() == [("cat", "edge_provisional", False)] * 2
    h.verdict(kept, "cat")
    h.verdict(changed, "dog")
    assert h.fired()[2:] == [("dog", "cloud", True)]
