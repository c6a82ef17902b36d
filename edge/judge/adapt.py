"""Holding a target escalation rate on the device's own stream (``judge.target_escalation_rate``).

A threshold calibrated on a few hundred frames escalates whatever share those frames gave it: on the
device's own stream the share drifts (another light, another season, a split of 252 frames that was lucky).
``ThresholdTracker`` moves the confidence threshold after every frame: up by ``step x target`` when the frame's
confidence was above it, down by ``step x (1 - target)`` when below. At equilibrium the two balance exactly
when the share of frames below the threshold is the target (Robbins-Monro quantile tracking), so the
threshold settles on the target-quantile of the stream's confidence and follows it as it drifts, never
leaving ``bounds``. The hub can steer it like any other judge setting (the fleet's settings layers).
"""

from __future__ import annotations


class ThresholdTracker:
    def __init__(self, start: float, target: float, bounds: tuple[float, float], step: float) -> None:
        if not 0.0 < target < 1.0:
            raise ValueError(f"target escalation rate {target} must be between 0 and 1")
        self.threshold = min(max(start, bounds[0]), bounds[1])
        self.target = target
        self.bounds = bounds
        self.step = step

    def observe(self, confidence: float) -> float:
        """One frame's top confidence; returns the threshold for the next frame."""
        below = confidence < self.threshold
        moved = self.threshold + self.step * (self.target - (1.0 if below else 0.0))
        self.threshold = min(max(moved, self.bounds[0]), self.bounds[1])
        return self.threshold
