"""What the orchestrator sees, refreshed every tick: a compact, typed picture of the hub and the fleet.

    models    per model: calls/s, calls in flight (its queue), p50/p99 latency, error rate, cost/hour, replicas
    groups    per device group: devices, online, escalations/s, fallbacks/s, outbox rows and oldest age, the
              judge threshold in effect
    routes    the weighted routes' weights; the load rules in force (shedding)
    pool      the model pool's replica bounds and running replicas, where the pool can say
    rollouts  the rollouts in progress
    budget    the cost per hour the rules keep under

``Observer`` is the interface; ``HubObserver`` reads a running hub; the replay harness has its own.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class ReplicaView:
    key: str
    state: str  # closed, open, half_open (a held replica is open)
    calls_per_s: float
    error_rate: float
    in_flight: int
    calls: int  # calls in the window, failures included


@dataclass(frozen=True)
class ModelView:
    name: str
    cost_per_call: float
    calls_per_s: float
    in_flight: int
    p50_ms: Optional[float]
    p99_ms: Optional[float]
    error_rate: float
    replicas: tuple[ReplicaView, ...] = ()

    @property
    def cost_per_hour(self) -> float:
        return self.calls_per_s * 3600.0 * self.cost_per_call


@dataclass(frozen=True)
class GroupView:
    name: str
    devices: int
    online: int
    escalations_per_s: float
    fallbacks_per_s: float
    outbox_rows: int
    outbox_age_s: float
    judge_threshold: Optional[float]  # the devices' mean; None: none reported one
    models: tuple[str, ...] = ()  # the routing rules' models its escalations can reach
    active_models: tuple[str, ...] = ()  # the model ids its devices run, as they reported them


@dataclass(frozen=True)
class PoolView:
    min_replicas: int
    max_replicas: int
    running: int


@dataclass(frozen=True)
class Snapshot:
    at: float
    models: dict[str, ModelView]
    groups: dict[str, GroupView]
    devices: int  # every known device, for the blast-radius bound
    routes: dict[str, dict[str, float]] = field(default_factory=dict)  # weighted route -> model -> weight
    shedding: dict[str, int] = field(default_factory=dict)  # model -> queue_above of its load rule
    pool: Optional[PoolView] = None
    rollouts: tuple[str, ...] = ()
    policy_version: str = ""
    # The orchestrator's own, filled in by it over what the observer saw:
    cost_budget_per_hour: Optional[float] = None
    slo: dict[str, dict[str, float]] = field(default_factory=dict)  # watched model -> capacity_per_s, p99_slo_ms

    @property
    def cost_per_hour(self) -> float:
        return sum(m.cost_per_hour for m in self.models.values())

    def compact(self) -> dict[str, Any]:
        """The snapshot as the language model and the audit log see it: short keys, rounded numbers."""
        return _rounded(
            {
                "models": {
                    name: {
                        "calls_per_s": m.calls_per_s,
                        "in_flight": m.in_flight,
                        "p50_ms": m.p50_ms,
                        "p99_ms": m.p99_ms,
                        "error_rate": m.error_rate,
                        "cost_per_hour": m.cost_per_hour,
                        "replicas": {r.key: {"state": r.state, "error_rate": r.error_rate} for r in m.replicas},
                    }
                    for name, m in self.models.items()
                },
                "groups": {
                    name: {k: v for k, v in asdict(g).items() if k not in ("name", "models")}
                    for name, g in self.groups.items()
                },
                "slo": self.slo,
                "routes": self.routes,
                "shedding": self.shedding,
                "pool": asdict(self.pool) if self.pool else None,
                "rollouts": list(self.rollouts),
                "cost_per_hour": self.cost_per_hour,
                "cost_budget_per_hour": self.cost_budget_per_hour,
            }
        )


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def percentile(values: list[float], share: float) -> Optional[float]:
    """The nearest-rank percentile (share 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


class Observer(abc.ABC):
    @abc.abstractmethod
    async def observe(self) -> Snapshot:
        """The system now."""
