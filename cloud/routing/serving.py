"""What the router knows, written back to the registry: which versions serve, on which replicas, how healthy.

rules route to a version (registry: NAME@VERSION)  -> status serving, replicas = the rules' replica keys
a reload stops routing to a version that was serving -> status draining (an operator retires it)
every report: health from the replicas' circuits    -> healthy | degraded (some open) | failing (all open)
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from typing import Optional

from cloud.errors import RegistryError
from cloud.registry.models import ModelStatus, ModelUpdate
from cloud.registry.store import Registry
from cloud.routing.balance import CircuitState
from cloud.routing.config import RoutingConfig

logger = logging.getLogger(__name__)


def served_versions(routing: RoutingConfig) -> dict[str, tuple[str, str]]:
    """Model name in the rules -> the registry (name, version) it serves, for registry-backed models."""
    return {name: ref for name, entry in routing.onnx_models().items() if (ref := entry.registry_version) is not None}


def health_of(states: Sequence[CircuitState]) -> str:
    if not states:
        return "unknown"
    open_ = sum(s is not CircuitState.CLOSED for s in states)
    if open_ == 0:
        return "healthy"
    return "failing" if open_ == len(states) else "degraded"


def report(
    registry: Registry,
    routing: RoutingConfig,
    circuits: Callable[[str], dict[str, CircuitState]],
    previous: Optional[RoutingConfig] = None,
) -> None:
    """Write serving status, replicas and health for the versions the rules use; drain the ones a reload dropped.

    ``circuits(model)`` gives each replica key's circuit state. A registry error is logged, never raised:
    the registry's view must not stop the routing."""
    current = served_versions(routing)
    for name, (model, version) in current.items():
        states = circuits(name)
        change = ModelUpdate(health=health_of(list(states.values())), replicas=sorted(states))
        _update(registry, model, version, change, serving=True)
    if previous is not None:
        for model, version in set(served_versions(previous).values()) - set(current.values()):
            _update(registry, model, version, ModelUpdate(status=ModelStatus.DRAINING), serving=False)


def _update(registry: Registry, model: str, version: str, change: ModelUpdate, serving: bool) -> None:
    try:
        status = registry.get(model, version).status
        if serving:
            if status in (ModelStatus.REGISTERED, ModelStatus.DRAINING):
                change = change.model_copy(update={"status": ModelStatus.SERVING})
                logger.info("registry: %s@%s is serving", model, version)
        elif status is ModelStatus.SERVING:
            logger.info("registry: %s@%s is no longer routed to; draining", model, version)
        else:
            return  # not serving: nothing to drain
        registry.update(model, version, change)
    except (RegistryError, sqlite3.Error) as exc:
        logger.error("registry: could not record %s@%s: %s", model, version, exc)
