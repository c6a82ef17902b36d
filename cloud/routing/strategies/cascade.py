"""cascade: cheapest first; the next step runs only while the answer so far is below the rule's gate."""

from __future__ import annotations

from typing import Optional

from cloud.routing.steps import Outcome, Plan, StepOutput, StepRunner, decided, failed
from protocol.messages import EscalationRequest, Prediction


async def cascade(plan: Plan, request: EscalationRequest, run_step: StepRunner) -> Outcome:
    outputs: list[StepOutput] = []
    best: Optional[Prediction] = None
    for step in plan.steps:
        output = await run_step(step, request, None)
        outputs.append(output)
        if output.answer is None:
            if step.required or output.bad_input or best is None:
                return failed(plan, outputs)
            continue
        best = output.answer.prediction
        if best.confidence >= plan.route.gate:
            break
    return decided(plan, outputs, best) if best is not None else failed(plan, outputs)
