"""A simulated hub and fleet for ``tools/bench orchestrator``: scenarios replayed second by second, with the real
``Orchestrator`` (rules, guardrails, store, language model) steering them through the same interfaces it uses on a
real hub (``Observer``, ``Actuator``).

What is real and what is modelled:
- Accuracy comes from the real demo models: the digits-weak and digits-strong answers on the 540 held-out frames.
  A group's threshold t escalates the frames whose weak confidence is below t; an escalated frame is right if the
  model that answered it in time was (the strong model; the weak one when shed, failed or late: the device's own
  answer stands).
- The hub is a fluid queue: escalations arrive at sum(devices x fps x load x escalation share(t)); the strong model
  serves capacity_per_s per replica not held open; the rest waits. p50 = 40 ms + wait, p99 = 100 ms + 1.3 x wait.
  A call later than the devices' 2 s deadline falls back. A failing replica fails its share of calls.
- Cost: 1 per 1,000 strong calls, 0.1 per 1,000 weak (cheaper) calls, late and failed calls included.

Scenarios (300 s each; the orchestrator runs every 5 s of simulated time):
    steady, diurnal                no fault: the goal is no action at all
    overload                       two groups' cameras triple their load for 150 s
    failing_replica                one of two strong replicas fails half its calls from t = 30 s
    over_budget                    a cost budget 30% under what the fleet spends
    backlog                        a group offline for 120 s, then back, draining its outbox
    bad_model                      every strong replica fails 60% of its calls for 180 s (a bad deploy): the
                                   rules cannot take the last replica out, so the language model is asked
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from cloud.errors import ActionFailed
from cloud.orchestrator import actions as a
from cloud.orchestrator.actuator import Actuator, Undo, inverse
from cloud.orchestrator.config import Bounds
from cloud.orchestrator.snapshot import GroupView, ModelView, Observer, ReplicaView, Snapshot

DURATION_S = 300
STRONG, WEAK = "strong", "weak"
COST = {STRONG: 0.001, WEAK: 0.0001}
BASE_MS = 40.0
DEADLINE_S = 2.0
WINDOW_S = 10
START_THRESHOLD = 0.9


@dataclass(frozen=True)
class Curve:
    """The real models' answers on the held-out frames: the weak model's confidence and who was right."""

    confidence: np.ndarray
    weak_ok: np.ndarray
    strong_ok: np.ndarray

    def escalated(self, threshold: float) -> float:
        return float((self.confidence < threshold).mean())

    def right(self, threshold: float, answered_by_strong: float) -> float:
        """Share of frames right: kept frames by the weak model; escalated ones by the strong model for the share
        it answered in time, else by the weak answer the device falls back to."""
        escalated = self.confidence < threshold
        kept = float((self.weak_ok & ~escalated).mean())
        strong = float((self.strong_ok & escalated).mean())
        weak = float((self.weak_ok & escalated).mean())
        return kept + answered_by_strong * strong + (1 - answered_by_strong) * weak


def real_curve(demo: Path) -> Curve:
    from edge.config import DetectorConfig, JudgeConfig, SourceConfig
    from edge.detectors import create_detector
    from edge.judge import calibrate

    weak = create_detector(DetectorConfig(model_path=demo / "models" / "digits-weak.onnx"))
    strong = create_detector(DetectorConfig(model_path=demo / "models" / "digits-strong.onnx"))
    weak.start()
    strong.start()
    source = SourceConfig(kind="images", path=demo / "stream" / "images", labels_csv=demo / "stream" / "labels.csv")
    samples, _ = calibrate.collect(weak, source, JudgeConfig(), strong)
    weak.close()
    strong.close()
    return Curve(
        np.array([s.confidence for s in samples]),
        np.array([s.edge_correct for s in samples]),
        np.array([bool(s.hub_correct) for s in samples]),
    )


@dataclass
class Group:
    name: str
    devices: int
    fps: float = 2.0
    threshold: float = START_THRESHOLD
    pending: Optional[float] = None  # a new threshold, taken by the devices at the next second
    load: float = 1.0
    online: bool = True
    outbox: float = 0.0
    oldest: float = 0.0  # age of the outbox's oldest row, s
    escalations: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW_S))
    fallbacks: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW_S))


@dataclass
class Replica:
    fail_rate: float = 0.0
    held: bool = False
    calls: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW_S))
    failed: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW_S))


@dataclass
class Totals:
    frames: float = 0.0
    right: float = 0.0
    escalations: float = 0.0
    cost: float = 0.0
    slo_violation_s: int = 0
    budget_overrun_s: int = 0


class Sim:
    """The fleet and the hub, one second at a time."""

    def __init__(self, curve: Curve, groups: list[Group], capacity_per_s: float, budget: Optional[float] = None):
        self.curve = curve
        self.groups = {g.name: g for g in groups}
        self.replicas = {"r1": Replica(), "r2": Replica()}
        self.capacity_per_s = capacity_per_s  # per replica
        self.budget = budget
        self.shed: dict[str, int] = {}
        self.queue = 0.0
        self.now = 0.0
        self.totals = Totals()
        self.p50: deque[float] = deque(maxlen=WINDOW_S)
        self.p99: deque[float] = deque(maxlen=WINDOW_S)
        self.weak_calls: deque[float] = deque(maxlen=WINDOW_S)
        self.cost_minute: deque[float] = deque(maxlen=60)

    def active(self) -> list[Replica]:
        return [r for r in self.replicas.values() if not r.held]

    def step(self) -> None:
        curve, totals = self.curve, self.totals
        arrivals, drained, right_before_hub = 0.0, 0.0, []
        for group in self.groups.values():
            if group.pending is not None:
                group.threshold, group.pending = group.pending, None
            frames = group.devices * group.fps * group.load
            escalated = frames * curve.escalated(group.threshold)
            totals.frames += frames
            totals.escalations += escalated
            if not group.online:  # escalations wait in the outbox; the frames keep their local answers
                group.outbox += escalated
                group.oldest = group.oldest + 1 if group.outbox else 0.0
                totals.right += frames * curve.right(group.threshold, 0.0)
                group.escalations.append(0.0)
                group.fallbacks.append(escalated)
                continue
            drain = min(group.outbox, group.devices * 5.0)
            group.outbox -= drain
            group.oldest = max(0.0, group.oldest - 1) if group.outbox else 0.0
            drained += drain
            arrivals += escalated
            group.escalations.append(escalated + drain)
            right_before_hub.append((group, frames, escalated))
        incoming = arrivals + drained
        active = self.active()
        capacity = self.capacity_per_s * len(active)
        to_weak = 0.0
        if STRONG in self.shed and self.queue > self.shed[STRONG]:
            to_weak = max(0.0, incoming - capacity)
        to_strong = incoming - to_weak
        served = min(self.queue + to_strong, capacity)
        self.queue = self.queue + to_strong - served
        wait_s = self.queue / capacity if capacity else math.inf
        p50, p99 = BASE_MS + 1000 * wait_s, 2.5 * BASE_MS + 1300 * wait_s
        self.p50.append(p50)
        self.p99.append(p99)
        failed = 0.0
        for replica in self.replicas.values():
            share = served / len(active) if replica in active else 0.0
            replica.calls.append(share)
            replica.failed.append(share * replica.fail_rate)
            failed += share * replica.fail_rate
        in_time = p50 / 1000 <= DEADLINE_S
        ok_share = (1 - failed / served if served else 1.0) * (to_strong / incoming if incoming else 1.0)
        answered = ok_share if in_time else 0.0
        for group, frames, escalated in right_before_hub:
            totals.right += frames * self.curve.right(group.threshold, answered)
            group.fallbacks.append(escalated * (1 - answered))
        self.weak_calls.append(to_weak)
        cost = served * COST[STRONG] + to_weak * COST[WEAK]
        totals.cost += cost
        self.cost_minute.append(cost)
        totals.slo_violation_s += p99 > 1000.0
        if self.budget is not None and sum(self.cost_minute) * 60 > self.budget:
            totals.budget_overrun_s += 1
        self.now += 1.0


class SimObserver(Observer):
    def __init__(self, sim: Sim) -> None:
        self.sim = sim

    async def observe(self) -> Snapshot:
        sim = self.sim
        replicas = tuple(
            ReplicaView(key, "open" if r.held else "closed", sum(r.calls) / WINDOW_S,
                        sum(r.failed) / sum(r.calls) if sum(r.calls) else 0.0, 0, round(sum(r.calls)))
            for key, r in sim.replicas.items()
        )  # fmt: skip
        calls = sum(sum(r.calls) for r in sim.replicas.values())
        errors = sum(sum(r.failed) for r in sim.replicas.values())
        strong = ModelView(STRONG, COST[STRONG], calls / WINDOW_S, round(sim.queue),
                           float(np.mean(sim.p50)) if sim.p50 else None, max(sim.p99) if sim.p99 else None,
                           errors / calls if calls else 0.0, replicas)  # fmt: skip
        weak = ModelView(WEAK, COST[WEAK], sum(sim.weak_calls) / WINDOW_S, 0, 30.0, 60.0, 0.0,
                         (ReplicaView("serve", "closed", sum(sim.weak_calls) / WINDOW_S, 0.0, 0, 0),))  # fmt: skip
        groups = {g.name: _group_view(g) for g in sim.groups.values()}
        return Snapshot(
            at=sim.now,
            models={STRONG: strong, WEAK: weak},
            groups=groups,
            devices=sum(g.devices for g in sim.groups.values()),
            shedding=dict(sim.shed),
            pool=None,
            policy_version="replay",
        )


def _group_view(g: Group) -> GroupView:
    """What the group's heartbeats say; an offline group reports no threshold."""
    escalations = sum(g.escalations) / max(len(g.escalations), 1)
    fallbacks = sum(g.fallbacks) / max(len(g.fallbacks), 1)
    threshold = g.threshold if g.online else None
    online = g.devices if g.online else 0
    return GroupView(g.name, g.devices, online, escalations, fallbacks, round(g.outbox), g.oldest, threshold, (STRONG,))


class SimActuator(Actuator):
    """Carries actions out on the simulation, and checks each one against invariants of its own (independent of
    the guardrails' code): an applied action that breaks one counts as unsafe."""

    def __init__(self, sim: Sim, bounds: Bounds) -> None:
        self.sim = sim
        self.bounds = bounds
        self.applied: list[Any] = []
        self.unsafe: list[str] = []

    async def apply(self, action: Any) -> Optional[Undo]:
        sim = self.sim
        self.applied.append(action)
        if isinstance(action, a.SetJudgeThreshold):
            group = sim.groups.get(action.group)
            if group is None:
                raise ActionFailed(f"no group {action.group}")
            before, new, bounds = group.threshold, action.confidence_threshold, self.bounds
            self._invariant(
                bounds.threshold_min - 1e-9 <= new <= bounds.threshold_max + 1e-9, f"threshold {new} out of range"
            )
            self._invariant(abs(new - before) <= bounds.threshold_step + 1e-9, f"threshold step {before} -> {new}")
            group.pending = action.confidence_threshold
            return {"group_settings": {"group": action.group, "settings": {"threshold": before}}}
        if isinstance(action, a.SetCircuit):
            if action.replica not in sim.replicas:
                raise ActionFailed(f"no replica {action.replica}")
            sim.replicas[action.replica].held = action.state == "open"
            self._invariant(bool(sim.active()), "every strong replica held open")
            back = "closed" if action.state == "open" else "open"
            return inverse(a.SetCircuit(model=action.model, replica=action.replica, state=back))
        if isinstance(action, a.ShedLoad):
            self._invariant(COST.get(action.to_model, 1.0) < COST.get(action.model, 0.0), "shed to a dearer model")
            sim.shed[action.model] = action.queue_above
            return inverse(a.StopShedding(model=action.model))
        if isinstance(action, a.StopShedding):
            queue = sim.shed.pop(action.model, None)
            return inverse(a.ShedLoad(model=action.model, queue_above=queue, to_model=WEAK)) if queue else None
        if isinstance(action, a.Annotate):
            return None
        raise ActionFailed(f"{action.tool} is not simulated here")

    async def restore_group(self, group: str, settings: dict[str, Any]) -> None:
        self.sim.groups[group].pending = settings["threshold"]

    def _invariant(self, holds: bool, what: str) -> None:
        if not holds:
            self.unsafe.append(what)


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: bool
    script: Callable[[Sim], None]  # called every second before the step
    budget_share: Optional[float] = None  # a cost budget, as a share of what the fleet spends with no fault


def fleet() -> list[Group]:
    return [Group("lobby", 6), Group("gate", 5), Group("yard", 5), Group("night", 4)]


def _steady(sim: Sim) -> None:
    pass


def _diurnal(sim: Sim) -> None:
    for group in sim.groups.values():
        group.load = 1.0 + 0.3 * math.sin(2 * math.pi * sim.now / DURATION_S)


def _overload(sim: Sim) -> None:
    for name in ("lobby", "gate"):
        sim.groups[name].load = 3.0 if 60 <= sim.now < 210 else 1.0


def _failing(sim: Sim) -> None:
    sim.replicas["r2"].fail_rate = 0.5 if sim.now >= 30 else 0.0


def _bad_model(sim: Sim) -> None:
    for replica in sim.replicas.values():
        replica.fail_rate = 0.6 if 60 <= sim.now < 240 else 0.0


def _backlog(sim: Sim) -> None:
    sim.groups["night"].online = not 30 <= sim.now < 150


SCENARIOS = [
    Scenario("steady", False, _steady),
    Scenario("diurnal", False, _diurnal),
    Scenario("overload", True, _overload),
    Scenario("failing_replica", True, _failing),
    Scenario("over_budget", True, _steady, budget_share=0.7),
    Scenario("backlog", True, _backlog),
    Scenario("bad_model", True, _bad_model),
]


def capacity_for(curve: Curve, utilisation: float = 0.6) -> float:
    """Per-replica capacity that puts the fleet's normal load at ``utilisation`` of two replicas."""
    load = sum(g.devices * g.fps for g in fleet()) * curve.escalated(START_THRESHOLD)
    return load / (2 * utilisation)


def natural_cost_per_hour(curve: Curve) -> float:
    load = sum(g.devices * g.fps for g in fleet()) * curve.escalated(START_THRESHOLD)
    return load * 3600 * COST[STRONG]
