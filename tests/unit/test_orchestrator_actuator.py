"""The orchestrator's hands and eyes on the hub's real parts: a ``Router`` over fake replicas (subclasses of the
real backend) and a ``FleetService`` over a real SQLite store. Each action lands where it should, and its undo
puts back what was there."""

from __future__ import annotations

import asyncio
import time

import pytest

from cloud.config import FleetConfig
from cloud.errors import ActionFailed, ModelUnavailable
from cloud.fleet.rollout_store import RolloutStore
from cloud.fleet.rollouts import RolloutService
from cloud.fleet.service import FleetService
from cloud.fleet.store import FleetStore, Scope
from cloud.hub_orchestrator import HubActuator, HubObserver
from cloud.metrics import HubMetrics
from cloud.orchestrator import actions as a
from protocol import fleet as messages
from tests.unit.test_routing import FakeReplica, request, router


class Parts:
    def __init__(self, tmp_path, routes) -> None:
        self.router = router(routes, {m: FakeReplica(m) for m in ("a", "b", "c")})
        self.store = FleetStore(tmp_path / "fleet.db")
        self.store.open()
        self.rollout_store = RolloutStore(tmp_path / "fleet.db")
        self.rollout_store.open()
        self.published: list[str] = []
        metrics = HubMetrics()
        self.fleet = FleetService(self.store, FleetConfig(), lambda d, _p: self.published.append(d), metrics)
        self.rollouts = RolloutService(self.rollout_store, self.fleet, metrics)
        self.actuator = HubActuator(lambda: self.router, self.use, lambda: self.fleet, lambda: self.rollouts, None)
        self.observer = HubObserver(lambda: self.router, lambda: self.fleet, lambda: self.rollouts, None, time.time)

    def use(self, new) -> None:
        self.router = new

    def device(self, device_id: str, group: str, threshold: float) -> None:
        model = {"model_id": "weak", "version": "1", "sha256": "", "backend": "onnxruntime"}
        self.fleet.on_reported(
            messages.Reported(
                device_id=device_id, sent_at=time.time(), group=group, device_class="x86_64/cpu", runtime_version="t",
                model=model,
            )
        )  # fmt: skip
        self.fleet.on_telemetry(
            messages.Telemetry(
                device_id=device_id, sent_at=time.time(), interval_s=5, fps=10, escalations_per_s=2, fallbacks_per_s=0,
                outbox_rows=3, outbox_oldest_age_s=1.5, confidence_histogram=(0,) * 10, cpu_percent=1, memory_mb=1,
                judge_threshold=threshold,
            )
        )  # fmt: skip

    def apply(self, action):
        return asyncio.run(self.actuator.apply(action))


@pytest.fixture
def parts(tmp_path):
    found = Parts(tmp_path, [{"name": "default", "steps": [{"model": "a"}]}])
    yield found
    found.store.close()
    found.rollout_store.close()


def test_a_load_rule_sends_overflow_to_the_cheaper_model_and_its_undo_removes_it(parts):
    undo = parts.apply(a.ShedLoad(model="a", queue_above=2, to_model="b"))
    assert [r.name for r in parts.router.config.routes] == ["shed.default", "default"]
    assert parts.router.plan(request()).route.name == "default"  # nothing in flight: a answers
    for _ in range(3):
        parts.router.balancer.choose("a", ["serve"])  # three calls in flight to a
    assert parts.router.plan(request()).route.name == "shed.default"  # above 2: b takes it
    outcome = asyncio.run(parts.router.run(parts.router.plan(request()), request()))
    assert outcome.ok and [s.step.model for s in outcome.steps] == ["b"]
    parts.apply(a.parse_action(undo["action"]))
    assert [r.name for r in parts.router.config.routes] == ["default"]
    assert parts.router.balancer.in_flight("a") == 3  # one balancer throughout: the measurements stay


def test_weights_move_and_move_back(tmp_path):
    parts = Parts(tmp_path, [{"name": "split", "strategy": "weighted", "steps": [{"model": "a"}, {"model": "b"}]}])
    undo = parts.apply(a.SetRouteWeights(route="split", weights={"a": 3.0, "b": 1.0}))
    assert {s.model: s.weight for s in parts.router.config.routes[0].steps} == {"a": 3.0, "b": 1.0}
    parts.apply(a.parse_action(undo["action"]))
    assert {s.model: s.weight for s in parts.router.config.routes[0].steps} == {"a": 1.0, "b": 1.0}
    with pytest.raises(ActionFailed, match="no weighted route"):
        parts.apply(a.SetRouteWeights(route="nope", weights={"a": 1.0}))


def test_a_held_replica_gets_no_traffic_until_released(parts):
    undo = parts.apply(a.SetCircuit(model="a", replica="serve", state="open"))
    with pytest.raises(ModelUnavailable):
        parts.router.balancer.choose("a", ["serve"])
    parts.apply(a.parse_action(undo["action"]))
    assert parts.router.balancer.choose("a", ["serve"]) == "serve"
    with pytest.raises(ActionFailed, match="no replica"):
        parts.apply(a.SetCircuit(model="a", replica="ghost", state="open"))


def test_a_threshold_goes_into_the_groups_settings_beside_its_other_fields_and_back(parts):
    parts.device("cam-1", "lobby", 0.9)
    parts.fleet.set_settings(
        Scope.GROUP, "lobby", {"judge": {"min_margin": 0.1}, "escalation": {"deadline_ms": 900}}, "op"
    )
    parts.published.clear()
    undo = parts.apply(a.SetJudgeThreshold(group="lobby", confidence_threshold=0.85))
    layer = next(x for x in parts.store.layers() if x.name == "lobby")
    assert layer.settings == {
        "judge": {"min_margin": 0.1, "confidence_threshold": 0.85},
        "escalation": {"deadline_ms": 900},
    }
    assert layer.updated_by == "orchestrator"
    assert parts.published == ["cam-1"]  # the device got a new desired version
    asyncio.run(parts.actuator.restore_group(undo["group_settings"]["group"], undo["group_settings"]["settings"]))
    layer = next(x for x in parts.store.layers() if x.name == "lobby")
    assert layer.settings == {"judge": {"min_margin": 0.1}, "escalation": {"deadline_ms": 900}}


def test_the_pool_without_a_scaler_and_an_unknown_rollout_fail_clearly(parts):
    with pytest.raises(ActionFailed, match="cannot scale"):
        parts.apply(a.SetReplicas(min_replicas=1, max_replicas=2))
    with pytest.raises(ActionFailed, match="rollout"):
        parts.apply(a.RolloutAction(rollout_id="r-404", action="pause"))


def test_the_snapshot_reads_the_fleet_and_the_router(parts):
    parts.device("cam-1", "lobby", 0.9)
    parts.device("cam-2", "lobby", 0.8)
    parts.device("cam-3", "yard", 0.7)
    asyncio.run(parts.router.run(parts.router.plan(request()), request()))
    snap = asyncio.run(parts.observer.observe())
    lobby = snap.groups["lobby"]
    assert (lobby.devices, lobby.escalations_per_s, lobby.outbox_rows, lobby.judge_threshold) == (2, 4.0, 6, 0.85)
    assert lobby.models == ("a",)
    assert snap.devices == 3 and snap.models["a"].replicas[0].calls == 1 and snap.models["a"].p50_ms is not None
    parts.apply(a.SetJudgeThreshold(group="lobby", confidence_threshold=0.75))
    assert asyncio.run(parts.observer.observe()).groups["lobby"].judge_threshold == 0.75  # what was asked, at once
