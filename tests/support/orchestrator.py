"""Parts for the orchestrator's unit tests: snapshots built by hand, and fakes that subclass the real interfaces."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Optional

from cloud.errors import ActionFailed
from cloud.orchestrator import actions as a
from cloud.orchestrator.actuator import Actuator, Undo, inverse
from cloud.orchestrator.advisor import Advisor, AdvisorUnavailable
from cloud.orchestrator.config import OrchestratorConfig, Watched
from cloud.orchestrator.snapshot import GroupView, ModelView, Observer, ReplicaView, Snapshot


def replica(key: str, calls: int = 0, errors: int = 0, state: str = "closed") -> ReplicaView:
    return ReplicaView(key, state, calls / 10.0, errors / calls if calls else 0.0, 0, calls)


def model(name: str, calls_per_s: float, p99_ms: float = 50.0, cost: float = 0.001, replicas=None) -> ModelView:
    replicas = tuple(replicas or (replica("serve", int(calls_per_s * 10)),))
    return ModelView(name, cost, calls_per_s, 0, p99_ms / 2, p99_ms, 0.0, replicas)


def group(name: str, devices: int = 2, rate: float = 5.0, threshold: Optional[float] = 0.9, outbox: int = 0):
    return GroupView(name, devices, devices, rate, 0.0, outbox, 0.0, threshold, ("strong",))


def snapshot(at: float = 1000.0, strong_rate: float = 5.0, **kw: Any) -> Snapshot:
    fields: dict[str, Any] = {
        "at": at,
        "models": {"strong": model("strong", strong_rate, cost=0.01), "weak": model("weak", 1.0, cost=0.001)},
        "groups": {"lobby": group("lobby"), "gate": group("gate", rate=2.0)},
        "devices": 8,
    }
    fields.update(kw)
    return Snapshot(**fields)


def config(**kw: Any) -> OrchestratorConfig:
    base: dict[str, Any] = {
        "mode": "auto",
        "watch": [Watched(model="strong", capacity_per_s=10.0, cheaper="weak")],
        "cooldown_s": 0.0,
        "effect_after_s": 10.0,
        "llm": {"enabled": False},
    }
    base.update(kw)
    return OrchestratorConfig.model_validate(base)


class Observed(Observer):
    """Returns whatever snapshot the test sets; actions the fake actuator applies show up in it."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    async def observe(self) -> Snapshot:
        return self.snap


class RecordingActuator(Actuator):
    """Applies thresholds and circuits to the observed snapshot, so the next tick sees them; records everything."""

    def __init__(self, observed: Observed, fail: tuple[str, ...] = ()) -> None:
        self.observed = observed
        self.applied: list[Any] = []
        self.restored: list[tuple[str, dict[str, Any]]] = []
        self._fail = fail

    async def apply(self, action: Any) -> Optional[Undo]:
        if action.tool in self._fail:
            raise ActionFailed(f"{action.tool} cannot be done here")
        self.applied.append(action)
        snap = self.observed.snap
        if isinstance(action, a.SetJudgeThreshold):
            before = snap.groups[action.group]
            groups = {**snap.groups, action.group: replace(before, judge_threshold=action.confidence_threshold)}
            self.observed.snap = replace(snap, groups=groups)
            return {
                "group_settings": {
                    "group": action.group,
                    "settings": {"judge": {"confidence_threshold": before.judge_threshold}},
                }
            }
        if isinstance(action, a.SetCircuit):
            return inverse(a.SetCircuit(model=action.model, replica=action.replica,
                                        state="closed" if action.state == "open" else "open"))  # fmt: skip
        return None

    async def restore_group(self, group_name: str, settings: dict[str, Any]) -> None:
        self.restored.append((group_name, settings))


class ScriptedAdvisor(Advisor):
    """A language model whose answers the test writes (one per call; the last repeats)."""

    name = "scripted"

    def __init__(self, *answers: Any, fail: bool = False) -> None:
        self.answers = [json.dumps(x) if not isinstance(x, str) else x for x in answers]
        self.calls: list[list[dict[str, str]]] = []
        self.fail = fail

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> str:
        self.calls.append(messages)
        if self.fail:
            raise AdvisorUnavailable("scripted: down")
        return self.answers[min(len(self.calls), len(self.answers)) - 1]
