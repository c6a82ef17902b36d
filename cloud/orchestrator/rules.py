"""The deterministic controller: the common cases, and the fallback whenever the language model is slow, down or
wrong. It proposes; the guardrails still check every proposal.

For each watched model (``orchestrator.watch``), utilisation = calls/s over capacity (capacity_per_s x running
replicas):

    overloaded (utilisation > utilisation_high, or p99 above the SLO)
        -> shed the overflow to its cheaper model       when above shed_utilisation or the SLO, or a group
                                                        drains a backlog
        -> one more replica                             when the pool can scale and is at its max
        -> the judge threshold of each group escalating to it one step down, busiest group first, within the
           fleet share; not a group draining a backlog (its outbox holds escalations a threshold cannot shed)
    quiet (utilisation < utilisation_low, p99 within the SLO, and the cost budget allows)
        -> thresholds the rules lowered one step back up, to where they were; shedding stops
    over the cost budget
        -> thresholds one step down, as for overload
    a replica failing replica_error_rate of its calls while another replica of its model is healthy
        -> its circuit held open; released for a probe after replica_hold_s (when every replica fails, the fault
           is the model's: no rule covers it, and the language model is asked)

Between ``utilisation_low`` and ``utilisation_high`` nothing moves (hysteresis), and a target acted on in the
last ``cooldown_s`` is left alone while the measurements catch up: in a healthy system the rules do nothing.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from cloud.orchestrator import actions as a
from cloud.orchestrator.config import OrchestratorConfig, Watched
from cloud.orchestrator.snapshot import GroupView, ModelView, ReplicaView, Snapshot

EPSILON = 1e-9


@dataclass(frozen=True)
class Proposal:
    """A candidate action, why, and who proposed it (rules, llm, or an operator's intent)."""

    action: Any
    reason: str
    source: str = "rules"


@dataclass(frozen=True)
class Anomaly:
    """Something wrong that no rule acted on: a question for the language model."""

    key: str  # what is wrong, without numbers: the decision cache's view of the question
    text: str


@dataclass
class _Round:
    """The groups one round moves, and their devices (the fleet-share bound holds for the round)."""

    groups: set[str] = field(default_factory=set)
    devices: int = 0

    def take(self, group: GroupView, fleet: int, share: float) -> bool:
        """Count the group in, if the round's devices stay within the share of the fleet."""
        if group.name in self.groups or self.devices + group.devices > share * max(fleet, 1) + EPSILON:
            return False
        self.groups.add(group.name)
        self.devices += group.devices
        return True


@dataclass(frozen=True)
class Load:
    """A watched model's state, as the rules judge it."""

    watched: Watched
    model: ModelView
    capacity_per_s: float
    utilisation: float
    slo_breached: bool

    def over(self, utilisation_high: float) -> bool:
        return self.utilisation > utilisation_high or self.slo_breached

    def describe(self) -> str:
        p99 = f"{self.model.p99_ms:.0f}" if self.model.p99_ms is not None else "-"
        return (
            f"{self.model.name} at {self.utilisation:.0%} of {self.capacity_per_s:.1f} calls/s, p99 {p99} ms "
            f"(SLO {self.watched.p99_slo_ms:.0f})"
        )


class Rules:
    def __init__(self, config: OrchestratorConfig, memory: MutableMapping[str, Any]) -> None:
        """``memory``: what the rules must remember between ticks (and restarts): the thresholds they lowered
        (``baseline:GROUP``) and the replicas they hold open (``held:MODEL/KEY``, since when)."""
        self.config = config
        self.memory = memory

    def load(self, watched: Watched, snapshot: Snapshot) -> Load | None:
        model = snapshot.models.get(watched.model)
        if model is None:
            return None
        running = snapshot.pool.running if snapshot.pool else sum(1 for r in model.replicas if r.state != "open")
        capacity = watched.capacity_per_s * max(running, 1)
        breached = model.p99_ms is not None and model.p99_ms > watched.p99_slo_ms
        return Load(watched, model, capacity, model.calls_per_s / capacity, breached)

    def decide(self, snapshot: Snapshot, budget_per_hour: float | None) -> list[Proposal]:
        proposals: list[Proposal] = []
        over_budget = budget_per_hour is not None and snapshot.cost_per_hour > budget_per_hour
        roomy_budget = budget_per_hour is None or snapshot.cost_per_hour < 0.8 * budget_per_hour
        moved = _Round()
        for watched in self.config.watch:
            load = self.load(watched, snapshot)
            if load is None:
                continue
            groups = [g for g in snapshot.groups.values() if not g.models or watched.model in g.models]
            if load.over(self.config.utilisation_high):
                proposals += self._overloaded(load, snapshot, groups, moved)
            elif load.utilisation < self.config.utilisation_low and roomy_budget:
                proposals += self._quiet(load, snapshot, groups, moved)
        if over_budget:
            why = f"cost {snapshot.cost_per_hour:.2f}/h is over the budget {budget_per_hour:.2f}/h"
            proposals += self._lower(snapshot, list(snapshot.groups.values()), why, moved)
        proposals += self._replicas(snapshot)
        return proposals

    def uncovered(self, snapshot: Snapshot, proposals: list[Proposal]) -> list[Anomaly]:
        """What is wrong that these proposals (the rules', this round) do nothing about."""
        acted = {p.action.target() for p in proposals}
        found = []
        for watched in self.config.watch:
            load = self.load(watched, snapshot)
            if load is not None and load.over(self.config.utilisation_high) and not proposals:
                text = f"overloaded, every rule at its bound: {load.describe()}"
                found.append(Anomaly(f"stuck:{watched.model}", text))
        for model in snapshot.models.values():
            failing = [r for r in model.replicas if self._failing(r)]
            if failing and not any(t.startswith(f"replica:{model.name}/") for t in acted):
                text = f"{model.name} fails {model.error_rate:.0%} of its calls and has no healthy replica to use"
                found.append(Anomaly(f"failing:{model.name}", text))
        budget = snapshot.cost_budget_per_hour
        if budget is not None and snapshot.cost_per_hour > budget and not any(t.startswith("group:") for t in acted):
            text = f"cost {snapshot.cost_per_hour:.2f}/h is over the budget {budget:.2f}/h and no threshold can move"
            found.append(Anomaly("budget", text))
        return found

    def applied(self, action: Any, snapshot: Snapshot) -> None:
        """An action took effect (whoever proposed it): remember what the rules must undo later."""
        if isinstance(action, a.SetJudgeThreshold):
            group = snapshot.groups.get(action.group)
            before = group.judge_threshold if group else None
            if before is not None and action.confidence_threshold < before:
                self.memory.setdefault(f"baseline:{action.group}", before)
        elif isinstance(action, a.SetCircuit):
            key = f"held:{action.model}/{action.replica}"
            if action.state == "open":
                self.memory[key] = snapshot.at
            else:
                self.memory.pop(key, None)

    # -- overload and recovery --------------------------------------------------------------------------------

    def _overloaded(self, load: Load, snap: Snapshot, groups: list[GroupView], moved: _Round) -> list[Proposal]:
        found: list[Proposal] = []
        watched, why = load.watched, f"overloaded: {load.describe()}"
        backlog = [g for g in groups if g.outbox_rows > self.config.backlog_rows]
        shed = load.utilisation > self.config.shed_utilisation or load.slo_breached or bool(backlog)
        if watched.cheaper and watched.model not in snap.shedding and shed and watched.cheaper in snap.models:
            queue = max(self.config.bounds.queue_above_min, math.ceil(load.capacity_per_s * watched.p99_slo_ms / 1000))
            found.append(Proposal(a.ShedLoad(model=watched.model, queue_above=queue, to_model=watched.cheaper), why))
        pool = snap.pool
        if (
            pool is not None
            and pool.running >= pool.max_replicas
            and pool.max_replicas < self.config.bounds.replicas_max
        ):
            found.append(
                Proposal(a.SetReplicas(min_replicas=pool.min_replicas, max_replicas=pool.max_replicas + 1), why)
            )
        steady = [g for g in groups if g.outbox_rows <= self.config.backlog_rows]
        return found + self._lower(snap, steady, why, moved)

    def _lower(self, snap: Snapshot, groups: list[GroupView], why: str, moved: _Round) -> list[Proposal]:
        """Each escalating group's threshold one step down, busiest first, within the fleet share (for the whole
        round: overload and cost together)."""
        bounds, found = self.config.bounds, []
        for group in sorted(groups, key=lambda g: -g.escalations_per_s):
            current = group.judge_threshold
            if current is None or group.escalations_per_s <= 0 or group.name in moved.groups:
                continue
            new = round(max(bounds.threshold_min, current - bounds.threshold_step), 4)
            if new >= current - EPSILON:
                continue  # at the bound already
            if not moved.take(group, snap.devices, bounds.max_fleet_share):
                continue
            found.append(Proposal(a.SetJudgeThreshold(group=group.name, confidence_threshold=new), why))
        return found

    def _quiet(self, load: Load, snap: Snapshot, groups: list[GroupView], moved: _Round) -> list[Proposal]:
        found: list[Proposal] = []
        why = f"load is back down: {load.describe()}"
        if load.watched.model in snap.shedding:
            found.append(Proposal(a.StopShedding(model=load.watched.model), why))
        step = self.config.bounds.threshold_step
        for group in groups:
            baseline = self.memory.get(f"baseline:{group.name}")
            current = group.judge_threshold
            if baseline is None or current is None:
                continue
            if current >= baseline - EPSILON:
                del self.memory[f"baseline:{group.name}"]  # back where it was: nothing of ours to undo
                continue
            if not moved.take(group, snap.devices, self.config.bounds.max_fleet_share):
                continue
            new = round(min(baseline, current + step), 4)
            found.append(Proposal(a.SetJudgeThreshold(group=group.name, confidence_threshold=new), why))
        return found

    # -- failing replicas -------------------------------------------------------------------------------------

    def _replicas(self, snap: Snapshot) -> list[Proposal]:
        found: list[Proposal] = []
        for model in snap.models.values():
            closed = [r for r in model.replicas if r.state == "closed"]
            for replica in model.replicas:
                key = f"held:{model.name}/{replica.key}"
                if key in self.memory:
                    if snap.at - float(self.memory[key]) >= self.config.replica_hold_s:
                        why = (
                            f"held open {self.config.replica_hold_s:.0f} s: back in for a probe (the breaker guards it)"
                        )
                        found.append(Proposal(a.SetCircuit(model=model.name, replica=replica.key, state="closed"), why))
                    continue
                # Out only if a healthy replica stays in: when every replica fails, the fault is the model's.
                healthy = [
                    r for r in closed if r.key != replica.key and r.error_rate < self.config.replica_error_rate / 2
                ]
                if self._failing(replica) and healthy:
                    closed = [r for r in closed if r.key != replica.key]
                    why = f"{model.name} replica {replica.key} fails {replica.error_rate:.0%} of {replica.calls} calls"
                    found.append(Proposal(a.SetCircuit(model=model.name, replica=replica.key, state="open"), why))
        return found

    def _failing(self, replica: ReplicaView) -> bool:
        return (
            replica.state == "closed"
            and replica.calls >= self.config.replica_min_calls
            and replica.error_rate >= self.config.replica_error_rate
        )
