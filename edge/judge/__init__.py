"""The judge: which answers the device keeps, which go to the hub, and every trace's state.

``states`` is the trace state machine of DESIGN.md; ``policies`` holds the
small rules the judge combines; ``judge.Judge`` applies them.
"""

from edge.judge.judge import Judge, JudgeDecision
from edge.judge.policies import ConfidenceThreshold, Policy, Verdict
from edge.judge.states import IllegalTransition, TraceMachine, TraceState, Transition

__all__ = [
    "ConfidenceThreshold",
    "IllegalTransition",
    "Judge",
    "JudgeDecision",
    "Policy",
    "TraceMachine",
    "TraceState",
    "Transition",
    "Verdict",
]
