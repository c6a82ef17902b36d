"""The device store's tables, and the migration from older versions of them."""

from __future__ import annotations

import sqlite_utils

SCHEMA_VERSION = 4


def create_schema(db: sqlite_utils.Database) -> None:
    (found,) = db.execute("PRAGMA user_version").fetchone()
    db.table("traces").create(
        {
            "trace_id": str,
            "state": str,
            "source_id": str,
            "frame_index": int,
            "truth": str,
            "local_label": str,
            "local_confidence": float,
            "local_prediction": str,
            "cloud_label": str,
            "cloud_confidence": float,
            "cloud_result": str,
            "final_label": str,
            "reasons": str,
            "created_at": float,
            "escalated_at": float,
            "deadline_at": float,
            "verdict_at": float,
            "history": str,
            "dropped": str,
        },
        pk="trace_id",
        not_null={"state", "history", "created_at"},
        if_not_exists=True,
    )
    if "dropped" not in db["traces"].columns_dict:  # why its escalation left the outbox unanswered (version 4)
        db.execute("ALTER TABLE traces ADD COLUMN dropped TEXT")
    # No index on traces but its key: the deadline pass reads deadlines from the (bounded) outbox,
    # so writing a trace, the frame loop's one write, maintains nothing else.
    db.execute("DROP INDEX IF EXISTS idx_traces_state_deadline_at")
    db.execute("DROP INDEX IF EXISTS traces_pending_deadline")
    db.table("outbox").create(
        {
            "trace_id": str,
            "payload": bytes,
            "status": str,
            "attempts": int,
            "next_attempt_at": float,
            "enqueued_at": float,
            "last_error": str,
            "priority": int,
            "deadline_at": float,
            "relays": int,
        },
        pk="trace_id",
        not_null={"payload", "status", "attempts", "next_attempt_at", "enqueued_at", "priority", "relays"},
        defaults={"attempts": 0, "priority": 0, "relays": 0},
        if_not_exists=True,
    )
    if "priority" not in db["outbox"].columns_dict:  # a version 1 store
        db.execute("ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")
    if "relays" not in db["outbox"].columns_dict:  # versions 1 to 3 trusted the broker's PUBACK
        db.execute("ALTER TABLE outbox ADD COLUMN relays INTEGER NOT NULL DEFAULT 0")
    if "deadline_at" not in db["outbox"].columns_dict:  # versions 1 and 2 kept deadlines on the traces only
        db.execute("ALTER TABLE outbox ADD COLUMN deadline_at FLOAT")
        db.execute(
            "UPDATE outbox SET deadline_at = (SELECT deadline_at FROM traces"
            " WHERE traces.trace_id = outbox.trace_id AND traces.state = 'PENDING_CLOUD')"
        )
    # No secondary index on the outbox: it is bounded (max_rows), a scan of it is cheap, and each index
    # would be upkeep on every enqueue, the write the frame loop waits for.
    db.execute("DROP INDEX IF EXISTS idx_outbox_status_next_attempt_at")
    db.execute("DROP INDEX IF EXISTS idx_outbox_enqueued_at")  # a scan of a bounded table is cheaper than upkeep
    db.table("failed").create(
        {
            "trace_id": str,
            "payload": bytes,
            "priority": int,
            "attempts": int,
            "enqueued_at": float,
            "failed_at": float,
            "reason": str,
        },
        pk="trace_id",
        not_null={"payload", "priority", "attempts", "enqueued_at", "failed_at", "reason"},
        if_not_exists=True,
    )
    # Version 1 kept permanent failures in the outbox with status FAILED.
    db.execute(
        "INSERT OR IGNORE INTO failed (trace_id, payload, priority, attempts, enqueued_at, failed_at, reason)"
        " SELECT trace_id, payload, priority, attempts, enqueued_at, next_attempt_at, COALESCE(last_error, '')"
        " FROM outbox WHERE status = 'FAILED'"
    )
    db.execute("DELETE FROM outbox WHERE status = 'FAILED'")
    if found < 4:
        # Up to version 3 a SENT row was done sending, even over MQTT, where SENT meant only that the broker
        # had it; such a row could wait for a verdict that never comes. Send each once more: the hub
        # deduplicates on trace_id, and its acknowledgement makes the row ACCEPTED.
        db.execute("UPDATE outbox SET next_attempt_at = enqueued_at WHERE status = 'SENT'")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
