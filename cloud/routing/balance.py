"""Choosing a replica: measured latency, throughput, load and errors, and a circuit breaker per replica.

    CLOSED --failure_threshold consecutive failures--> OPEN --open_ms--> HALF_OPEN (one probe)
    HALF_OPEN --probe succeeds--> CLOSED;  HALF_OPEN --probe fails--> OPEN

What counts as a failure: an error from the replica, or a timeout while the replica answered
nothing else (a hung replica). A timeout while the same replica answered other calls is this
request's slowness, not the replica's, and so is a bad input (the router releases those): it
lowers the replica's score through its error rate but never moves its circuit.

An operator (or the orchestrator) may hold a replica OPEN (``hold``): out of rotation, no probe, until
released. A model whose replicas are all OPEN is ejected: its calls fail at once with
ModelUnavailable until a probe is due. The breaker is a few lines here rather
than pybreaker, whose async support needs Tornado and whose state the
replica scoring could not read.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cloud.errors import ModelUnavailable
from cloud.routing.config import Balancing, Breaker

logger = logging.getLogger(__name__)


class CircuitState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class ReplicaStats:
    """What the hub has measured of one replica of one model."""

    key: str
    latency_ms: float | None = None  # exponentially weighted mean; None until the first answer
    in_flight: int = 0
    consecutive_failures: int = 0
    state: CircuitState = CircuitState.CLOSED
    opened_at: float = 0.0
    probing: bool = False
    answered_at: float = float("-inf")  # when it last answered a call
    held: bool = False  # held OPEN by an operator or the orchestrator: no traffic, no probe, until released
    # (finished at, succeeded, latency ms) of each call in the window
    outcomes: deque[tuple[float, bool, float]] = field(default_factory=deque)

    def error_rate(self) -> float:
        return sum(1 for _, ok, _ in self.outcomes if not ok) / len(self.outcomes) if self.outcomes else 0.0

    def throughput(self, window_s: float) -> float:
        return sum(1 for _, ok, _ in self.outcomes if ok) / window_s

    def latencies(self) -> list[float]:
        """The latencies of the window's successful calls."""
        return [ms for _, ok, ms in self.outcomes if ok]


class Balancer:
    """Replica choice and circuit breaking for every model the routing rules name."""

    LATENCY_SMOOTHING = 0.2

    def __init__(
        self,
        balancing: Balancing,
        breaker: Breaker,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._balancing = balancing
        self._breaker = breaker
        self._clock = clock
        self._rng = rng or random.Random()
        self._stats: dict[tuple[str, str], ReplicaStats] = {}

    def stats(self, model: str, key: str) -> ReplicaStats:
        found = self._stats.get((model, key))
        if found is None:
            found = self._stats[(model, key)] = ReplicaStats(key)
        return found

    def choose(self, model: str, keys: Sequence[str], exclude: Sequence[str] = ()) -> str:
        """The replica for the next call; ModelUnavailable if every one is ejected."""
        now = self._clock()
        usable = []
        for key in keys:
            stats = self.stats(model, key)
            self._expire(stats, now)
            if stats.held:
                continue
            if stats.state is CircuitState.OPEN and now - stats.opened_at >= self._breaker.open_ms / 1000.0:
                stats.state = CircuitState.HALF_OPEN
                logger.info("model %s replica %s: circuit half-open, probing", model, key)
            if stats.state is CircuitState.OPEN or (stats.state is CircuitState.HALF_OPEN and stats.probing):
                continue
            usable.append(stats)
        preferred = [s for s in usable if s.key not in exclude] or usable
        if not preferred:
            raise ModelUnavailable(f"model {model}: every replica's circuit is open ({', '.join(keys)})")
        chosen = self._pick(preferred)
        if chosen.state is CircuitState.HALF_OPEN:
            chosen.probing = True
        chosen.in_flight += 1
        return chosen.key

    def scores(self, model: str, keys: Sequence[str]) -> dict[str, float]:
        return dict(zip(keys, self._score([self.stats(model, k) for k in keys]), strict=True))

    def hold(self, model: str, key: str, held: bool) -> None:
        """Hold a replica's circuit OPEN (out of rotation until released), or release it CLOSED with a clean
        slate."""
        stats = self.stats(model, key)
        stats.held = held
        stats.state = CircuitState.OPEN if held else CircuitState.CLOSED
        stats.opened_at = self._clock()
        stats.consecutive_failures, stats.probing = 0, False
        logger.warning("model %s replica %s: circuit %s", model, key, "held open" if held else "closed (released)")

    def in_flight(self, model: str) -> int:
        """Calls to the model in flight now, all replicas together: its queue as the hub sees it."""
        return sum(s.in_flight for (m, _), s in self._stats.items() if m == model)

    def expire(self, model: str, key: str) -> ReplicaStats:
        """The replica's stats with calls older than the window dropped (for a snapshot between calls)."""
        stats = self.stats(model, key)
        self._expire(stats, self._clock())
        return stats

    def release(self, model: str, key: str) -> None:
        """A call that ended without saying anything about the replica (cancelled, or the input was bad)."""
        stats = self.stats(model, key)
        stats.in_flight = max(0, stats.in_flight - 1)
        stats.probing = False

    def record_timeout(self, model: str, key: str, waited_ms: float) -> None:
        """A call that got no answer in time: a failure if the replica answered nothing else meanwhile."""
        stats = self.stats(model, key)
        if stats.answered_at >= self._clock() - waited_ms / 1000.0:  # alive: it answered calls made after this one
            stats.in_flight = max(0, stats.in_flight - 1)
            stats.probing = False
            stats.outcomes.append((self._clock(), False, waited_ms))
            return
        self.record(model, key, False, waited_ms)

    def record(self, model: str, key: str, ok: bool, latency_ms: float) -> None:
        """One call's outcome: updates the measurements and the replica's circuit."""
        stats = self.stats(model, key)
        now = self._clock()
        stats.in_flight = max(0, stats.in_flight - 1)
        stats.outcomes.append((now, ok, latency_ms))
        self._expire(stats, now)
        if stats.held:  # a call that was in flight when the replica was held: measured, no state change
            return
        if ok:
            stats.answered_at = now
            a = self.LATENCY_SMOOTHING
            stats.latency_ms = latency_ms if stats.latency_ms is None else (1 - a) * stats.latency_ms + a * latency_ms
            if stats.state is not CircuitState.CLOSED:
                logger.info("model %s replica %s: circuit closed again", model, key)
            stats.state, stats.consecutive_failures, stats.probing = CircuitState.CLOSED, 0, False
            return
        stats.consecutive_failures += 1
        if stats.state is CircuitState.HALF_OPEN or stats.consecutive_failures >= self._breaker.failure_threshold:
            if stats.state is not CircuitState.OPEN:
                logger.warning(
                    "model %s replica %s: circuit open after %d failures", model, key, stats.consecutive_failures
                )
            stats.state, stats.opened_at, stats.probing = CircuitState.OPEN, now, False

    def _expire(self, stats: ReplicaStats, now: float) -> None:
        while stats.outcomes and now - stats.outcomes[0][0] > self._balancing.window_s:
            stats.outcomes.popleft()

    def _pick(self, candidates: list[ReplicaStats]) -> ReplicaStats:
        if len(candidates) == 1:
            return candidates[0]
        weights = self._score(candidates)
        if sum(weights) <= 0:
            return self._rng.choice(candidates)
        return self._rng.choices(candidates, weights=weights)[0]

    def _score(self, replicas: list[ReplicaStats]) -> list[float]:
        """0.5 / latency + 0.3 * throughput / max + 0.2 / load by default, each scaled to 0..1, x (1 - error rate).

        A replica not measured yet counts as the fastest, so it gets traffic and a measurement."""
        b = self._balancing
        latencies = [s.latency_ms for s in replicas if s.latency_ms is not None]
        fastest = min(latencies) if latencies else 1.0
        throughputs = [s.throughput(b.window_s) for s in replicas]
        busiest = max(throughputs) or 1.0
        scores = []
        for stats, throughput in zip(replicas, throughputs, strict=True):
            latency_term = 1.0 if stats.latency_ms is None else fastest / max(stats.latency_ms, 1e-6)
            throughput_term = throughput / busiest if throughputs and max(throughputs) > 0 else 1.0
            resource_term = 1.0 / (1 + stats.in_flight)
            score = b.latency_weight * latency_term + b.throughput_weight * throughput_term
            score += b.resource_weight * resource_term
            scores.append(score * (1.0 - stats.error_rate()))
        return scores
