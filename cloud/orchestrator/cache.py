"""Decisions reused: the language model is asked once per situation, not once per tick.

A situation's fingerprint is what the answer should depend on, in coarse steps: each watched model's
utilisation band and SLO state, each failing replica, each group's threshold (to 0.05) and backlog, the cost
against the budget, the load rules and rollouts in force, the question asked, and the policy version (the
routing rules' digest). Two snapshots with the same fingerprint get the same advice; the hit rate is a metric.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional

from cachetools import LRUCache

from cloud.orchestrator.config import OrchestratorConfig
from cloud.orchestrator.snapshot import Snapshot


def fingerprint(snapshot: Snapshot, config: OrchestratorConfig, question: str) -> str:
    features: dict[str, Any] = {"q": question, "policy": snapshot.policy_version}
    for watched in config.watch:
        model = snapshot.models.get(watched.model)
        if model is not None:
            # 0.25-wide utilisation bands: 0.9 and 1.1 differ, 1.05 and 1.1 do not
            features[f"u:{model.name}"] = round(model.calls_per_s / watched.capacity_per_s * 4)
            features[f"slo:{model.name}"] = model.p99_ms is not None and model.p99_ms > watched.p99_slo_ms
    for model in snapshot.models.values():
        for replica in model.replicas:
            failing = replica.calls >= config.replica_min_calls and replica.error_rate >= config.replica_error_rate
            features[f"r:{model.name}/{replica.key}"] = (replica.state, failing)
    for group in snapshot.groups.values():
        threshold = None if group.judge_threshold is None else round(group.judge_threshold * 20)
        features[f"g:{group.name}"] = (threshold, group.outbox_rows > config.backlog_rows, group.online > 0)
    budget = snapshot.cost_budget_per_hour
    features["cost"] = None if budget is None else round(snapshot.cost_per_hour / budget * 4)
    features["shed"] = sorted(snapshot.shedding)
    features["rollouts"] = sorted(snapshot.rollouts)
    return hashlib.sha256(json.dumps(features, sort_keys=True).encode()).hexdigest()[:24]


class DecisionCache:
    def __init__(self, size: int) -> None:
        self._entries: LRUCache[str, str] = LRUCache(maxsize=size)
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Optional[str]:
        """The model's raw answer for this fingerprint, if it was asked before."""
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def put(self, key: str, raw: str) -> None:
        self._entries[key] = raw

    @property
    def hit_rate(self) -> float:
        asked = self.hits + self.misses
        return self.hits / asked if asked else 0.0
