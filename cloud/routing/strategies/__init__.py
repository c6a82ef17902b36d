"""Routing strategies, one module each, from an explicit registry: how a rule's steps are run and their
answers combined. A new strategy is a module with one coroutine ``(plan, request, run_step) -> Outcome``,
its line here, and its name in ``config.Strategy``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from cloud.routing.config import Strategy
from cloud.routing.steps import Outcome, Plan, StepRunner
from cloud.routing.strategies.cascade import cascade
from cloud.routing.strategies.first_success import first_success
from cloud.routing.strategies.first_that_answers import first_that_answers
from cloud.routing.strategies.parallel import parallel
from protocol.messages import EscalationRequest

StrategyFn = Callable[[Plan, EscalationRequest, StepRunner], Awaitable[Outcome]]

STRATEGIES: dict[Strategy, StrategyFn] = {
    Strategy.SINGLE: first_that_answers,
    Strategy.FALLBACK: first_that_answers,
    Strategy.WEIGHTED: first_that_answers,  # the plan holds the one step the weights picked
    Strategy.PARALLEL: parallel,
    Strategy.FIRST_SUCCESS: first_success,
    Strategy.CASCADE: cascade,
}

__all__ = ["STRATEGIES", "StrategyFn"]
