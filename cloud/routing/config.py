"""The routing rules (``deploy/cloud/routing.yaml``): which models exist, and which of them answer which escalation.

    models:            name -> the ONNX file or registry version (its contract), cost, and the replicas that serve it
    routes:            the first route whose ``when`` matches an escalation handles it
    balancing/breaker/cache: how replicas are chosen, ejected, and answers reused

Everything is checked when the file is loaded, and a bad file is refused as a
whole with every problem named: a running hub keeps its old rules.
"""

from __future__ import annotations

import enum
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import Field, ValidationError, model_validator

from cloud.errors import RegistryError, RoutingError
from cloud.registry.models import ModelStatus
from cloud.registry.store import Registry
from common.config import StrictModel, describe_errors, read_yaml_mapping


class ServeReplica(StrictModel):
    """The hub's own model deployment (Ray Serve, many models per replica, loaded on demand)."""

    backend: Literal["serve"] = "serve"

    @property
    def key(self) -> str:
        return "serve"


class TritonReplica(StrictModel):
    """An external server that speaks the Open Inference Protocol v2 (Triton, KServe, or another hub)."""

    backend: Literal["triton"]
    url: str = Field(description="host:port of the server (its gRPC port for protocol grpc, HTTP port for http)")
    protocol: Literal["grpc", "http"] = Field("grpc", description="which v2 transport tritonclient uses")
    remote_name: Optional[str] = Field(None, description="the model's name on that server; default: its name here")
    timeout_ms: int = Field(5000, gt=0, description="network timeout of one call")

    @property
    def key(self) -> str:
        return f"triton-{self.protocol}://{self.url}"


Replica = Union[ServeReplica, TritonReplica]


REGISTRY_REF = r"^(?P<name>[a-z0-9][a-z0-9._-]{0,63})@(?P<version>[A-Za-z0-9][A-Za-z0-9._+-]{0,31})$"


class OnnxModelEntry(StrictModel):
    kind: Literal["onnx"] = "onnx"
    path: Optional[Path] = Field(
        None, description="the ONNX classifier (tandem.* metadata); relative to the routing file"
    )
    registry: Optional[str] = Field(
        None, pattern=REGISTRY_REF, description="instead of path: a registry version, NAME@VERSION (its artifact)"
    )
    cost_per_1k: Optional[float] = Field(
        None, ge=0, description="what 1,000 calls cost, in any unit; traces sum it. Default: the registry's, else 0"
    )
    replicas: list[Replica] = Field(
        default_factory=lambda: list[Replica]([ServeReplica()]),
        min_length=1,
        description="who serves it; the balancer picks one",
    )

    @model_validator(mode="after")
    def _one_source(self) -> OnnxModelEntry:
        if (self.path is None) == (self.registry is None):
            raise ValueError("give the model's path or its registry version (NAME@VERSION), one of the two")
        return self

    @model_validator(mode="after")
    def _distinct_replicas(self) -> OnnxModelEntry:
        keys = [r.key for r in self.replicas]
        if len(set(keys)) != len(keys):
            raise ValueError(f"replicas are listed twice: {keys}")
        return self

    @property
    def registry_version(self) -> Optional[tuple[str, str]]:
        """(name, version) when the model comes from the registry."""
        if self.registry is None:
            return None
        name, _, version = self.registry.partition("@")
        return name, version

    @property
    def model_file(self) -> Path:
        """The ONNX file; for a registry version, only once ``resolve_registry`` has filled it in."""
        if self.path is None:
            raise RoutingError(f"registry model {self.registry} has not been resolved to its artifact")
        return self.path

    @property
    def cost_per_call(self) -> float:
        return (self.cost_per_1k or 0.0) / 1000.0


class ParserModelEntry(StrictModel):
    """A rule, not a network: it checks the previous step's answer (``aggregate: chain``)."""

    kind: Literal["parser"]
    pattern: str = Field(description="a regular expression the previous answer's top label must match in full")
    cost_per_1k: float = Field(0.0, ge=0)

    @property
    def cost_per_call(self) -> float:
        return self.cost_per_1k / 1000.0


ModelEntry = Union[OnnxModelEntry, ParserModelEntry]


class When(StrictModel):
    """Conditions on an escalation; every one given must hold. Lists mean "any of"; ids allow glob patterns."""

    model_hint: Optional[list[str]] = Field(None, description="the device's model_hint is one of these")
    device_id: Optional[list[str]] = Field(None, description="glob patterns, e.g. cam-7*")
    device_group: Optional[list[str]] = Field(None, description="the request's device_group attribute")
    local_label: Optional[list[str]] = Field(None, description="the device's own top label")
    local_confidence_below: Optional[float] = Field(None, ge=0, le=1, description="the device's top score is below")
    local_confidence_at_least: Optional[float] = Field(None, ge=0, le=1)
    input_bytes_above: Optional[int] = Field(None, ge=0, description="the image or tensor has more bytes than this")
    input_bytes_at_most: Optional[int] = Field(None, ge=0)
    tags: Optional[dict[str, str]] = Field(None, description="request attributes that must have these values")
    model_queue_above: Optional[dict[str, int]] = Field(
        None,
        description="load: each named model has more calls in flight than this (all its replicas), e.g. "
        "{strong: 32} on a route to a cheaper model, placed before strong's route, sheds strong's overflow",
    )


class Strategy(str, enum.Enum):
    SINGLE = "single"
    PARALLEL = "parallel"
    FIRST_SUCCESS = "first_success"
    FALLBACK = "fallback"
    CASCADE = "cascade"
    WEIGHTED = "weighted"


class Aggregate(str, enum.Enum):
    VOTE = "vote"
    MAX_CONFIDENCE = "max_confidence"
    WEIGHTED = "weighted"
    CHAIN = "chain"
    WBF = "wbf"
    NMS = "nms"


class Step(StrictModel):
    model: str = Field(description="a name under models")
    deadline_ms: int = Field(5000, gt=0, description="time for the step, all its attempts together")
    retries: int = Field(0, ge=0, le=5, description="attempts after the first failure (on another replica if any)")
    required: bool = Field(True, description="a hard step: its failure fails the request; false: skipped")
    weight: float = Field(1.0, gt=0, description="weighted strategy: share of traffic; weighted aggregate: vote weight")


# How many steps each strategy takes.
_STEPS = {
    Strategy.SINGLE: (1, 1),
    Strategy.PARALLEL: (2, 16),
    Strategy.FIRST_SUCCESS: (2, 16),
    Strategy.FALLBACK: (2, 16),
    Strategy.CASCADE: (2, 16),
    Strategy.WEIGHTED: (2, 16),
}


class Route(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    when: When = Field(default_factory=When, description="no conditions: matches every escalation")
    strategy: Strategy = Strategy.SINGLE
    steps: list[Step]
    gate: float = Field(0.9, ge=0, le=1, description="cascade: the next step runs only below this confidence")
    aggregate: Optional[Aggregate] = Field(
        None, description="parallel only: how the answers combine (chain: in order, each fed the previous answer)"
    )
    cache: bool = Field(True, description="reuse an earlier answer for the same input and decision")

    @model_validator(mode="after")
    def _shape(self) -> Route:
        low, high = _STEPS[self.strategy]
        if not low <= len(self.steps) <= high:
            raise ValueError(f"strategy {self.strategy.value} takes {low}-{high} steps, not {len(self.steps)}")
        if self.strategy is Strategy.PARALLEL and self.aggregate is None:
            raise ValueError("strategy parallel needs aggregate: vote, max_confidence, weighted, chain, wbf or nms")
        if self.strategy is not Strategy.PARALLEL and self.aggregate is not None:
            raise ValueError(f"aggregate is for strategy parallel; {self.strategy.value} answers with one step")
        return self


class Balancing(StrictModel):
    """Replica score = latency_weight / latency + throughput_weight * throughput / max + resource_weight / load,
    each term scaled to 0..1 across the model's replicas, times (1 - error rate); a replica is picked at
    random in proportion to its score."""

    latency_weight: float = Field(0.5, ge=0)
    throughput_weight: float = Field(0.3, ge=0)
    resource_weight: float = Field(0.2, ge=0)
    window_s: float = Field(10.0, gt=0, description="throughput and error rate are measured over this window")


class Breaker(StrictModel):
    failure_threshold: int = Field(5, ge=1, description="consecutive failures that open a replica's circuit")
    open_ms: int = Field(10_000, gt=0, description="how long an open circuit rejects before one probe is let through")


class Cache(StrictModel):
    enabled: bool = True
    ttl_s: float = Field(60.0, gt=0, description="an answer is reused for this long")
    max_entries: int = Field(10_000, ge=1, description="least recently used answers go first")


class RoutingConfig(StrictModel):
    models: dict[str, ModelEntry] = Field(min_length=1)
    routes: list[Route] = Field(min_length=1, description="checked in order; the first match handles the request")
    balancing: Balancing = Field(default_factory=Balancing)
    breaker: Breaker = Field(default_factory=Breaker)
    cache: Cache = Field(default_factory=Cache)

    @model_validator(mode="after")
    def _references(self) -> RoutingConfig:
        problems = []
        names = [r.name for r in self.routes]
        if len(set(names)) != len(names):
            problems.append(f"route names repeat: {names}")
        for route in self.routes:
            for name in route.when.model_queue_above or {}:
                if name not in self.models:
                    problems.append(f"route {route.name}: model_queue_above names {name!r}, not under models")
            for index, step in enumerate(route.steps):
                entry = self.models.get(step.model)
                if entry is None:
                    problems.append(f"route {route.name}: step {index} names model {step.model!r}, not under models")
                elif isinstance(entry, ParserModelEntry) and not (route.aggregate is Aggregate.CHAIN and index > 0):
                    problems.append(
                        f"route {route.name}: {step.model} is a parser; it reads another step's answer, "
                        "so it can only follow a step in aggregate: chain"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def digest(self) -> str:
        """A short hash of the rules; part of every cache key, so changed rules never reuse old answers."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def onnx_models(self) -> dict[str, OnnxModelEntry]:
        return {name: m for name, m in self.models.items() if isinstance(m, OnnxModelEntry)}


def parse_routing(raw: Any, source: str = "routing") -> RoutingConfig:
    """Validated rules, or RoutingError naming every problem."""
    try:
        return RoutingConfig.model_validate(raw)
    except ValidationError as exc:
        raise RoutingError(f"{source}: {describe_errors(exc)}") from exc


def load_routing(path: Path) -> RoutingConfig:
    """A routing YAML file; model paths in it are taken from the file's folder."""
    raw = read_yaml_mapping(path, RoutingError)
    models = raw.get("models")
    for entry in models.values() if isinstance(models, dict) else ():  # anything else: refused by the validation
        if isinstance(entry, dict) and isinstance(entry.get("path"), str) and not Path(entry["path"]).is_absolute():
            entry["path"] = str((path.parent / entry["path"]).resolve())
    return parse_routing(raw, str(path))


def resolve_registry(routing: RoutingConfig, registry: Registry) -> RoutingConfig:
    """The rules with each ``registry: NAME@VERSION`` model pointed at its artifact, and its cost taken
    from the registry unless the rules set one. RoutingError names every version that cannot be served
    (unknown, retired, or its artifact missing)."""
    resolved: dict[str, ModelEntry] = dict(routing.models)
    problems = []
    for name, entry in routing.onnx_models().items():
        ref = entry.registry_version
        if ref is None:
            continue
        try:
            version = registry.get(*ref)
            if version.status is ModelStatus.RETIRED:
                raise RegistryError(f"{entry.registry} is retired")
            path = registry.artifact(*ref)
        except RegistryError as exc:
            problems.append(f"model {name}: {exc}")
            continue
        cost = entry.cost_per_1k if entry.cost_per_1k is not None else version.cost_per_1k
        resolved[name] = entry.model_copy(update={"path": path, "cost_per_1k": cost})
    if problems:
        raise RoutingError("registry: " + "; ".join(problems))
    return routing.model_copy(update={"models": resolved})


def single_model_routing(model_path: Path) -> RoutingConfig:
    """The rules when none are given: every escalation to the hub's one model."""
    return RoutingConfig(
        models={"strong": OnnxModelEntry(path=model_path)},
        routes=[Route(name="default", steps=[Step(model="strong")])],
    )
