"""The trace state machine.

    RAW -> INFERRED -> JUDGED -> COMPLETE                    confident: the local answer stands
                       JUDGED -> PENDING_CLOUD -> COMPLETE   the hub's verdict arrived in time
                       PENDING_CLOUD -> TIMED_OUT -> FALLBACK_COMPLETE
                                                             no verdict by the deadline (or the
                                                             hub failed): the local answer stands;
                                                             a late verdict is still recorded
    RAW | INFERRED -> UNJUDGEABLE                            undecodable frame, failed inference,
                                                             scores that are not numbers

Every transition is kept with its time and reason; an illegal one raises.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional


class TraceState(str, enum.Enum):
    RAW = "RAW"
    INFERRED = "INFERRED"
    JUDGED = "JUDGED"
    COMPLETE = "COMPLETE"
    PENDING_CLOUD = "PENDING_CLOUD"
    TIMED_OUT = "TIMED_OUT"
    FALLBACK_COMPLETE = "FALLBACK_COMPLETE"
    UNJUDGEABLE = "UNJUDGEABLE"


S = TraceState
ALLOWED: dict[TraceState, frozenset[TraceState]] = {
    S.RAW: frozenset({S.INFERRED, S.UNJUDGEABLE}),
    S.INFERRED: frozenset({S.JUDGED, S.UNJUDGEABLE}),
    S.JUDGED: frozenset({S.COMPLETE, S.PENDING_CLOUD}),
    S.PENDING_CLOUD: frozenset({S.COMPLETE, S.TIMED_OUT}),
    S.TIMED_OUT: frozenset({S.FALLBACK_COMPLETE}),
    # A late verdict updates the final answer of a fallen-back trace without leaving the state.
    S.FALLBACK_COMPLETE: frozenset({S.FALLBACK_COMPLETE}),
    S.COMPLETE: frozenset(),
    S.UNJUDGEABLE: frozenset(),
}
TERMINAL = frozenset({S.COMPLETE, S.FALLBACK_COMPLETE, S.UNJUDGEABLE})


class IllegalTransition(Exception):
    def __init__(self, source: TraceState, target: TraceState) -> None:
        super().__init__(f"a trace cannot go from {source.value} to {target.value}")
        self.source = source
        self.target = target


@dataclass(frozen=True)
class Transition:
    at: float
    source: TraceState
    target: TraceState
    reason: str

    def to_json(self) -> list[object]:
        return [self.at, self.source.value, self.target.value, self.reason]

    @classmethod
    def from_json(cls, row: list[object]) -> Transition:
        at, source, target, reason = row
        return cls(float(at), TraceState(source), TraceState(target), str(reason))  # type: ignore[arg-type]


@dataclass
class TraceMachine:
    """One trace's current state and the path that led there."""

    state: TraceState = TraceState.RAW
    history: list[Transition] = field(default_factory=list)

    def advance(self, target: TraceState, reason: str, at: float) -> Transition:
        if target not in ALLOWED[self.state]:
            raise IllegalTransition(self.state, target)
        step = Transition(at, self.state, target, reason)
        self.history.append(step)
        self.state = target
        return step

    def can(self, target: TraceState) -> bool:
        return target in ALLOWED[self.state]

    @property
    def last_reason(self) -> Optional[str]:
        return self.history[-1].reason if self.history else None
