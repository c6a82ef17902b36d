"""Carrying actions out, and undoing them: the interface (``Actuator``; ``cloud.hub_orchestrator.HubActuator``
carries them out on a running hub), and the routing rules as the load rules and weights change them.

``apply`` returns what undoes the action (``Undo``), stored with the proposal so one command reverts it:
an inverse action (a weight, a circuit, a load rule, replica bounds, a paused rollout), or a device group's
settings as they were. An aborted rollout and a note have no undo.
"""

from __future__ import annotations

import abc
from typing import Any, Optional

from cloud.errors import ActionFailed
from cloud.orchestrator import actions as a
from cloud.routing.config import Route, RoutingConfig, Step, Strategy

SHED_PREFIX = "shed."

Undo = dict[str, Any]
"""{"action": an inverse action}, {"group_settings": {"group": G, "settings": {...}}}, or {"cost_budget": B}."""


class Actuator(abc.ABC):
    @abc.abstractmethod
    async def apply(self, action: Any) -> Optional[Undo]:
        """Carry the action out (ActionFailed if the part it acts on cannot); what undoes it, if anything."""

    @abc.abstractmethod
    async def restore_group(self, group: str, settings: dict[str, Any]) -> None:
        """Put a group's settings back as they were."""


def inverse(action: Any) -> Undo:
    return {"action": action.model_dump(mode="json")}


def shedding(config: RoutingConfig) -> dict[str, int]:
    """The load rules the orchestrator added: model -> queue_above."""
    found: dict[str, int] = {}
    for route in config.routes:
        if route.name.startswith(SHED_PREFIX) and route.when.model_queue_above:
            found.update(route.when.model_queue_above)
    return found


def with_shedding(config: RoutingConfig, action: a.ShedLoad) -> RoutingConfig:
    """The rules with a load rule before every route that calls ``action.model``."""
    routes: list[Route] = []
    for route in config.routes:
        if not route.name.startswith(SHED_PREFIX) and any(s.model == action.model for s in route.steps):
            when = route.when.model_copy(update={"model_queue_above": {action.model: action.queue_above}})
            deadline = max(s.deadline_ms for s in route.steps)
            step = Step(model=action.to_model, deadline_ms=deadline)
            routes.append(Route(name=f"{SHED_PREFIX}{route.name}", when=when, steps=[step], cache=route.cache))
        routes.append(route)
    return _valid(config, routes)


def without_shedding(config: RoutingConfig, model: str) -> RoutingConfig:
    routes = [
        r for r in config.routes if not (r.name.startswith(SHED_PREFIX) and model in (r.when.model_queue_above or {}))
    ]
    return _valid(config, routes)


def with_weights(config: RoutingConfig, action: a.SetRouteWeights) -> RoutingConfig:
    routes = []
    for route in config.routes:
        if route.name != action.route:
            routes.append(route)
            continue
        if route.strategy is not Strategy.WEIGHTED:
            raise ActionFailed(f"route {route.name} is {route.strategy.value}, not weighted")
        steps = [s.model_copy(update={"weight": action.weights.get(s.model, s.weight)}) for s in route.steps]
        routes.append(route.model_copy(update={"steps": steps}))
    return _valid(config, routes)


def weights(config: RoutingConfig) -> dict[str, dict[str, float]]:
    """Each weighted route's weights by model."""
    return {r.name: {s.model: s.weight for s in r.steps} for r in config.routes if r.strategy is Strategy.WEIGHTED}


def _valid(config: RoutingConfig, routes: list[Route]) -> RoutingConfig:
    data = config.model_dump()
    data["routes"] = [r.model_dump() for r in routes]
    try:
        return RoutingConfig.model_validate(data)
    except ValueError as exc:
        raise ActionFailed(f"the changed rules do not validate: {exc}") from exc


class PoolScaler(abc.ABC):
    """The model pool's replica bounds, where the pool can scale."""

    @abc.abstractmethod
    async def bounds(self) -> Optional[tuple[int, int, int]]:
        """(min_replicas, max_replicas, running), or None where the pool cannot scale."""

    @abc.abstractmethod
    async def scale(self, min_replicas: int, max_replicas: int) -> None:
        """New autoscaling bounds, applied without dropping requests."""
