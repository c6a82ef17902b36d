"""The orchestrator's eyes and hands on a running hub: ``HubObserver`` takes the snapshot from the router's
measurements, the fleet's heartbeats and the rollouts in progress; ``HubActuator`` carries actions out on them.

    set_judge_threshold   the group's settings layer (fleet desired state, who = orchestrator); devices apply it
                          between two frames
    set_route_weights,    the router's rules, replaced in place by a router over the same backends, measurements
    shed_load, ...        and circuits (a reload of the routing file replaces them again)
    set_circuit           the balancer's hold on the replica
    set_replicas          the model pool (Ray Serve autoscaling bounds; the local pool cannot scale)
    rollout               the rollout service

Kept apart from the ``cloud.orchestrator`` package, which knows nothing of the fleet's modules.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any, Optional

from cloud.errors import ActionFailed, HubError
from cloud.fleet.rollout_spec import RolloutState
from cloud.fleet.rollouts import RolloutService
from cloud.fleet.service import FleetService
from cloud.fleet.store import Device, Scope
from cloud.metrics import HubMetrics
from cloud.orchestrator import actions as a
from cloud.orchestrator.actuator import (
    SHED_PREFIX,
    Actuator,
    PoolScaler,
    Undo,
    inverse,
    shedding,
    weights,
    with_shedding,
    with_weights,
    without_shedding,
)
from cloud.orchestrator.advisor import advisor_for
from cloud.orchestrator.config import OrchestratorConfig
from cloud.orchestrator.loop import Orchestrator
from cloud.orchestrator.snapshot import GroupView, ModelView, Observer, PoolView, ReplicaView, Snapshot, percentile
from cloud.orchestrator.store import OrchestratorStore, ProposalRow
from cloud.routing.config import RoutingConfig
from cloud.routing.router import Router

logger = logging.getLogger(__name__)

WHO = "orchestrator"
IN_PROGRESS = (RolloutState.RUNNING.value, RolloutState.PAUSED.value)


class HubObserver(Observer):
    def __init__(
        self,
        router: Callable[[], Router],
        fleet: Callable[[], FleetService],
        rollouts: Callable[[], RolloutService],
        pool: Optional[PoolScaler],
        clock: Callable[[], float],
    ) -> None:
        self._router = router
        self._fleet = fleet
        self._rollouts = rollouts
        self._pool = pool
        self._clock = clock

    async def observe(self) -> Snapshot:
        router = self._router()
        devices = await asyncio.to_thread(self._fleet().store.devices)
        rollouts = await asyncio.to_thread(self._rollouts().store.rollouts, IN_PROGRESS)
        bounds = await self._pool.bounds() if self._pool else None
        return Snapshot(
            at=self._clock(),
            models={name: model_view(router, name) for name in router.backends},
            groups=self._groups(router, devices),
            devices=len(devices),
            routes=weights(router.config),
            shedding=shedding(router.config),
            pool=PoolView(*bounds) if bounds else None,
            rollouts=tuple(r.rollout_id for r in rollouts),
            policy_version=router.config.digest(),
        )

    def _groups(self, router: Router, devices: list[Device]) -> dict[str, GroupView]:
        fleet, now = self._fleet(), self._clock()
        by_group: dict[str, list[Device]] = {}
        for device in devices:
            if device.group:  # "": heard from, but it has not reported its group yet
                by_group.setdefault(device.group, []).append(device)
        groups = {}
        for name, members in by_group.items():
            # Heartbeats older than silent_after_s describe a past that no longer holds.
            beats = [
                d.telemetry
                for d in members
                if d.telemetry and d.telemetry_at and now - d.telemetry_at <= fleet.config.silent_after_s
            ]
            groups[name] = GroupView(
                name=name,
                devices=len(members),
                online=sum(1 for d in members if fleet.status(d) == "online"),
                escalations_per_s=sum(b["escalations_per_s"] for b in beats),
                fallbacks_per_s=sum(b["fallbacks_per_s"] for b in beats),
                outbox_rows=sum(b["outbox_rows"] for b in beats),
                outbox_age_s=max((b["outbox_oldest_age_s"] for b in beats), default=0.0),
                judge_threshold=_threshold(beats, members),
                models=tuple(sorted(router.models_for(members[0].device_id, members[0].group))),
                active_models=tuple(sorted({str(d.model.get("model_id")) for d in members if d.model.get("model_id")})),
            )
        return groups


def _threshold(beats: list[dict[str, Any]], members: list[Device]) -> Optional[float]:
    """What the hub last asked of the group's devices, else their threshold in effect (their heartbeats): a change
    just sent is what the next step must start from, though the devices' next heartbeat has not said it yet."""
    desired = [d.desired_settings.get("judge", {}).get("confidence_threshold") for d in members]
    asked = [float(t) for t in desired if t is not None]
    if asked:
        return round(statistics.fmean(asked), 4)
    reported = [b["judge_threshold"] for b in beats if b.get("judge_threshold") is not None]
    return round(statistics.fmean(reported), 4) if reported else None


def model_view(router: Router, name: str) -> ModelView:
    """One model's measurements over the balancer's window."""
    window_s = router.config.balancing.window_s
    entry = router.config.models[name]
    replicas, latencies, calls, failures = [], [], 0, 0
    for key in router.backends.get(name, {}):
        stats = router.balancer.expire(name, key)
        done = len(stats.outcomes)
        failed = sum(1 for _, ok, _ in stats.outcomes if not ok)
        calls, failures = calls + done, failures + failed
        latencies += stats.latencies()
        replicas.append(
            ReplicaView(
                key=key,
                state=stats.state.value,
                calls_per_s=done / window_s,
                error_rate=failed / done if done else 0.0,
                in_flight=stats.in_flight,
                calls=done,
            )
        )
    return ModelView(
        name=name,
        cost_per_call=entry.cost_per_call,
        calls_per_s=calls / window_s,
        in_flight=router.balancer.in_flight(name),
        p50_ms=percentile(latencies, 0.5),
        p99_ms=percentile(latencies, 0.99),
        error_rate=failures / calls if calls else 0.0,
        replicas=tuple(replicas),
    )


class HubActuator(Actuator):
    def __init__(
        self,
        router: Callable[[], Router],
        use_router: Callable[[Router], None],
        fleet: Callable[[], FleetService],
        rollouts: Callable[[], RolloutService],
        pool: Optional[PoolScaler],
    ) -> None:
        self._router = router
        self._use_router = use_router
        self._fleet = fleet
        self._rollouts = rollouts
        self._pool = pool
        self._handlers: dict[type, Callable[[Any], Any]] = {
            a.SetJudgeThreshold: self._threshold,
            a.SetRouteWeights: self._weights,
            a.SetReplicas: self._replicas,
            a.SetCircuit: self._circuit,
            a.ShedLoad: self._shed,
            a.StopShedding: self._stop_shedding,
            a.RolloutAction: self._rollout,
        }

    async def apply(self, action: Any) -> Optional[Undo]:
        handler = self._handlers.get(type(action))
        if handler is None:
            return None  # annotate, set_cost_budget: the orchestrator's own
        try:
            result: Optional[Undo] = await handler(action)
        except ActionFailed:
            raise
        except HubError as exc:
            raise ActionFailed(f"{action.tool}: {exc}") from exc
        return result

    async def restore_group(self, group: str, settings: dict[str, Any]) -> None:
        await asyncio.to_thread(self._fleet().set_settings, Scope.GROUP, group, settings, WHO)

    async def _threshold(self, action: a.SetJudgeThreshold) -> Undo:
        fleet = self._fleet()
        layers = await asyncio.to_thread(fleet.store.layers)
        before = next((x.settings for x in layers if x.scope is Scope.GROUP and x.name == action.group), {})
        judge = {**before.get("judge", {}), "confidence_threshold": action.confidence_threshold}
        await asyncio.to_thread(fleet.set_settings, Scope.GROUP, action.group, {**before, "judge": judge}, WHO)
        return {"group_settings": {"group": action.group, "settings": before}}

    def _rules(self, change: Callable[[RoutingConfig], RoutingConfig]) -> None:
        router = self._router()
        self._use_router(router.with_config(change(router.config)))

    async def _weights(self, action: a.SetRouteWeights) -> Undo:
        old = weights(self._router().config).get(action.route)
        if old is None:
            raise ActionFailed(f"no weighted route {action.route}")
        self._rules(lambda config: with_weights(config, action))
        return inverse(a.SetRouteWeights(route=action.route, weights=old))

    async def _shed(self, action: a.ShedLoad) -> Undo:
        self._rules(lambda config: with_shedding(without_shedding(config, action.model), action))
        return inverse(a.StopShedding(model=action.model))

    async def _stop_shedding(self, action: a.StopShedding) -> Optional[Undo]:
        config = self._router().config
        queue = shedding(config).get(action.model)
        to = next(
            (
                r.steps[0].model
                for r in config.routes
                if r.name.startswith(SHED_PREFIX) and action.model in (r.when.model_queue_above or {})
            ),
            None,
        )
        self._rules(lambda config: without_shedding(config, action.model))
        if queue is None or to is None:
            return None
        return inverse(a.ShedLoad(model=action.model, queue_above=queue, to_model=to))

    async def _circuit(self, action: a.SetCircuit) -> Undo:
        router = self._router()
        if action.replica not in router.backends.get(action.model, {}):
            raise ActionFailed(f"model {action.model} has no replica {action.replica}")
        router.balancer.hold(action.model, action.replica, action.state == "open")
        back = "closed" if action.state == "open" else "open"
        return inverse(a.SetCircuit(model=action.model, replica=action.replica, state=back))

    async def _replicas(self, action: a.SetReplicas) -> Undo:
        bounds = await self._pool.bounds() if self._pool else None
        if self._pool is None or bounds is None:
            raise ActionFailed("the model pool cannot scale here")
        await self._pool.scale(action.min_replicas, action.max_replicas)
        return inverse(a.SetReplicas(min_replicas=bounds[0], max_replicas=bounds[1]))

    async def _rollout(self, action: a.RolloutAction) -> Optional[Undo]:
        rollouts = self._rollouts()
        step = {"pause": rollouts.pause, "resume": rollouts.resume}.get(action.action)
        if step is None:
            await asyncio.to_thread(rollouts.abort, action.rollout_id, WHO, "aborted by the orchestrator")
            return None
        await asyncio.to_thread(step, action.rollout_id, WHO)
        back = "resume" if action.action == "pause" else "pause"
        return inverse(a.RolloutAction(rollout_id=action.rollout_id, action=back))


def build_orchestrator(
    config: OrchestratorConfig,
    router: Callable[[], Router],
    use_router: Callable[[Router], None],
    fleet: Callable[[], FleetService],
    rollouts: Callable[[], RolloutService],
    pool: Optional[PoolScaler],
    store: OrchestratorStore,
    metrics: HubMetrics,
) -> Orchestrator:
    """The orchestrator over a hub's parts (getters where a part exists only once the hub has started); its
    decisions go to this module's log."""
    return Orchestrator(
        config,
        HubObserver(router, fleet, rollouts, pool, time.time),
        HubActuator(router, use_router, fleet, rollouts, pool),
        store,
        metrics,
        advisor_for(config.llm),
        on_decision=_log_decision,
    )


def _log_decision(row: ProposalRow) -> None:
    logger.info(
        "orchestrator: %s %s by %s: %s%s",
        row.state.value,
        row.action.get("tool", "malformed answer"),
        row.source,
        {k: v for k, v in row.action.items() if k not in ("tool", "raw")},
        f" ({row.detail})" if row.detail else f" ({row.reason})" if row.reason else "",
    )
