"""single, weighted (its one picked step) and fallback (each step in turn until one answers)."""

from __future__ import annotations

from cloud.routing.steps import Outcome, Plan, StepOutput, StepRunner, decided, failed
from protocol.messages import EscalationRequest


async def first_that_answers(plan: Plan, request: EscalationRequest, run_step: StepRunner) -> Outcome:
    outputs: list[StepOutput] = []
    for step in plan.steps:
        output = await run_step(step, request, None)
        outputs.append(output)
        if output.answer is not None:
            return decided(plan, outputs, output.answer.prediction)
        if output.bad_input:
            break
    return failed(plan, outputs)
