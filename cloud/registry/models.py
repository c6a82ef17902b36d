"""What the registry knows about a model version, and the status a version moves through.

    registered --serve--> serving --drain--> draining --retire--> retired
         └──────────────────retire──────────────────────────────────┘
    draining --serve--> serving (a drain called off)

A version is named ``name`` + ``version``; its artifact is content-addressed by sha256.
"""

from __future__ import annotations

import enum
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class ModelStatus(str, enum.Enum):
    REGISTERED = "registered"
    SERVING = "serving"
    DRAINING = "draining"
    RETIRED = "retired"


S = ModelStatus
TRANSITIONS: dict[ModelStatus, frozenset[ModelStatus]] = {
    S.REGISTERED: frozenset({S.SERVING, S.RETIRED}),
    S.SERVING: frozenset({S.DRAINING, S.RETIRED}),
    S.DRAINING: frozenset({S.SERVING, S.RETIRED}),
    S.RETIRED: frozenset(),
}


class ModelSpec(BaseModel):
    """What an operator registers (everything but the artifact's bytes)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="the model's name, e.g. digits-strong")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$", description="its version, e.g. 3 or 2026.11")
    task: str = Field(description="what it does: classification, text_detection, ocr, ...")
    tags: list[str] = Field([], description="free labels to query by, e.g. digits, plates, canary")
    input_schema: dict[str, Any] = Field({}, description="the input tensor(s): name, dtype, shape")
    output_schema: dict[str, Any] = Field({}, description="the output tensor(s)")
    precision: Literal["fp32", "fp16", "int8"] = Field("fp32", description="the weights' precision")
    device_class: Literal["cpu", "gpu", "jetson"] = Field("cpu", description="where it is meant to run")
    latency_ms: Optional[float] = Field(None, ge=0, description="measured latency of one input")
    accuracy: Optional[float] = Field(None, ge=0, le=1, description="accuracy on the reference set")
    cost_per_1k: float = Field(0.0, ge=0, description="cost of 1,000 calls, in the fleet's cost unit")
    owner: str = Field(
        "", description="the tenant the model belongs to (set from a tenant operator's token); empty: the hub's"
    )


class ModelUpdate(BaseModel):
    """Fields an operator may change after registration (the artifact never changes: register a new version)."""

    model_config = ConfigDict(extra="forbid")

    status: Optional[ModelStatus] = None
    tags: Optional[list[str]] = None
    latency_ms: Optional[float] = Field(None, ge=0)
    accuracy: Optional[float] = Field(None, ge=0, le=1)
    cost_per_1k: Optional[float] = Field(None, ge=0)
    health: Optional[Literal["unknown", "healthy", "degraded", "failing"]] = None
    replicas: Optional[list[str]] = None


class ModelVersion(ModelSpec):
    """A registered version: the spec, its artifact, and its state."""

    artifact_sha256: str
    artifact_bytes: int
    status: ModelStatus = ModelStatus.REGISTERED
    health: str = "unknown"
    replicas: list[str] = []
    registered_at: float
    updated_at: float
