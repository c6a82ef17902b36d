"""The guardrails: every action, whoever proposed it, is checked here against the allow-list and the bounds
before it may take effect. A refusal names the bound; it is recorded and the loop goes on.

    allow-list     bounds.tools
    thresholds     within [threshold_min, threshold_max], at most threshold_step from the value in effect
    weights        a weighted route's own models, positive, no share moved more than weight_change_max
    replicas       replicas_min <= min <= max <= replicas_max
    circuits       never the last closed replica of a model; at most circuit_open_max_share held open
    load rules     between two different models the rules know; queue_above >= queue_above_min
    rollouts       only one in progress
    blast radius   the devices one tick's actions touch <= max_fleet_share of the known devices
    rate           applied actions per rolling minute <= actions_per_minute (checked when applying)
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import Any, Optional

from cloud.orchestrator import actions as a
from cloud.orchestrator.config import Bounds
from cloud.orchestrator.snapshot import Snapshot

EPSILON = 1e-9


class Guard:
    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self._applied: collections.deque[float] = collections.deque()

    def round(self) -> Round:
        """A round of checks (one tick, one approval, one intent): the fleet-share bound holds across it."""
        return Round(self.bounds)

    def check(self, action: Any, snapshot: Snapshot) -> Optional[str]:
        """One action checked alone."""
        return self.round().check(action, snapshot)

    def rate_allows(self, now: float) -> Optional[str]:
        """None if one more action may be applied now; else why not."""
        while self._applied and now - self._applied[0] >= 60.0:
            self._applied.popleft()
        if len(self._applied) >= self.bounds.actions_per_minute:
            bound = self.bounds.actions_per_minute
            return f"{len(self._applied)} actions applied in the last minute; the bound is {bound}"
        return None

    def applied(self, now: float) -> None:
        self._applied.append(now)


class Round:
    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self.touched = 0  # devices the actions passed in this round touch

    def check(self, action: Any, snapshot: Snapshot) -> Optional[str]:
        """None if the action may take effect; else why not. Passing counts its devices against the round."""
        if action.tool not in self.bounds.tools:
            return f"tool {action.tool} is not allowed (bounds.tools)"
        problem = _CHECKS[type(action)](self.bounds, action, snapshot)
        if problem:
            return problem
        devices = _devices_touched(action, snapshot)
        fleet = max(snapshot.devices, 1)
        if devices and self.touched + devices > self.bounds.max_fleet_share * fleet + EPSILON:
            share = (self.touched + devices) / fleet
            return f"touches {share:.0%} of the fleet this round; the bound is {self.bounds.max_fleet_share:.0%}"
        self.touched += devices
        return None


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def _threshold(bounds: Bounds, action: a.SetJudgeThreshold, snapshot: Snapshot) -> Optional[str]:
    group = snapshot.groups.get(action.group)
    value = action.confidence_threshold
    if group is None:
        return f"no device group {action.group!r}"
    if not _finite(value) or not bounds.threshold_min - EPSILON <= value <= bounds.threshold_max + EPSILON:
        return f"threshold {value} is outside [{bounds.threshold_min}, {bounds.threshold_max}]"
    if group.judge_threshold is None or not _finite(group.judge_threshold):
        return f"group {action.group}'s threshold in effect is unknown: the step bound cannot be checked"
    if abs(value - group.judge_threshold) > bounds.threshold_step + EPSILON:
        step = f"{group.judge_threshold:.3f} -> {value:.3f}"
        return f"moves {action.group}'s threshold {step}: more than {bounds.threshold_step}"
    return None


def _weights(bounds: Bounds, action: a.SetRouteWeights, snapshot: Snapshot) -> Optional[str]:
    current = snapshot.routes.get(action.route)
    if current is None:
        return f"no weighted route {action.route!r}"
    if set(action.weights) != set(current):
        return f"route {action.route} weighs {sorted(current)}, not {sorted(action.weights)}"
    if not _finite(*action.weights.values()) or min(action.weights.values()) <= 0:
        return "weights must be positive numbers"
    new_total, old_total = sum(action.weights.values()), sum(current.values())
    moved = max(abs(action.weights[m] / new_total - current[m] / old_total) for m in current)
    if moved > bounds.weight_change_max + EPSILON:
        return f"moves {moved:.0%} of route {action.route}'s traffic; the bound is {bounds.weight_change_max:.0%}"
    return None


def _replicas(bounds: Bounds, action: a.SetReplicas, snapshot: Snapshot) -> Optional[str]:
    if snapshot.pool is None:
        return "the model pool cannot be scaled here (no autoscaling pool)"
    if not bounds.replicas_min <= action.min_replicas <= action.max_replicas <= bounds.replicas_max:
        return (
            f"replicas {action.min_replicas}..{action.max_replicas} are outside "
            f"{bounds.replicas_min}..{bounds.replicas_max} (or min > max)"
        )
    return None


def _circuit(bounds: Bounds, action: a.SetCircuit, snapshot: Snapshot) -> Optional[str]:
    model = snapshot.models.get(action.model)
    if model is None:
        return f"no model {action.model!r}"
    states = {r.key: r.state for r in model.replicas}
    if action.replica not in states:
        return f"model {action.model} has no replica {action.replica!r}"
    if action.state == "closed":
        return None
    closed_after = [k for k, s in states.items() if s == "closed" and k != action.replica]
    if not closed_after:
        return f"{action.replica} is {action.model}'s last closed replica; opening it would eject the model"
    if len(states) - len(closed_after) > bounds.circuit_open_max_share * len(states) + EPSILON:
        return f"would hold more than {bounds.circuit_open_max_share:.0%} of {action.model}'s replicas open"
    return None


def _shed(bounds: Bounds, action: a.ShedLoad, snapshot: Snapshot) -> Optional[str]:
    for name in (action.model, action.to_model):
        if name not in snapshot.models:
            return f"no model {name!r}"
    if action.model == action.to_model:
        return "a model cannot shed to itself"
    if snapshot.models[action.to_model].cost_per_call > snapshot.models[action.model].cost_per_call:
        return f"{action.to_model} costs more than {action.model}: shedding goes to a cheaper model"
    if action.queue_above < bounds.queue_above_min:
        return f"queue_above {action.queue_above} is below {bounds.queue_above_min}"
    return None


def _stop_shedding(_bounds: Bounds, action: a.StopShedding, snapshot: Snapshot) -> Optional[str]:
    return None if action.model in snapshot.shedding else f"{action.model} has no load rule"


def _rollout(_bounds: Bounds, action: a.RolloutAction, snapshot: Snapshot) -> Optional[str]:
    return None if action.rollout_id in snapshot.rollouts else f"no rollout {action.rollout_id!r} in progress"


def _budget(bounds: Bounds, action: a.SetCostBudget, _snapshot: Snapshot) -> Optional[str]:
    if not _finite(action.per_hour) or action.per_hour <= 0:
        return "a cost budget is a positive number"
    if bounds.cost_budget_max is not None and action.per_hour > bounds.cost_budget_max + EPSILON:
        return f"budget {action.per_hour} is above bounds.cost_budget_max {bounds.cost_budget_max}"
    return None


def _annotate(_bounds: Bounds, _action: a.Annotate, _snapshot: Snapshot) -> Optional[str]:
    return None


_CHECKS: dict[type, Callable[[Bounds, Any, Snapshot], Optional[str]]] = {
    a.SetJudgeThreshold: _threshold,
    a.SetRouteWeights: _weights,
    a.SetReplicas: _replicas,
    a.SetCircuit: _circuit,
    a.ShedLoad: _shed,
    a.StopShedding: _stop_shedding,
    a.RolloutAction: _rollout,
    a.SetCostBudget: _budget,
    a.Annotate: _annotate,
}


def _devices_touched(action: Any, snapshot: Snapshot) -> int:
    """The devices an action changes directly (thresholds go to a group's devices); hub-side actions: none."""
    if isinstance(action, a.SetJudgeThreshold):
        group = snapshot.groups.get(action.group)
        return group.devices if group else 0
    return 0
