"""The orchestrator's SQLite file: proposals, the hash-chained audit log, and the rules' memory.

proposals  one row per proposed action: who proposed it (rules, llm, intent), why, its state, who decided, what
           undoes it, its measured effect
audit      append-only; each entry holds the hash of the one before, so editing or deleting an entry breaks the
           chain from there on (``verify``). An entry: the snapshot, the prompt's hash, the model's raw output,
           the validation result, what was applied, by whom or what, and later its effect.
memory     the rules' key/value memory (thresholds they lowered, replicas they hold open)
"""

from __future__ import annotations

import enum
import hashlib
import json
import secrets
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Optional

from cloud.database import Location, Store, upsert
from cloud.errors import OrchestratorError, ProposalNotFound

MIGRATIONS = (
    (
        "CREATE TABLE IF NOT EXISTS proposals (proposal_id TEXT PRIMARY KEY, created_at REAL NOT NULL, source TEXT NOT"
        " NULL, action TEXT NOT NULL, reason TEXT NOT NULL, state TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '',"
        " decided_by TEXT NOT NULL DEFAULT '', decided_at REAL, applied_at REAL, undo TEXT NOT NULL DEFAULT 'null',"
        " before TEXT NOT NULL DEFAULT '{}', effect TEXT NOT NULL DEFAULT 'null')",
        "CREATE INDEX IF NOT EXISTS proposals_state ON proposals (state, created_at)",
        "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL,"
        " entry TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS memory (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
)
GENESIS = "0" * 64


class ProposalState(str, enum.Enum):
    OBSERVED = "OBSERVED"  # mode observe: recorded, never applied
    PROPOSED = "PROPOSED"  # waits for an operator
    BLOCKED = "BLOCKED"  # refused by the guardrails (the reason in detail)
    APPLIED = "APPLIED"
    FAILED = "FAILED"  # passed the guardrails, but the part it acts on could not carry it out
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    REVERTED = "REVERTED"


PENDING = (ProposalState.PROPOSED,)


@dataclass
class ProposalRow:
    proposal_id: str
    created_at: float
    source: str
    action: dict[str, Any]
    reason: str
    state: ProposalState
    detail: str = ""
    decided_by: str = ""
    decided_at: Optional[float] = None
    applied_at: Optional[float] = None
    undo: Optional[dict[str, Any]] = None
    before: dict[str, Any] = field(default_factory=dict)
    effect: Optional[dict[str, Any]] = None

    def view(self) -> dict[str, Any]:
        return {**self.__dict__, "state": self.state.value}


_P = ("proposal_id", "created_at", "source", "action", "reason", "state", "detail", "decided_by", "decided_at",
      "applied_at", "undo", "before", "effect")  # fmt: skip
_P_JSON = ("action", "undo", "before", "effect")


def entry_hash(prev: str, seq: int, at: float, kind: str, entry: dict[str, Any]) -> str:
    body = json.dumps({"seq": seq, "at": at, "kind": kind, "entry": entry}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev + body).encode()).hexdigest()


class OrchestratorStore(Store):
    def __init__(self, location: Location) -> None:
        super().__init__(location, "orchestrator store", MIGRATIONS, synchronous="FULL", closed_error=OrchestratorError)

    # -- proposals --------------------------------------------------------------------------------------------

    def new_proposal(self, at: float, source: str, action: dict[str, Any], reason: str, state: ProposalState,
                     detail: str = "", before: Optional[dict[str, Any]] = None) -> ProposalRow:  # fmt: skip
        row = ProposalRow(secrets.token_hex(6), at, source, action, reason, state, detail, before=before or {})
        self.put(row)
        return row

    def put(self, row: ProposalRow) -> None:
        values = [json.dumps(getattr(row, c)) if c in _P_JSON else getattr(row, c) for c in _P]
        values[_P.index("state")] = row.state.value
        with self.connection() as db:
            db.execute(upsert("proposals", _P, ("proposal_id",)), values)

    def get(self, proposal_id: str) -> ProposalRow:
        with self.connection() as db:
            row = db.execute(f"SELECT {', '.join(_P)} FROM proposals WHERE proposal_id = ?", (proposal_id,)).fetchone()
        if row is None:
            raise ProposalNotFound(f"no proposal {proposal_id}")
        return _proposal(row)

    def proposals(self, states: Optional[tuple[ProposalState, ...]] = None, limit: int = 200) -> list[ProposalRow]:
        where = f"WHERE state IN ({', '.join('?' * len(states))})" if states else ""
        args = [s.value for s in states or ()]
        with self.connection() as db:
            rows = db.execute(
                f"SELECT {', '.join(_P)} FROM proposals {where} ORDER BY created_at DESC LIMIT ?", (*args, limit)
            ).fetchall()
        return [_proposal(r) for r in rows]

    def counts(self) -> dict[str, dict[str, int]]:
        """Proposals by source and state."""
        with self.connection() as db:
            rows = db.execute("SELECT source, state, COUNT(*) FROM proposals GROUP BY source, state").fetchall()
        found: dict[str, dict[str, int]] = {}
        for source, state, count in rows:
            bucket = found.setdefault(source.split(":")[0], {})  # intent:NAME counts as intent
            bucket[state] = bucket.get(state, 0) + count
        return found

    # -- the audit log ----------------------------------------------------------------------------------------

    def audit(self, at: float, kind: str, entry: dict[str, Any]) -> int:
        """Append an entry chained to the last; returns its sequence number."""
        with self.transaction() as db:
            last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
            digest = entry_hash(prev, seq, at, kind, entry)
            db.execute(
                "INSERT INTO audit (seq, at, kind, entry, prev, hash) VALUES (?, ?, ?, ?, ?, ?)",
                (seq, at, kind, json.dumps(entry, sort_keys=True), prev, digest),
            )
        return seq

    def entries(self, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        with self.connection() as db:
            rows = db.execute(
                "SELECT seq, at, kind, entry, prev, hash FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit)
            ).fetchall()
        return [
            {"seq": s, "at": at, "kind": k, "entry": json.loads(e), "prev": p, "hash": h} for s, at, k, e, p, h in rows
        ]

    def verify(self) -> Optional[str]:
        """None if the chain is whole; else the first entry where it breaks, and how."""
        prev, expected_seq = GENESIS, 1
        with self.connection() as db:
            rows = db.execute("SELECT seq, at, kind, entry, prev, hash FROM audit ORDER BY seq").fetchall()
        for seq, at, kind, entry, stored_prev, digest in rows:
            if seq != expected_seq:
                return f"entry {expected_seq} is missing (next is {seq})"
            if stored_prev != prev:
                return f"entry {seq} does not follow entry {seq - 1}"
            if entry_hash(prev, seq, at, kind, json.loads(entry)) != digest:
                return f"entry {seq} was changed after it was written"
            prev, expected_seq = digest, seq + 1
        return None

    # -- the rules' memory ------------------------------------------------------------------------------------

    def memory(self) -> MutableMapping[str, Any]:
        return _Memory(self)


class _Memory(MutableMapping[str, Any]):
    """A dict over the memory table: every write goes to disk, so a restarted hub remembers."""

    def __init__(self, store: OrchestratorStore) -> None:
        self._store = store

    def _all(self) -> dict[str, Any]:
        with self._store.connection() as db:
            return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM memory").fetchall()}

    def __getitem__(self, key: str) -> Any:
        return self._all()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        with self._store.connection() as db:
            db.execute(upsert("memory", ("key", "value"), ("key",)), (key, json.dumps(value)))

    def __delitem__(self, key: str) -> None:
        with self._store.connection() as db:
            if db.execute("DELETE FROM memory WHERE key = ?", (key,)).rowcount == 0:
                raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def _proposal(row: tuple[Any, ...]) -> ProposalRow:
    values = dict(zip(_P, row, strict=True))
    for name in _P_JSON:
        values[name] = json.loads(values[name])
    values["state"] = ProposalState(values["state"])
    return ProposalRow(**values)
