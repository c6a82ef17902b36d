"""The router: which rule handles an escalation (``plan``), then running its steps (``run``) by the rule's
strategy (``strategies/``, one module each).

A step calls one model: the balancer picks a replica, the call gets the
step's deadline, and a failure is retried on
another replica while the step's retry budget and deadline last. A hard
step's failure fails the request; a soft one's (``required: false``) is
left out of the answer.

The device's own deadline_ms does not cut a request short: past it the
device has used its local answer, but a late verdict is still recorded
there (for audit and for retraining), so the hub finishes the work.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Optional

from cloud.errors import ModelUnavailable, NoRoute, ReplicaUnavailable, RoutingError, one_line
from cloud.routing.balance import Balancer, CircuitState
from cloud.routing.config import RoutingConfig, Step, Strategy, When
from cloud.routing.steps import ModelBackend, Outcome, Plan, StepOutput
from cloud.routing.strategies import STRATEGIES
from protocol.errors import ProtocolError
from protocol.messages import EscalationRequest, Prediction

logger = logging.getLogger(__name__)


class Router:
    def __init__(
        self,
        config: RoutingConfig,
        backends: Mapping[str, Mapping[str, ModelBackend]],
        balancer: Optional[Balancer] = None,
        rng: Optional[random.Random] = None,
    ) -> None:
        """``backends``: model name -> replica key -> backend, for every model the rules name."""
        self.config = config
        self.backends = backends
        self.balancer = balancer or Balancer(config.balancing, config.breaker, rng=rng)
        self._rng = rng or random.Random()

    def with_config(self, config: RoutingConfig) -> Router:
        """A router on other rules over the same models: same backends, same measurements and circuits (the
        orchestrator's changes to weights and load rules). The rules may not name a model this one lacks."""
        missing = sorted({step.model for route in config.routes for step in route.steps} - set(self.backends))
        if missing:
            raise RoutingError(f"the rules name models this router does not serve: {missing}")
        return Router(config, self.backends, self.balancer, self._rng)

    def circuits(self, model: str) -> dict[str, CircuitState]:
        """Each replica's circuit state for one model of the rules."""
        return {key: self.balancer.stats(model, key).state for key in self.backends.get(model, {})}

    def models_for(self, device_id: str, group: str) -> set[str]:
        """The models of every rule that could take this device's escalations (its id and group match, or the
        rule does not ask), for preloading when the device first appears."""
        names: set[str] = set()
        for route in self.config.routes:
            when = route.when
            if when.device_id is not None and not any(fnmatch.fnmatchcase(device_id, p) for p in when.device_id):
                continue
            if when.device_group is not None and group not in when.device_group:
                continue
            names.update(step.model for step in route.steps)
        return names

    def plan(self, request: EscalationRequest) -> Plan:
        route = next((r for r in self.config.routes if matches(r.when, request, self.balancer.in_flight)), None)
        if route is None:
            raise NoRoute(f"no routing rule matches model_hint={request.model_hint!r} device={request.device_id}")
        if route.strategy is Strategy.WEIGHTED:
            picked = self._rng.choices(route.steps, weights=[s.weight for s in route.steps])[0]
            return Plan(route, (picked,))
        return Plan(route, tuple(route.steps))

    async def run(self, plan: Plan, request: EscalationRequest) -> Outcome:
        outcome = await STRATEGIES[plan.route.strategy](plan, request, self._run_step)
        return replace(outcome, cost=sum(s.cost for s in outcome.steps))

    # -- steps -------------------------------------------------------------------------------------------------

    async def _run_step(
        self, step: Step, request: EscalationRequest, previous: Optional[Prediction] = None
    ) -> StepOutput:
        replicas = self.backends[step.model]
        entry = self.config.models[step.model]
        loop = asyncio.get_running_loop()
        started = loop.time()
        step_end = started + step.deadline_ms / 1000.0
        tried: list[str] = []
        error, key, timed_out, unavailable = "", "", False, False
        for _ in range(step.retries + 1):
            remaining = step_end - loop.time()
            if remaining <= 0:
                error, timed_out = f"{step.model}: no time left for another attempt", True
                break
            try:
                key = self.balancer.choose(step.model, list(replicas), exclude=tried)
            except ModelUnavailable as exc:  # every circuit open: the replicas' own failures, not a lost replica
                error = str(exc)
                break
            tried.append(key)
            call_started = loop.time()
            try:
                answer = await asyncio.wait_for(replicas[key].predict(request, previous), remaining)
            except asyncio.CancelledError:
                self.balancer.release(step.model, key)
                raise
            except asyncio.TimeoutError:
                self.balancer.record_timeout(step.model, key, (loop.time() - call_started) * 1000.0)
                error, timed_out = f"{step.model}: no answer from {key} within {remaining * 1000.0:.0f} ms", True
                break
            except ProtocolError as exc:  # the input, not the replica, is at fault: no retry, no strike
                self.balancer.release(step.model, key)
                return StepOutput(
                    step,
                    key,
                    (loop.time() - started) * 1000.0,
                    len(tried),
                    error=f"bad input: {one_line(str(exc))}",
                    bad_input=True,
                )
            except ReplicaUnavailable as exc:
                # One Serve replica behind the key died under the call: Serve routes around it once it notices, and
                # the key's other replicas still answer, so no strike against the key (no circuit opens for all).
                self.balancer.release(step.model, key)
                error, unavailable = f"{step.model} on {key}: {one_line(str(exc))}", True
                logger.warning("step failed: %s", error)
                continue
            except Exception as exc:  # any replica failure counts against it and may be retried elsewhere
                self.balancer.record(step.model, key, False, (loop.time() - call_started) * 1000.0)
                error = f"{step.model} on {key}: {type(exc).__name__}: {one_line(str(exc))}"
                logger.warning("step failed: %s", error)
                continue
            self.balancer.record(step.model, key, True, (loop.time() - call_started) * 1000.0)
            return StepOutput(
                step,
                key,
                (loop.time() - started) * 1000.0,
                len(tried),
                answer,
                cost=entry.cost_per_call * len(tried),
            )
        return StepOutput(
            step,
            key,
            (loop.time() - started) * 1000.0,
            len(tried),
            error=error,
            timed_out=timed_out,
            cost=entry.cost_per_call * len(tried),
            unavailable=unavailable,
        )


def matches(when: When, request: EscalationRequest, in_flight: Callable[[str], int] = lambda _model: 0) -> bool:
    """Whether every condition holds; ``in_flight``: a model's calls in flight now (for model_queue_above)."""
    local = request.local_prediction
    data = request.input.data
    checks = (
        when.model_hint is None or request.model_hint in when.model_hint,
        when.device_id is None or any(fnmatch.fnmatchcase(request.device_id, p) for p in when.device_id),
        when.device_group is None or request.attributes.get("device_group") in when.device_group,
        when.local_label is None or local.label in when.local_label,
        when.local_confidence_below is None or local.confidence < when.local_confidence_below,
        when.local_confidence_at_least is None or local.confidence >= when.local_confidence_at_least,
        when.input_bytes_above is None or len(data) > when.input_bytes_above,
        when.input_bytes_at_most is None or len(data) <= when.input_bytes_at_most,
        when.tags is None or all(request.attributes.get(k) == v for k, v in when.tags.items()),
        when.model_queue_above is None or all(in_flight(m) > n for m, n in when.model_queue_above.items()),
    )
    return all(checks)
