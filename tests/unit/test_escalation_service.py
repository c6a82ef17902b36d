"""The hub's core without Ray: a real SQLite trace store, a fake model and a fake publisher."""

import asyncio
from pathlib import Path

import pytest

from cloud.dispatch.mqtt import Publisher
from cloud.escalations import EscalationService
from cloud.routing import ModelAnswer, ModelBackend, Router, single_model_routing
from cloud.traces import TraceStatus, TraceStore
from protocol import AckStatus, EncodedImage, EscalationRequest, Prediction, ResultStatus, new_trace_id
from protocol.codec import decode_result

LABELS = ("0", "1")


class FakeModel(ModelBackend):
    def __init__(self, fail: bool = False):
        self.fail = fail
        self.calls = 0

    async def predict(self, request, previous):
        self.calls += 1
        if self.fail:
            raise RuntimeError("replica died")
        return ModelAnswer(Prediction("strong", "1", LABELS, (0.1, 0.9)))


def routed(model: ModelBackend) -> Router:
    """The default rules (every escalation to one model) with the fake as the model's one replica."""
    return Router(single_model_routing(Path("strong.onnx")), {"strong": {"serve": model}})


class ListPublisher(Publisher):
    def __init__(self):
        self.published: list[tuple[str, str, bytes]] = []

    def publish(self, device_id, trace_id, payload):
        self.published.append((device_id, trace_id, payload))


def request() -> EscalationRequest:
    return EscalationRequest(
        new_trace_id(),
        "cam-1",
        Prediction("weak", "1", LABELS, (0.6, 0.4)),
        EncodedImage("image/png", b"x", 1, 1),
        deadline_ms=1000,
    )


@pytest.fixture
def store(tmp_path):
    s = TraceStore(tmp_path / "hub.db")
    s.open()
    yield s
    s.close()


def run(coro):
    return asyncio.run(coro)


def test_accepts_processes_and_publishes(store):
    model, publisher = FakeModel(), ListPublisher()
    service = EscalationService(store, routed(model), publisher)
    req = request()

    async def go():
        ack = await service.escalate(req)
        await service.drain()
        return ack

    assert run(go()).status is AckStatus.ACCEPTED
    ((device, trace_id, payload),) = publisher.published
    result = decode_result(payload)
    assert (device, trace_id, result.status, result.final.label) == ("cam-1", req.trace_id, ResultStatus.SUCCESS, "1")
    assert [t.hop for t in result.timings] == ["queue", "model:strong@serve"]
    assert store.get(req.trace_id).status is TraceStatus.SUCCESS


def test_duplicate_escalation_runs_the_model_once(store):
    model, publisher = FakeModel(), ListPublisher()
    service = EscalationService(store, routed(model), publisher)
    req = request()

    async def go():
        first = await service.escalate(req)
        second = await service.escalate(req)
        await service.drain()
        return first, second

    first, second = run(go())
    assert (first.status, second.status) == (AckStatus.ACCEPTED, AckStatus.DUPLICATE)
    assert model.calls == 1 and len(publisher.published) == 1


def test_model_failure_becomes_a_failed_result_for_the_device(store):
    publisher = ListPublisher()
    service = EscalationService(store, routed(FakeModel(fail=True)), publisher)
    req = request()

    async def go():
        await service.escalate(req)
        await service.drain()

    run(go())
    result = decode_result(publisher.published[0][2])
    assert result.status is ResultStatus.FAILED and "replica died" in result.error
    assert store.get(req.trace_id).status is TraceStatus.FAILED


def test_restart_reruns_unfinished_and_resends_undelivered(store):
    publisher = ListPublisher()
    service = EscalationService(store, routed(FakeModel()), publisher)
    unfinished, undelivered, delivered = request(), request(), request()

    async def before_crash():
        for r in (undelivered, delivered):
            await service.escalate(r)
        await service.drain()
        service.mark_delivered(delivered.trace_id)
        # accepted, then the hub died before running it:
        store.insert_if_absent(unfinished.trace_id, "cam-1", unfinished.to_proto().SerializeToString(), 0.0)

    run(before_crash())
    restarted = ListPublisher()
    again = EscalationService(store, routed(FakeModel()), restarted)

    async def after_restart():
        counts = again.recover()
        await again.drain()
        return counts

    assert run(after_restart()) == (1, 1)
    assert {t for _, t, _ in restarted.published} == {unfinished.trace_id, undelivered.trace_id}
