"""The judge: which answers the device keeps, which go to the hub, and every trace's state.

``states`` is the trace state machine of DESIGN.md; ``policies`` holds the
small rules the judge combines; ``judge.Judge`` applies them; ``calibrate``
picks thresholds from a labelled stream.
"""

from edge.judge.judge import Judge, JudgeDecision, RateLimit, build_policies
from edge.judge.policies import ConfidenceThreshold, JudgeInput, Policy, PolicyResult, Verdict
from edge.judge.states import IllegalTransition, TraceMachine, TraceState, Transition

__all__ = [
    "ConfidenceThreshold",
    "IllegalTransition",
    "Judge",
    "JudgeDecision",
    "JudgeInput",
    "Policy",
    "PolicyResult",
    "RateLimit",
    "TraceMachine",
    "TraceState",
    "Transition",
    "Verdict",
    "build_policies",
]
