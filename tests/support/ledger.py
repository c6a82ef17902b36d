"""The books of a device and a hub after a fault test: was anything lost, or applied twice?

``audit_device`` reads a device store (its SQLite file) and classifies every
escalated trace; ``hub_runs`` reads the hub's trace store for how often each
trace's model ran. Both read the files directly, so they also work on the
store of a device process that was killed.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

VERDICT_REASONS = ("cloud verdict", "late cloud verdict")


@dataclass
class DeviceBooks:
    integrity: str
    escalated: int = 0
    verdicts: int = 0  # answered by the hub in time (PENDING_CLOUD -> COMPLETE)
    late_verdicts: int = 0  # fell back at the deadline, then the hub's answer arrived
    failed_results: int = 0  # the hub answered with a failure (bad input, or its own timeout), in time or late
    waiting: int = 0  # no verdict yet, still in the outbox
    set_aside: int = 0  # in the failed table (a permanent rejection or the TTL), for tandem edge replay
    dropped: int = 0  # dropped by the outbox's bound (on_full), as its trace says
    lost: list[str] = field(default_factory=list)  # no verdict, no outbox row, no failed row: gone
    applied_twice: list[str] = field(default_factory=list)  # more than one verdict applied to one trace

    def figures(self) -> dict[str, object]:
        return {
            "escalations": self.escalated,
            "verdicts": self.verdicts,
            "late verdicts after fallback": self.late_verdicts,
            "still waiting": self.waiting,
            "dropped by the outbox bound": self.dropped,
            "hub failures": self.failed_results,
            "lost": len(self.lost),
            "verdicts applied twice": len(self.applied_twice),
        }


def integrity(path: Path) -> str:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def audit_device(path: Path) -> DeviceBooks:
    books = DeviceBooks(integrity(path))
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        queued = {r[0] for r in conn.execute("SELECT trace_id FROM outbox")}
        failed = {r[0] for r in conn.execute("SELECT trace_id FROM failed")}
        rows = conn.execute(
            "SELECT trace_id, history, cloud_label, dropped, cloud_result FROM traces WHERE escalated_at IS NOT NULL"
        )
        for trace_id, history, cloud_label, dropped, cloud_result in rows:
            books.escalated += 1
            steps = json.loads(history)
            answered = [s for s in steps if str(s[3]).startswith(VERDICT_REASONS)]
            if len(answered) > 1:
                books.applied_twice.append(trace_id)
            # A failure after the deadline leaves no step (the trace had already fallen back): its result does.
            hub_status = json.loads(cloud_result).get("status") if cloud_result else None
            if any(str(s[3]).startswith("hub answered") for s in steps) or hub_status not in (None, "SUCCESS"):
                books.failed_results += 1
            elif answered and cloud_label is not None:
                late = str(answered[0][3]).startswith("late")
                books.late_verdicts += late
                books.verdicts += not late
            elif trace_id in queued:
                books.waiting += 1
            elif trace_id in failed:
                books.set_aside += 1
            elif dropped:
                books.dropped += 1
            else:
                books.lost.append(trace_id)
    return books


def hub_runs(hub_store: Path, device_id: str) -> dict[str, int]:
    """trace_id -> how often the hub started its model run, for one device's traces."""
    with sqlite3.connect(f"file:{hub_store}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT trace_id, COALESCE(runs, 0) FROM traces WHERE device_id = ?", (device_id,))
        return dict(rows.fetchall())
