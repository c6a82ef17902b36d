"""Judge policies: each looks at one prediction and says keep, escalate, or cannot judge.

A policy is small and named; the judge runs them in order and combines their
verdicts (any ``UNJUDGEABLE`` wins, then any ``ESCALATE``).
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass

from protocol.messages import Prediction


class Verdict(enum.Enum):
    KEEP = "keep"
    ESCALATE = "escalate"
    UNJUDGEABLE = "unjudgeable"


@dataclass(frozen=True)
class PolicyResult:
    verdict: Verdict
    reason: str


class Policy(abc.ABC):
    name: str

    @abc.abstractmethod
    def check(self, prediction: Prediction) -> PolicyResult:
        """Judge one prediction."""


class FiniteScores(Policy):
    """Scores that are NaN or infinite cannot be judged; they are never taken as confident."""

    name = "finite_scores"

    def check(self, prediction: Prediction) -> PolicyResult:
        if prediction.is_finite:
            return PolicyResult(Verdict.KEEP, "scores are finite")
        return PolicyResult(Verdict.UNJUDGEABLE, "scores are not finite numbers")


@dataclass(frozen=True)
class ConfidenceThreshold(Policy):
    """Escalate when the top score is below ``threshold``."""

    threshold: float
    name = "confidence"

    def check(self, prediction: Prediction) -> PolicyResult:
        confidence = prediction.confidence
        if confidence < self.threshold:
            return PolicyResult(Verdict.ESCALATE, f"confidence {confidence:.3f} < {self.threshold:.3f}")
        return PolicyResult(Verdict.KEEP, f"confidence {confidence:.3f} >= {self.threshold:.3f}")
