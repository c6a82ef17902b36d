"""The hub's core without Ray: a real SQLite trace store, a fake model and a fake publisher."""

import asyncio
import contextvars
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format

from cloud import escalations
from cloud.config import CallbackRule, DeliveryConfig
from cloud.dispatch.callbacks import HttpCallbacks
from cloud.dispatch.delivery import Delivery
from cloud.dispatch.mqtt import Publisher
from cloud.errors import InvalidInput, ReplicaUnavailable, RequestTooLarge
from cloud.escalations import EscalationService
from cloud.inputs import InputLimits
from cloud.metrics import HubMetrics
from cloud.routing import ModelAnswer, ModelBackend, Router, single_model_routing
from cloud.traces import TraceStatus, TraceStore
from protocol import (
    AckStatus,
    EncodedImage,
    EscalationRequest,
    EscalationResult,
    Prediction,
    ResultStatus,
    Tensor,
    new_trace_id,
)
from protocol.codec import Encoding, decode_result
from protocol.topics import DeviceTopic
from tests.support.images import png, png_bomb

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
        DeviceTopic.results(device_id)  # as the real dispatcher: a device id no topic can carry raises
        self.published.append((device_id, trace_id, payload))


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_service(store, model, publisher, config=None, clock=None):
    metrics = HubMetrics()
    clock = clock or Clock()
    delivery = Delivery(store, publisher, config or DeliveryConfig(), metrics, clock=clock)
    return EscalationService(store, routed(model), delivery, metrics, clock=clock)


def request(device_id: str = "cam-1") -> EscalationRequest:
    return EscalationRequest(
        new_trace_id(),
        device_id,
        Prediction("weak", "1", LABELS, (0.6, 0.4)),
        EncodedImage("image/png", png(), 8, 8),
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
    service = make_service(store, model, publisher)
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
    service = make_service(store, model, publisher)
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
    service = make_service(store, FakeModel(fail=True), publisher)
    req = request()

    async def go():
        await service.escalate(req)
        await service.drain()

    run(go())
    result = decode_result(publisher.published[0][2])
    assert result.status is ResultStatus.FAILED and "replica died" in result.error
    assert store.get(req.trace_id).status is TraceStatus.FAILED


def test_restart_reruns_unfinished_and_resends_what_was_not_acknowledged(store):
    clock = Clock()
    service = make_service(store, FakeModel(), ListPublisher(), clock=clock)
    unfinished, unacked, acked = request(), request(), request()

    async def before_crash():
        for r in (unacked, acked):
            await service.escalate(r)
        await service.drain()
        assert service.delivery.acknowledged(acked.trace_id, "cam-1", "mqtt")
        # accepted, then the hub died before running it:
        store.insert_if_absent(unfinished.trace_id, "cam-1", unfinished.to_proto().SerializeToString(), 0.0)

    run(before_crash())
    clock.now += 31  # the hub was down past resend_after_s of the first sends
    restarted = ListPublisher()
    again = make_service(store, FakeModel(), restarted, clock=clock)

    async def after_restart():
        rerun = again.recover()
        await again.drain()
        return rerun, again.delivery.resend_due()

    assert run(after_restart()) == (1, 1)
    assert [t for _, t, _ in restarted.published] == [unfinished.trace_id, unacked.trace_id]


def test_an_unacknowledged_result_is_resent_with_backoff_until_max_sends(store):
    clock, publisher = Clock(), ListPublisher()
    config = DeliveryConfig(resend_after_s=10, max_sends=3)
    service = make_service(store, FakeModel(), publisher, config, clock)
    req = request()

    async def go():
        await service.escalate(req)
        await service.drain()

    run(go())
    resent = []
    for step in (9, 1, 19, 1, 39, 1, 100):  # due after 10 s, then 20 s, then out of sends 40 s later
        clock.now += step
        resent.append(service.delivery.resend_due())
    assert resent == [0, 1, 0, 1, 0, 0, 0]
    assert len(publisher.published) == 3
    trace = store.get(req.trace_id)
    assert (trace.sends, trace.acked_at, trace.next_send_at) == (3, None, None)
    assert [t.trace_id for t in store.query(acked=False)] == [req.trace_id]
    assert service.metrics.given_up._value.get() == 1


def test_a_request_is_stored_as_it_arrived_and_a_restart_reads_it(store):
    """The bytes the transport received are what the store keeps (JSON here): parsed once, never re-encoded."""
    req = request()
    wire = json_format.MessageToJson(req.to_proto()).encode()
    service = make_service(store, FakeModel(), ListPublisher())

    async def accept():
        await service.escalate(req, wire)
        return store.claim_unfinished(time.time())  # before the run: nothing has awaited since

    assert run(accept()) == [(req.trace_id, wire)]
    restarted = make_service(store, FakeModel(), ListPublisher())

    async def recover():
        assert restarted.recover() == 1
        await restarted.drain()

    run(recover())
    assert store.get(req.trace_id).status is TraceStatus.SUCCESS


@pytest.mark.parametrize("encoding", list(Encoding))
def test_every_send_publishes_the_result_bytes_as_stored(store, encoding):
    """Encoded once, in the hub's result encoding, when the result is stored; resends publish those bytes."""
    clock, publisher = Clock(), ListPublisher()
    metrics = HubMetrics()
    delivery = Delivery(store, publisher, DeliveryConfig(resend_after_s=10), metrics, encoding, clock=clock)
    service = EscalationService(store, routed(FakeModel()), delivery, metrics, clock=clock)
    req = request()

    async def go():
        await service.escalate(req)
        await service.drain()

    run(go())
    clock.now += 10
    assert delivery.resend_due() == 1
    assert delivery.device_online("cam-1") == 1
    stored = store.get(req.trace_id).result
    assert [payload for _, _, payload in publisher.published] == [stored, stored, stored]
    assert stored.startswith(b"{") is (encoding is Encoding.JSON)
    assert decode_result(stored).final.label == "1"


def test_an_acknowledged_result_is_not_resent_and_a_stranger_cannot_acknowledge_it(store):
    clock, publisher = Clock(), ListPublisher()
    service = make_service(store, FakeModel(), publisher, clock=clock)
    req = request()

    async def go():
        await service.escalate(req)
        await service.drain()

    run(go())
    assert not service.delivery.acknowledged(req.trace_id, "cam-2", "mqtt")  # not cam-2's result
    assert service.delivery.acknowledged(req.trace_id, "cam-1", "mqtt")
    assert not service.delivery.acknowledged(req.trace_id, "cam-1", "mqtt")  # a repeat changes nothing
    clock.now += 3600
    assert service.delivery.resend_due() == 0 and len(publisher.published) == 1
    assert store.get(req.trace_id).acked_at == clock.now - 3600
    assert store.query(acked=False) == []


def test_escalate_and_wait_answers_with_the_result_instead_of_publishing_it(store):
    model, publisher = FakeModel(), ListPublisher()
    service = make_service(store, model, publisher)
    req = request()

    async def go():
        first = await service.escalate_and_wait(req)
        again = await service.escalate_and_wait(req)  # a retry after a lost response: the stored result
        await service.drain()
        return first, again

    first, again = run(go())
    assert first.final.label == "1" and again == first
    assert model.calls == 1 and publisher.published == []
    assert store.get(req.trace_id).acked_at is not None


def test_a_caller_that_stops_waiting_gets_its_result_on_mqtt(store):
    class Slow(FakeModel):
        async def predict(self, request, previous):
            await asyncio.sleep(0.2)
            return await super().predict(request, previous)

    publisher = ListPublisher()
    service = make_service(store, Slow(), publisher)
    req = request()

    async def go():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(service.escalate_and_wait(req), 0.05)
        await service.drain()

    run(go())
    ((_, trace_id, payload),) = publisher.published
    assert trace_id == req.trace_id and decode_result(payload).final.label == "1"
    assert store.get(req.trace_id).acked_at is None  # the device's ResultAck has not come yet


def test_results_for_callback_devices_are_posted_and_a_2xx_acknowledges_them(store):
    bodies, replies = [], [500, 200]

    def endpoint(http_request: httpx.Request) -> httpx.Response:
        bodies.append((http_request.headers["content-type"], http_request.read()))
        return httpx.Response(replies.pop(0))

    clock, publisher = Clock(), ListPublisher()
    rules = [CallbackRule(devices="kiosk-*", url="http://vms.example/results")]
    config = DeliveryConfig(resend_after_s=5, callbacks=rules)
    metrics = HubMetrics()
    callbacks = HttpCallbacks(
        rules, lambda t, d: delivery.acknowledged(t, d, "callback"), metrics, httpx.MockTransport(endpoint)
    )
    delivery = Delivery(store, publisher, config, metrics, callbacks=callbacks, clock=clock)
    service = EscalationService(store, routed(FakeModel()), delivery, metrics, clock=clock)
    kiosk, camera = request("kiosk-7"), request("cam-1")

    async def go():
        for r in (kiosk, camera):
            await service.escalate(r)
        await service.drain()
        await callbacks.drain()
        first = store.get(kiosk.trace_id).acked_at  # the endpoint answered 500
        clock.now += 5
        resent = delivery.resend_due()
        await callbacks.drain()
        return first, resent

    first, resent = run(go())
    assert first is None and resent == 2  # the kiosk's result again, and the camera's (no ResultAck yet)
    assert [t for _, t, _ in publisher.published] == [camera.trace_id, camera.trace_id]  # MQTT only for the camera
    assert [decode_result(body).trace_id for _, body in bodies] == [kiosk.trace_id, kiosk.trace_id]
    assert bodies[0][0] == "application/json"
    assert store.get(kiosk.trace_id).acked_at == clock.now
    assert metrics.delivery_errors.labels(channel="callback", reason="http_500")._value.get() == 1


def test_pruning_keeps_what_is_still_being_sent(store):
    clock, publisher = Clock(), ListPublisher()
    service = make_service(store, FakeModel(), publisher, DeliveryConfig(resend_after_s=10, max_sends=1), clock)
    acked, out_of_sends, resending = request(), request(), request()

    async def go():
        for r in (acked, out_of_sends, resending):
            await service.escalate(r)
        await service.drain()

    run(go())
    service.delivery.acknowledged(acked.trace_id, "cam-1", "mqtt")
    clock.now += 10
    service.delivery.resend_due()  # max_sends=1: both unacknowledged ones are out of sends now
    store.mark_sent(resending.trace_id, clock.now + 10)  # as if this one still had sends left
    assert store.prune(clock.now + 1) == 2
    assert [t.trace_id for t in store.query()] == [resending.trace_id]
    assert store.prune(clock.now - 3600) == 0  # nothing finished that long ago


def with_input(data) -> EscalationRequest:
    local = Prediction("weak", "1", LABELS, (0.6, 0.4))
    return EscalationRequest(new_trace_id(), "cam-1", local, data, deadline_ms=1000)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (EncodedImage("image/png", b"", 0, 0), "empty image"),
        (EncodedImage("image/png", b"\x89PNG\r\n\x1a\n\x00garbage", 8, 8), "not a decodable image"),
        (EncodedImage("image/png", png_bomb(30000, 30000), 30000, 30000), "30000x30000 pixels is larger than"),
        (Tensor("float32", (1, 1, 8, 8), bytes(10)), "needs 256 bytes, not 10"),
        (Tensor("object", (2,), bytes(16)), "dtype 'object' is not one of"),
        (EncodedImage("image/png", png() + bytes(2 << 20), 8, 8), "larger than the hub's limit of 1048576 bytes"),
    ],
)
def test_an_input_the_hub_refuses_is_never_recorded_or_run(store, data, error):
    """A request's own fault is refused at the door: nothing stored, no model run, so no replica can be blamed."""
    model = FakeModel()
    service = make_service(store, model, ListPublisher())
    service.limits = InputLimits(max_request_bytes=1 << 20)
    req = with_input(data)

    async def go():
        await service.escalate(req)

    with pytest.raises(InvalidInput, match=error) as refused:
        run(go())
    assert isinstance(refused.value, RequestTooLarge) == ("hub's limit" in error)
    assert store.get(req.trace_id) is None and model.calls == 0
    assert service.metrics.escalations.labels(ack="rejected")._value.get() == 1


def test_a_device_that_asks_again_for_an_unacknowledged_result_gets_it_now(store):
    """An escalation repeated after its result went out (lost on the way) is a request for the result."""
    clock, publisher = Clock(), ListPublisher()
    service = make_service(store, FakeModel(), publisher, clock=clock)
    req = request()

    async def go():
        await service.escalate(req)
        await service.drain()
        clock.now += 1  # well before resend_after_s
        return await service.escalate(req)

    assert run(go()).status is AckStatus.DUPLICATE
    assert service.delivery.resend_due() == 1 and len(publisher.published) == 2
    assert service.delivery.acknowledged(req.trace_id, "cam-1", "mqtt")
    run(service.escalate(req))  # acknowledged now: a repeat sends nothing more
    assert service.delivery.resend_due() == 0 and len(publisher.published) == 2


def test_a_device_back_online_gets_every_result_it_has_not_acknowledged(store):
    clock, publisher = Clock(), ListPublisher()
    service = make_service(store, FakeModel(), publisher, DeliveryConfig(resend_after_s=10, max_sends=2), clock)
    out_of_sends, acked, other_device = request(), request(), request("cam-2")

    async def go():
        for r in (out_of_sends, acked, other_device):
            await service.escalate(r)
        await service.drain()

    run(go())
    service.delivery.acknowledged(acked.trace_id, "cam-1", "mqtt")
    for _ in range(3):
        clock.now += 100
        service.delivery.resend_due()
    assert store.get(out_of_sends.trace_id).next_send_at is None  # it had given up
    publisher.published.clear()
    assert service.delivery.device_online("cam-1") == 1
    assert [t for _, t, _ in publisher.published] == [out_of_sends.trace_id]
    assert store.get(out_of_sends.trace_id).sends == 3  # the send is counted like any other


class AckingPublisher(ListPublisher):
    """A device so quick that its ack arrives before publish() returns."""

    def __init__(self):
        super().__init__()
        self.delivery: Delivery | None = None

    def publish(self, device_id, trace_id, payload):
        super().publish(device_id, trace_id, payload)
        self.delivery.acknowledged(trace_id, device_id, "mqtt")


def test_a_send_is_counted_even_when_the_ack_beats_its_bookkeeping(store):
    publisher = AckingPublisher()
    service = make_service(store, FakeModel(), publisher)
    publisher.delivery = service.delivery
    req = request()

    async def go():
        await service.escalate(req)
        await service.drain()

    run(go())
    trace = store.get(req.trace_id)
    assert trace.sends == 1 and trace.acked_at is not None and trace.next_send_at is None
    assert trace.delivered_at is not None and trace.delivered_at <= trace.acked_at


def test_one_result_that_cannot_be_sent_does_not_block_the_others(store):
    """A row stored before device ids were checked at the door, with an id no topic can carry."""
    clock, publisher = Clock(), ListPublisher()
    service = make_service(store, FakeModel(), publisher, clock=clock)
    good = request()
    bad_id = "cam/+/#"
    bad = EscalationResult(new_trace_id(), "cam-1", ResultStatus.FAILED, error="x").to_proto()
    bad.device_id = bad_id
    store.insert_if_absent(bad.trace_id, bad_id, b"", clock.now - 5)
    store.set_finished(bad.trace_id, TraceStatus.FAILED, bad.SerializeToString(), "x", clock.now - 5)

    async def go():
        await service.escalate(good)
        await service.drain()

    run(go())
    clock.now += 100
    for _ in range(3):
        service.delivery.resend_due()
    assert {t for _, t, _ in publisher.published} == {good.trace_id}
    assert store.get(bad.trace_id).next_send_at is None  # set aside, for operators (GET /v1/traces?acked=false)
    errors = service.metrics.delivery_errors.labels(channel="any", reason="InvalidTopic")._value.get()
    assert errors == 1


class RacedStore(TraceStore):
    """Two replicas on one store: the other replica's resend loop runs just after this one stores a result and
    before it sends it (seen in the two-replica test: one result sent twice)."""

    other_delivery: Delivery | None = None

    def set_finished(self, *args, **kwargs):
        super().set_finished(*args, **kwargs)
        assert self.other_delivery is not None
        self.other_delivery.resend_due()


def test_a_result_is_sent_once_when_another_replicas_resend_loop_runs_between_storing_and_sending(tmp_path):
    store = RacedStore(tmp_path / "hub.db")
    store.open()
    clock, mine, theirs = Clock(), ListPublisher(), ListPublisher()
    service = make_service(store, FakeModel(), mine, clock=clock)
    store.other_delivery = Delivery(store, theirs, DeliveryConfig(), HubMetrics(), clock=clock)
    req = request()

    async def go():
        await service.escalate(req)
        await service.drain()

    try:
        run(go())
        assert [t for _, t, _ in mine.published] == [req.trace_id]
        assert theirs.published == []  # held for the replica that stored it
        assert store.get(req.trace_id).sends == 1
    finally:
        store.close()


class BrokenChannelPublisher(ListPublisher):
    """A channel that raises for one device (say, a callback rule whose URL no longer parses)."""

    def publish(self, device_id, trace_id, payload):
        if device_id == "cam-broken":
            raise RuntimeError("this channel cannot carry it")
        super().publish(device_id, trace_id, payload)


def test_a_send_that_raises_is_set_aside_and_the_round_goes_on(store):
    clock, publisher = Clock(), BrokenChannelPublisher()
    service = make_service(store, FakeModel(), publisher, clock=clock)
    broken, fine = request("cam-broken"), request()

    async def go():
        for r in (broken, fine):
            await service.escalate(r)
        await service.drain()

    run(go())  # the first sends: the broken one raised inside the service, which went on
    clock.now += 100
    service.delivery.resend_due()
    assert [t for _, t, _ in publisher.published] == [fine.trace_id, fine.trace_id]
    assert store.get(broken.trace_id).next_send_at is None
    assert service.metrics.delivery_errors.labels(channel="any", reason="RuntimeError")._value.get() == 1


class DyingModel(FakeModel):
    """The first call is cancelled under the run (as Ray Serve cancels a gRPC request's model calls when its client
    goes away); later calls answer."""

    async def predict(self, request, previous):
        self.calls += 1
        if self.calls == 1:
            raise asyncio.CancelledError
        return ModelAnswer(Prediction("strong", "1", LABELS, (0.1, 0.9)))


def test_an_accepted_trace_whose_run_died_is_run_again(store):
    clock, publisher = Clock(), ListPublisher()
    model = DyingModel()
    service = make_service(store, model, publisher, clock=clock)
    req = request()

    async def go():
        await service.escalate(req)
        await service.drain()
        assert store.get(req.trace_id).status is TraceStatus.RUNNING  # the run died half-way
        rerun = service.recover()  # this replica's own trace, and no run of it in progress
        await service.drain()
        return rerun

    assert run(go()) == 1
    trace = store.get(req.trace_id)
    assert trace.status is TraceStatus.SUCCESS and trace.runs == 2 and len(publisher.published) == 1
    assert service.metrics.reruns._value.get() == 1


def test_a_run_does_not_see_the_context_of_the_call_that_brought_it(store):
    """Ray Serve ties model calls made in a request's context to that request, and cancels them when its client
    goes away; a trace's run must not be tied to the call that delivered it."""
    request_context: contextvars.ContextVar[str] = contextvars.ContextVar("request_context", default="none")
    seen = []

    class Looking(FakeModel):
        async def predict(self, request, previous):
            seen.append(request_context.get())
            return await super().predict(request, previous)

    service = make_service(store, Looking(), ListPublisher())

    async def go():
        request_context.set("the gRPC call")
        await service.escalate(request())
        await service.drain()

    run(go())
    assert seen == ["none"]


class LosingReplicas(FakeModel):
    """The first ``lost`` calls find their replica dead (a node lost); later ones answer."""

    def __init__(self, lost: int):
        super().__init__()
        self.lost = lost

    async def predict(self, request, previous):
        self.calls += 1
        if self.calls <= self.lost:
            raise ReplicaUnavailable("replica unavailable (ActorUnavailableError)")
        return ModelAnswer(Prediction("strong", "1", LABELS, (0.1, 0.9)))


@pytest.mark.parametrize(("lost", "status"), [(2, TraceStatus.SUCCESS), (3, TraceStatus.FAILED)])
def test_a_trace_whose_replica_died_under_it_runs_again(store, monkeypatch, lost, status):
    """Not the input's fault: the service runs it again (up to three runs in all) instead of failing it, and the
    dead replica is no strike against the model's circuit (Serve routes around it)."""
    monkeypatch.setattr(escalations, "RERUN_AFTER_S", 0.01)
    model = LosingReplicas(lost)
    service = make_service(store, model, ListPublisher())
    req = request()

    async def go():
        await service.escalate(req)
        await service.drain()

    run(go())
    trace = store.get(req.trace_id)
    assert trace.status is status and trace.runs == 1  # one accepted run; the model was asked again within it
    assert model.calls == min(lost + 1, escalations.RUNS_FOR_LOST_REPLICAS)
    assert service.metrics.replica_reruns._value.get() == min(lost, escalations.RUNS_FOR_LOST_REPLICAS - 1)
    assert all(state.value == "closed" for state in service.router.circuits("strong").values())


def test_a_frame_the_cloud_labels_otherwise_is_kept_as_a_hard_example(store):
    service = make_service(store, FakeModel(), ListPublisher())  # the cloud says "1"
    disagreed = request()  # the device said "0"
    agreed = replace(request(), local_prediction=Prediction("weak", "1", LABELS, (0.3, 0.7)))

    async def go():
        await service.escalate(disagreed)
        await service.escalate(agreed)
        await service.drain()

    run(go())
    (example,) = store.hard_examples()
    assert (example.trace_id, example.edge_label, example.cloud_label) == (disagreed.trace_id, "0", "1")
    assert store.request_of(disagreed.trace_id) is not None  # its image, for the labelling page and the export
    assert service.metrics.hard_examples._value.get() == 1
