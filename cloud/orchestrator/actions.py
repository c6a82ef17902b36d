"""The orchestrator's tools: every action it may take, as a typed message with a JSON schema.

The rules controller builds these directly; a language model must produce them as JSON (``Decision``), which is
parsed here and nowhere else. Parsing says only that a call is well formed; whether it may take effect is the
guardrails' business (``guardrails.py``), and carrying it out the actuator's (``actuator.py``).

    set_judge_threshold   a device group's judge confidence_threshold (desired state; devices apply it live)
    set_route_weights     a weighted route's share of traffic per model
    set_replicas          the model pool's autoscaling bounds (Ray Serve; no request dropped)
    set_circuit           hold a replica's circuit open (out of rotation) or close it
    shed_load             a load rule: while MODEL has more than N calls in flight, its routes go to TO_MODEL
    stop_shedding         remove MODEL's load rules
    rollout               pause, resume or abort a rollout
    set_cost_budget       the cost per hour the rules keep the hub under
    annotate              a note in the audit log: explains, changes nothing
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from common.config import describe_errors

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$"


class _Tool(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def target(self) -> str:
        """What the action acts on, for logs, rate limits and 'one change per target per tick'."""
        return self.tool  # type: ignore[attr-defined]

    def describe(self) -> str:
        fields = self.model_dump(exclude={"tool"})
        return f"{self.tool}({', '.join(f'{k}={v}' for k, v in fields.items())})"  # type: ignore[attr-defined]


class SetJudgeThreshold(_Tool):
    tool: Literal["set_judge_threshold"] = "set_judge_threshold"
    group: str = Field(pattern=NAME, description="a device group")
    confidence_threshold: float = Field(description="the judge escalates answers whose top score is below this")

    def target(self) -> str:
        return f"group:{self.group}"


class SetRouteWeights(_Tool):
    tool: Literal["set_route_weights"] = "set_route_weights"
    route: str = Field(pattern=NAME, description="a route with strategy weighted")
    weights: dict[str, float] = Field(description="model name: share of the route's traffic")

    def target(self) -> str:
        return f"route:{self.route}"


class SetReplicas(_Tool):
    tool: Literal["set_replicas"] = "set_replicas"
    min_replicas: int
    max_replicas: int

    def target(self) -> str:
        return "pool"


class SetCircuit(_Tool):
    tool: Literal["set_circuit"] = "set_circuit"
    model: str = Field(pattern=NAME)
    replica: str = Field(max_length=200, description="the replica's key, as the snapshot lists it")
    state: Literal["open", "closed"] = Field(description="open: out of rotation until closed; closed: back in")

    def target(self) -> str:
        return f"replica:{self.model}/{self.replica}"


class ShedLoad(_Tool):
    tool: Literal["shed_load"] = "shed_load"
    model: str = Field(pattern=NAME, description="the model to protect")
    queue_above: int = Field(description="calls in flight to it above which its traffic goes to to_model")
    to_model: str = Field(pattern=NAME, description="the cheaper model that takes the overflow")

    def target(self) -> str:
        return f"shed:{self.model}"


class StopShedding(_Tool):
    tool: Literal["stop_shedding"] = "stop_shedding"
    model: str = Field(pattern=NAME)

    def target(self) -> str:
        return f"shed:{self.model}"


class RolloutAction(_Tool):
    tool: Literal["rollout"] = "rollout"
    rollout_id: str = Field(pattern=NAME)
    action: Literal["pause", "resume", "abort"]

    def target(self) -> str:
        return f"rollout:{self.rollout_id}"


class SetCostBudget(_Tool):
    tool: Literal["set_cost_budget"] = "set_cost_budget"
    per_hour: float = Field(description="cloud cost per hour, in the routing file's cost unit")


class Annotate(_Tool):
    tool: Literal["annotate"] = "annotate"
    text: str = Field(max_length=500)


Action = Annotated[
    Union[
        SetJudgeThreshold,
        SetRouteWeights,
        SetReplicas,
        SetCircuit,
        ShedLoad,
        StopShedding,
        RolloutAction,
        SetCostBudget,
        Annotate,
    ],
    Field(discriminator="tool"),
]
TOOLS = ("set_judge_threshold", "set_route_weights", "set_replicas", "set_circuit", "shed_load", "stop_shedding",
         "rollout", "set_cost_budget", "annotate")  # fmt: skip
MAX_ACTIONS = 4


class Decision(BaseModel):
    """What a language model must answer: a few tool calls and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    actions: list[Action] = Field(max_length=MAX_ACTIONS)
    explanation: str = Field("", max_length=500)


_ACTION: TypeAdapter[Any] = TypeAdapter(Action)


class Malformed(Exception):
    """A model's output that is not a Decision: not JSON, or not the schema. Recorded, never applied."""


def parse_decision(raw: str) -> Decision:
    """The model's raw text as a Decision, or Malformed saying what is wrong."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise Malformed(f"not JSON: {exc}") from exc
    try:
        return Decision.model_validate(data)
    except ValidationError as exc:
        raise Malformed(describe_errors(exc)) from exc


def parse_action(data: Any) -> Any:
    """One stored action (JSON) back to its type."""
    return _ACTION.validate_python(data)


def decision_schema() -> dict[str, Any]:
    """The JSON schema a language model's answer is constrained to (llama.cpp grammar, or response_format)."""
    return Decision.model_json_schema()


def groups_touched(action: Any) -> list[str]:
    """The device groups an action changes; none: it changes the hub (routes, replicas, budget, rollouts)."""
    return [action.group] if isinstance(action, SetJudgeThreshold) else []


def dump(action: Optional[BaseModel]) -> Optional[dict[str, Any]]:
    return None if action is None else action.model_dump(mode="json")
