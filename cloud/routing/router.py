"""The router: which rule handles an escalation (``plan``), then running its steps (``run``).

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

import abc
import asyncio
import fnmatch
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Optional

from cloud.errors import ModelUnavailable, NoRoute, one_line
from cloud.routing.aggregate import AGGREGATES, single
from cloud.routing.balance import Balancer, CircuitState
from cloud.routing.config import Aggregate, Route, RoutingConfig, Step, Strategy, When
from protocol.errors import ProtocolError
from protocol.messages import EscalationRequest, Prediction

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelAnswer:
    prediction: Prediction
    batch_size: int = 1
    """How many requests the model ran together with this one (dynamic batching)."""


class ModelBackend(abc.ABC):
    """One replica of one model: the hub's Serve deployment, a Triton server, or a parser rule."""

    @abc.abstractmethod
    async def predict(self, request: EscalationRequest, previous: Optional[Prediction]) -> ModelAnswer:
        """The answer for the request's input (or, for a parser, for the previous step's answer)."""

    async def close(self) -> None:  # noqa: B027 - most backends hold nothing
        """Release connections; called when the rules that made it are replaced."""


@dataclass(frozen=True)
class Plan:
    """The routing decision: the rule and the steps it will run (weighted has picked its one)."""

    route: Route
    steps: tuple[Step, ...]

    def describe(self) -> str:
        return f"{self.route.name}:{self.route.strategy.value}:" + ",".join(s.model for s in self.steps)


@dataclass(frozen=True)
class StepOutput:
    step: Step
    replica: str
    ms: float
    attempts: int
    answer: Optional[ModelAnswer] = None
    error: str = ""
    timed_out: bool = False
    bad_input: bool = False
    cost: float = 0.0


@dataclass(frozen=True)
class Outcome:
    route: str
    final: Optional[Prediction]
    steps: tuple[StepOutput, ...] = ()
    error: str = ""
    timed_out: bool = False
    bad_input: bool = False
    cost: float = field(default=0.0)

    @property
    def ok(self) -> bool:
        return self.final is not None


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
        self._strategies: dict[Strategy, Callable[[Plan, EscalationRequest], Awaitable[Outcome]]] = {
            Strategy.SINGLE: self._first_that_answers,
            Strategy.FALLBACK: self._first_that_answers,
            Strategy.WEIGHTED: self._first_that_answers,
            Strategy.PARALLEL: self._parallel,
            Strategy.FIRST_SUCCESS: self._first_success,
            Strategy.CASCADE: self._cascade,
        }

    def circuits(self, model: str) -> dict[str, CircuitState]:
        """Each replica's circuit state for one model of the rules."""
        return {key: self.balancer.stats(model, key).state for key in self.backends.get(model, {})}

    def plan(self, request: EscalationRequest) -> Plan:
        route = next((r for r in self.config.routes if matches(r.when, request)), None)
        if route is None:
            raise NoRoute(f"no routing rule matches model_hint={request.model_hint!r} device={request.device_id}")
        if route.strategy is Strategy.WEIGHTED:
            picked = self._rng.choices(route.steps, weights=[s.weight for s in route.steps])[0]
            return Plan(route, (picked,))
        return Plan(route, tuple(route.steps))

    async def run(self, plan: Plan, request: EscalationRequest) -> Outcome:
        outcome = await self._strategies[plan.route.strategy](plan, request)
        return replace(outcome, cost=sum(s.cost for s in outcome.steps))

    # -- strategies --------------------------------------------------------------------------------------------

    async def _first_that_answers(self, plan: Plan, request: EscalationRequest) -> Outcome:
        """single, weighted (one step) and fallback (each step in turn until one answers)."""
        outputs: list[StepOutput] = []
        for step in plan.steps:
            output = await self._run_step(step, request)
            outputs.append(output)
            if output.answer is not None:
                return self._decided(plan, outputs, output.answer.prediction)
            if output.bad_input:
                break
        return self._failed(plan, outputs)

    async def _parallel(self, plan: Plan, request: EscalationRequest) -> Outcome:
        if plan.route.aggregate is Aggregate.CHAIN:
            return await self._chain(plan, request)
        outputs = list(await asyncio.gather(*(self._run_step(s, request) for s in plan.steps)))
        hard_failures = [o for o in outputs if o.answer is None and (o.step.required or o.bad_input)]
        answered = [(o.answer.prediction, o.step.weight) for o in outputs if o.answer is not None]
        if hard_failures or not answered or plan.route.aggregate is None:  # Route requires aggregate here
            return self._failed(plan, outputs)
        return Outcome(plan.route.name, AGGREGATES[plan.route.aggregate](answered), tuple(outputs))

    async def _chain(self, plan: Plan, request: EscalationRequest) -> Outcome:
        outputs: list[StepOutput] = []
        answered: list[tuple[Prediction, float]] = []
        for step in plan.steps:
            previous = answered[-1][0] if answered else None
            output = await self._run_step(step, request, previous)
            outputs.append(output)
            if output.answer is not None:
                answered.append((output.answer.prediction, step.weight))
            elif step.required or output.bad_input or not answered:
                return self._failed(plan, outputs)
        return Outcome(plan.route.name, AGGREGATES[Aggregate.CHAIN](answered), tuple(outputs))

    async def _first_success(self, plan: Plan, request: EscalationRequest) -> Outcome:
        tasks = [asyncio.ensure_future(self._run_step(s, request)) for s in plan.steps]
        outputs: list[StepOutput] = []
        try:
            for next_done in asyncio.as_completed(tasks):
                output = await next_done
                outputs.append(output)
                if output.answer is not None:
                    return self._decided(plan, outputs, output.answer.prediction)
        finally:
            for task in tasks:
                task.cancel()
        return self._failed(plan, outputs)

    async def _cascade(self, plan: Plan, request: EscalationRequest) -> Outcome:
        """Cheapest first; the next step runs only while the answer so far is below the gate."""
        outputs: list[StepOutput] = []
        best: Optional[Prediction] = None
        for step in plan.steps:
            output = await self._run_step(step, request)
            outputs.append(output)
            if output.answer is None:
                if step.required or output.bad_input or best is None:
                    return self._failed(plan, outputs)
                continue
            best = output.answer.prediction
            if best.confidence >= plan.route.gate:
                break
        return self._decided(plan, outputs, best) if best is not None else self._failed(plan, outputs)

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
        error, key, timed_out = "", "", False
        for _ in range(step.retries + 1):
            remaining = step_end - loop.time()
            if remaining <= 0:
                error, timed_out = f"{step.model}: no time left for another attempt", True
                break
            try:
                key = self.balancer.choose(step.model, list(replicas), exclude=tried)
            except ModelUnavailable as exc:
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
        )

    def _decided(self, plan: Plan, outputs: list[StepOutput], answer: Prediction) -> Outcome:
        return Outcome(plan.route.name, single(answer, plan.route.strategy.value), tuple(outputs))

    def _failed(self, plan: Plan, outputs: list[StepOutput]) -> Outcome:
        errors = [o for o in outputs if o.answer is None]
        return Outcome(
            plan.route.name,
            None,
            tuple(outputs),
            error="; ".join(o.error for o in errors) or "no step answered",
            timed_out=bool(errors) and all(o.timed_out for o in errors),
            bad_input=any(o.bad_input for o in errors),
        )


def matches(when: When, request: EscalationRequest) -> bool:
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
    )
    return all(checks)
