"""The judge combines its policies into one decision per prediction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge.config import JudgeConfig
from edge.judge.policies import ConfidenceThreshold, FiniteScores, Policy, Verdict
from protocol.messages import Prediction


@dataclass(frozen=True)
class JudgeDecision:
    verdict: Verdict
    reasons: tuple[str, ...]
    """``policy: why`` for each policy that did not say KEEP (or all of them, if all kept)."""

    @property
    def escalate(self) -> bool:
        return self.verdict is Verdict.ESCALATE


class Judge:
    def __init__(self, policies: Sequence[Policy]) -> None:
        self._policies = tuple(policies)

    @classmethod
    def from_config(cls, config: JudgeConfig) -> Judge:
        return cls([FiniteScores(), ConfidenceThreshold(config.confidence_threshold)])

    def decide(self, prediction: Prediction) -> JudgeDecision:
        results = [(p.name, p.check(prediction)) for p in self._policies]
        for verdict in (Verdict.UNJUDGEABLE, Verdict.ESCALATE):
            flagged = tuple(f"{name}: {r.reason}" for name, r in results if r.verdict is verdict)
            if flagged:
                return JudgeDecision(verdict, flagged)
        return JudgeDecision(Verdict.KEEP, tuple(f"{name}: {r.reason}" for name, r in results))
