"""The judge combines its policies into one decision per prediction.

    policies (only the enabled ones)  ->  any UNJUDGEABLE wins, then any ESCALATE, else KEEP
    escalate mode                     ->  'never' turns ESCALATE into KEEP, 'always' the reverse
    random audit                      ->  turns a small share of KEEP into ESCALATE
    rate limit                        ->  turns ESCALATE over the budget back into KEEP

Every step that changes the decision adds its reason, so a trace says why.
"""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Optional

from edge.config import JudgeConfig
from edge.judge.adapt import ThresholdTracker
from edge.judge.policies import (
    Blur,
    BoxThresholds,
    ConfidenceThreshold,
    Entropy,
    FiniteScores,
    JudgeInput,
    Margin,
    OutOfDistribution,
    Policy,
    SensorGate,
    UnknownClasses,
    Verdict,
)
from protocol.messages import Box, Prediction


@dataclass(frozen=True)
class JudgeDecision:
    verdict: Verdict
    reasons: tuple[str, ...]
    """``policy: why`` for each policy that decided (all of them when all kept)."""
    uncertain: bool = False
    """A policy found the answer uncertain, whether or not it was escalated."""
    cause: str = "confident"
    """What settled the verdict, for metrics: a policy's name, or audit, rate_limit, escalate=never|always."""

    @property
    def escalate(self) -> bool:
        return self.verdict is Verdict.ESCALATE


class RateLimit:
    """At most ``per_minute`` escalations in any sliding 60 s window."""

    WINDOW_S = 60.0

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._sent: collections.deque[float] = collections.deque()

    def allow(self) -> bool:
        now = self._clock()
        while self._sent and self._sent[0] <= now - self.WINDOW_S:
            self._sent.popleft()
        if len(self._sent) >= self.per_minute:
            return False
        self._sent.append(now)
        return True


class Judge:
    def __init__(
        self,
        policies: Sequence[Policy],
        *,
        escalate: str = "uncertain",
        audit_rate: float = 0.0,
        audit_seed: Optional[int] = None,
        rate_limit: Optional[RateLimit] = None,
        confidence_threshold: Optional[float] = None,
        tracker: Optional[ThresholdTracker] = None,
    ) -> None:
        """``confidence_threshold``: the threshold its policies apply, as the heartbeat reports it; ``tracker``:
        moves it after every frame to hold a target escalation rate (``edge.judge.adapt``)."""
        self.policies = tuple(policies)
        self.confidence_threshold = confidence_threshold
        self._tracker = tracker
        self._escalate = escalate
        self._audit_rate = audit_rate
        self._audit = random.Random(audit_seed)
        self._rate_limit = rate_limit

    @classmethod
    def from_config(cls, config: JudgeConfig, clock: Callable[[], float] = time.monotonic) -> Judge:
        per_minute = config.max_escalations_per_minute
        return cls(
            build_policies(config),
            escalate=config.escalate,
            audit_rate=config.audit_rate,
            audit_seed=config.audit_seed,
            rate_limit=RateLimit(per_minute, clock) if per_minute else None,
            confidence_threshold=config.confidence_threshold,
            tracker=(
                ThresholdTracker(
                    config.confidence_threshold,
                    config.target_escalation_rate,
                    config.threshold_bounds,
                    config.adapt_step,
                )
                if config.target_escalation_rate is not None
                else None
            ),
        )

    def decide(self, item: JudgeInput) -> JudgeDecision:
        decision = self.combine(item)
        if self._tracker is not None and item.prediction.is_finite:
            self._follow(self._tracker.observe(item.prediction.confidence))
        if decision.verdict is Verdict.UNJUDGEABLE:
            return decision
        reasons = decision.reasons
        if self._escalate == "never" and decision.escalate:
            return JudgeDecision(Verdict.KEEP, (*reasons, "escalate=never: kept on the device"), True, "escalate=never")
        if self._escalate == "always" and not decision.escalate:
            decision = JudgeDecision(Verdict.ESCALATE, (*reasons, "escalate=always"), False, "escalate=always")
        elif not decision.escalate and self._audit_rate and self._audit.random() < self._audit_rate:
            audit = f"audit: random {self._audit_rate:.1%} check"
            decision = JudgeDecision(Verdict.ESCALATE, (*reasons, audit), False, "audit")
        if decision.escalate and self._rate_limit is not None and not self._rate_limit.allow():
            spent = f"rate_limit: {self._rate_limit.per_minute}/min spent, kept"
            return JudgeDecision(Verdict.KEEP, (*decision.reasons, spent), decision.uncertain, "rate_limit")
        return decision

    def _follow(self, threshold: float) -> None:
        """The confidence policy (and the out-of-distribution one, which holds it) at the tracker's threshold."""
        if self.confidence_threshold is not None and abs(threshold - self.confidence_threshold) < 1e-4:
            return
        moved: dict[int, ConfidenceThreshold] = {}
        for policy in self.policies:
            if isinstance(policy, ConfidenceThreshold):
                moved[id(policy)] = replace(policy, threshold=threshold)
        self.policies = tuple(
            replace(p, confidence=moved.get(id(p.confidence), p.confidence))
            if isinstance(p, OutOfDistribution)
            else moved.get(id(p), p)
            for p in self.policies
        )
        self.confidence_threshold = threshold

    def uncertain_boxes(self, prediction: Prediction) -> list[Box]:
        """The boxes the policies doubt: weak ones and those of an 'unknown' class (what a crop escalates)."""
        doubted: dict[int, Box] = {}
        for policy in self.policies:
            if isinstance(policy, BoxThresholds):
                doubted.update((id(b), b) for b in policy.weak(prediction))
            elif isinstance(policy, UnknownClasses):
                doubted.update((id(b), b) for b in policy.boxes(prediction))
        return [b for b in prediction.boxes if id(b) in doubted]

    def combine(self, item: JudgeInput) -> JudgeDecision:
        """The policies' verdicts alone: any UNJUDGEABLE wins, then any ESCALATE."""
        results = [(p.name, p.check(item)) for p in self.policies]
        for verdict in (Verdict.UNJUDGEABLE, Verdict.ESCALATE):
            flagged = [(name, r.reason) for name, r in results if r.verdict is verdict]
            if flagged:
                reasons = tuple(f"{name}: {why}" for name, why in flagged)
                return JudgeDecision(verdict, reasons, verdict is Verdict.ESCALATE, flagged[0][0])
        return JudgeDecision(Verdict.KEEP, tuple(f"{name}: {r.reason}" for name, r in results))


def build_policies(config: JudgeConfig, *, confidence: bool = True) -> list[Policy]:
    """The enabled policies, cheapest first. ``confidence=False`` leaves the threshold out (for calibration)."""
    threshold = ConfidenceThreshold(config.confidence_threshold, MappingProxyType(dict(config.class_thresholds)))
    policies: list[Policy] = [FiniteScores()]
    if confidence:
        policies.append(threshold)
    if config.min_margin > 0:
        policies.append(Margin(config.min_margin))
    if config.max_entropy < 1:
        policies.append(Entropy(config.max_entropy))
    if config.unknown_labels:
        policies.append(UnknownClasses(frozenset(config.unknown_labels)))
    if config.max_weak_box_share < 1:
        per_class = MappingProxyType(dict(config.box_class_thresholds))
        policies.append(BoxThresholds(config.box_threshold, config.max_weak_box_share, per_class, config.box_floor))
    policies.extend(SensorGate(g.sensor, g.above, g.below) for g in config.sensor_gates)
    if config.min_sharpness > 0:
        policies.append(Blur(config.min_sharpness))
    if config.ood is not None and confidence:
        o = config.ood
        policies.append(
            OutOfDistribution(
                o.brightness_mean, o.brightness_std, o.contrast_mean, o.contrast_std, o.z_tolerance, threshold
            )
        )
    return policies
