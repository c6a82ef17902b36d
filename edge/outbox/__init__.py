"""The device's durable state: every trace (``traces``) and the outbox of escalations (``outbox``), in one
SQLite file (``database``), joined by ``store.EdgeStore``.

Both live in one file so that a trace and its outbox row are written in one
transaction: an escalation is never recorded without its trace, or the other
way round.
"""

from edge.outbox.records import (
    FailedRow,
    OutboxDepth,
    OutboxLimits,
    OutboxRow,
    OutboxStatus,
    TraceRecord,
    VerdictOutcome,
)
from edge.outbox.store import EdgeStore

__all__ = [
    "EdgeStore",
    "FailedRow",
    "OutboxDepth",
    "OutboxLimits",
    "OutboxRow",
    "OutboxStatus",
    "TraceRecord",
    "VerdictOutcome",
]
