"""first_success: every step at once; the first answer wins and the others are cancelled."""

from __future__ import annotations

import asyncio

from cloud.routing.steps import Outcome, Plan, StepOutput, StepRunner, decided, failed
from protocol.messages import EscalationRequest


async def first_success(plan: Plan, request: EscalationRequest, run_step: StepRunner) -> Outcome:
    tasks = [asyncio.ensure_future(run_step(s, request, None)) for s in plan.steps]
    outputs: list[StepOutput] = []
    try:
        for next_done in asyncio.as_completed(tasks):
            output = await next_done
            outputs.append(output)
            if output.answer is not None:
                return decided(plan, outputs, output.answer.prediction)
    finally:
        for task in tasks:
            task.cancel()
    return failed(plan, outputs)
