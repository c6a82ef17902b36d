"""parallel: every step at once, their answers aggregated (vote, weighted, max confidence); or, with
``aggregate: chain``, each step in turn fed the previous step's answer (a recogniser, then a parser)."""

from __future__ import annotations

import asyncio

from cloud.routing.aggregate import AGGREGATES
from cloud.routing.config import Aggregate
from cloud.routing.steps import Outcome, Plan, StepOutput, StepRunner, failed
from protocol.messages import EscalationRequest, Prediction


async def parallel(plan: Plan, request: EscalationRequest, run_step: StepRunner) -> Outcome:
    if plan.route.aggregate is Aggregate.CHAIN:
        return await chain(plan, request, run_step)
    outputs = list(await asyncio.gather(*(run_step(s, request, None) for s in plan.steps)))
    hard_failures = [o for o in outputs if o.answer is None and (o.step.required or o.bad_input)]
    answered = [(o.answer.prediction, o.step.weight) for o in outputs if o.answer is not None]
    if hard_failures or not answered or plan.route.aggregate is None:  # Route requires aggregate here
        return failed(plan, outputs)
    return Outcome(plan.route.name, AGGREGATES[plan.route.aggregate](answered), tuple(outputs))


async def chain(plan: Plan, request: EscalationRequest, run_step: StepRunner) -> Outcome:
    outputs: list[StepOutput] = []
    answered: list[tuple[Prediction, float]] = []
    for step in plan.steps:
        previous = answered[-1][0] if answered else None
        output = await run_step(step, request, previous)
        outputs.append(output)
        if output.answer is not None:
            answered.append((output.answer.prediction, step.weight))
        elif step.required or output.bad_input or not answered:
            return failed(plan, outputs)
    return Outcome(plan.route.name, AGGREGATES[Aggregate.CHAIN](answered), tuple(outputs))
