"""What routing is made of: the model backends a step calls, the plan, and what each step and each request
came to. The strategies (``strategies/``) and the router (``router``) both stand on this module."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Optional

from cloud.routing.aggregate import single
from cloud.routing.config import Route, Step
from protocol.messages import EscalationRequest, Prediction


@dataclass(frozen=True)
class ModelAnswer:
    prediction: Prediction
    batch_size: int = 1
    """How many requests the model ran together with this one (dynamic batching)."""


def so_far(request: EscalationRequest, previous: Optional[Prediction]) -> EscalationRequest:
    """The request as a hub model sees it: after a step that found boxes or text, that answer stands where the
    device's own did, so a recogniser chained after the hub's text detector reads the boxes the hub found."""
    if previous is None or not (previous.boxes or previous.texts):
        return request
    return dataclasses.replace(request, local_prediction=previous)


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
    unavailable: bool = False
    """It failed because its replica died under the call (``ReplicaUnavailable``)."""


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

    @property
    def replica_lost(self) -> bool:
        """A step failed because its replica died under the call, not because of the input or the model. A step
        that timed out is not counted (under overload, running it again would only add to the queue that made it
        late), nor one whose circuits are all open (the replicas' own failures opened them)."""
        return any(s.unavailable for s in self.steps if s.answer is None and not s.bad_input)


StepRunner = Callable[[Step, EscalationRequest, Optional[Prediction]], Awaitable[StepOutput]]
"""Runs one step: picks a replica, calls it within the step's deadline, retries elsewhere on failure."""


def decided(plan: Plan, outputs: list[StepOutput], answer: Prediction) -> Outcome:
    return Outcome(plan.route.name, single(answer, plan.route.strategy.value), tuple(outputs))


def failed(plan: Plan, outputs: list[StepOutput]) -> Outcome:
    errors = [o for o in outputs if o.answer is None]
    return Outcome(
        plan.route.name,
        None,
        tuple(outputs),
        error="; ".join(o.error for o in errors) or "no step answered",
        timed_out=bool(errors) and all(o.timed_out for o in errors),
        bad_input=any(o.bad_input for o in errors),
    )
