"""The hub's stores on both databases they run on: a SQLite file and a real PostgreSQL server.

Each test takes ``location`` twice over (sqlite, postgres) and checks what the hub relies on: the same answers
from the same SQL, duplicate keys refused, migrations run once, and, where two replicas share the tables,
claims that never hand one row to both.
"""

from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest

from cloud.database import PostgresDatabase, PostgresLocation, glob_to_regex
from cloud.errors import HubError, ModelExists
from cloud.fleet.rollout_store import DeviceRow, RolloutRow, RolloutStore
from cloud.fleet.store import Device, FleetStore, Session
from cloud.orchestrator.store import OrchestratorStore
from cloud.registry import ModelSpec, SqliteRegistry
from cloud.traces.store import MIGRATIONS as TRACE_MIGRATIONS
from cloud.traces.store import TraceStatus, TraceStore


@pytest.fixture(params=["sqlite", "postgres"])
def where(request, tmp_path):
    """A function giving each store its location: a file in tmp_path, or a schema in a new database."""
    if request.param == "sqlite":
        return lambda store: tmp_path / f"{store}.db"
    url = request.getfixturevalue("pg_url")
    return lambda store: PostgresLocation(url, store)


def opened(store):
    store.open()
    return store


def test_traces_round_trip_and_duplicates(where):
    a = opened(TraceStore(where("traces"), owner="a"))
    b = opened(TraceStore(where("traces"), owner="b"))  # a second replica on the same tables
    try:
        assert a.insert_if_absent("t1", "cam-1", b"\x00\xffrequest", 100.0)
        assert not b.insert_if_absent("t1", "cam-1", b"other", 101.0)  # one trace_id, one row, whoever asks
        a.set_running("t1", 100.5)
        a.set_finished("t1", TraceStatus.SUCCESS, b"\x00result\xff", None, 101.0, "r", 0.25)
        got = b.get("t1")
        assert got is not None
        assert (got.status, got.result, got.route, got.cost, got.runs) == (
            TraceStatus.SUCCESS,
            b"\x00result\xff",
            "r",
            0.25,
            1,
        )
        assert b.mark_acked("t1", "cam-1", 102.0) and not a.mark_acked("t1", "cam-1", 103.0)
        assert b.get("t1").delivered_at == 102.0  # acknowledged before the PUBACK was seen: delivered then
        assert [t.trace_id for t in a.query(device_id="cam-1", acked=True)] == ["t1"]
    finally:
        a.close()
        b.close()


def test_hard_examples_keep_the_request_and_take_a_label_and_images_are_forgotten_past_the_newest(where):
    store = opened(TraceStore(where("traces")))
    try:
        for i in range(5):
            store.insert_if_absent(f"t{i}", "cam-1", f"request {i}".encode(), float(i))
            store.set_finished(f"t{i}", TraceStatus.SUCCESS, b"x", None, float(i) + 0.5)
        assert store.add_hard_example("t1", "cat", "dog")
        assert not store.add_hard_example("t1", "cat", "dog")  # once
        assert not store.add_hard_example("nope", "cat", "dog")
        assert store.forget_requests(keep=2) == 3  # t0, t1, t2 lose their image...
        assert store.request_of("t4") == b"request 4" and store.request_of("t0") is None
        assert store.request_of("t1") == b"request 1"  # ...but a hard example keeps its own
        assert [h.trace_id for h in store.hard_examples(labelled=False)] == ["t1"]
        assert store.label_hard_example("t1", "dog", "ana", 9.0) and not store.label_hard_example("t9", "x", "a", 9.0)
        (example,) = store.hard_examples(labelled=True)
        assert (example.edge_label, example.cloud_label, example.label, example.labelled_by) == (
            "cat",
            "dog",
            "dog",
            "ana",
        )
        assert store.hard_examples(labelled=False) == []
        for i in range(5, 9):
            store.insert_if_absent(f"t{i}", "cam-2", b"r", float(i))
            store.set_finished(f"t{i}", TraceStatus.SUCCESS, b"x", None, float(i))
            store.add_hard_example(f"t{i}", "a", "b")
        assert store.trim_hard_examples(keep=2) == 2  # unlabelled t5, t6 go; labelled t1 stays
        assert sorted(h.trace_id for h in store.hard_examples()) == ["t1", "t7", "t8"]
        assert store.forget_requests(keep=0) == 6 and store.request_of("t8") == b"r"  # t3-t8; t8 kept as an example
        assert [h.trace_id for h in store.hard_examples(device_globs=["cam-1"])] == ["t1"]
    finally:
        store.close()


def test_device_globs_match_the_same_ids_on_both(where):
    store = opened(TraceStore(where("traces")))
    try:
        for i, device in enumerate(["cam-1", "cam-22", "dock-a1", "dock-b7", "dock-c1", "Cam-1", "cam.x"]):
            store.insert_if_absent(f"t{i}", device, b"r", float(i))
        assert store.count_devices(["cam-*"]) == 2  # case-sensitive, as GLOB is; "." is no wildcard
        assert store.count_devices(["dock-[ab]?"]) == 2
        assert store.count_devices(["cam-?", "cam.*"]) == 2
        assert {t.device_id for t in store.query(device_globs=["dock-[^a]*"])} == {"dock-b7", "dock-c1"}
        assert store.query(device_globs=[]) == []
    finally:
        store.close()


def test_two_replicas_claiming_due_results_never_take_the_same_one(where):
    stores = [opened(TraceStore(where("traces"), owner=name)) for name in ("a", "b")]
    for i in range(300):
        stores[0].insert_if_absent(f"t{i:03d}", "cam-1", b"r", 1.0)
        stores[0].set_finished(f"t{i:03d}", TraceStatus.SUCCESS, b"x", None, 2.0)
    claimed: dict[str, list[str]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def claim(store: TraceStore) -> None:
        start.wait()
        while batch := store.claim_due(now=10.0, hold_s=60.0, limit=7):
            claimed[store.owner] += [t.trace_id for t in batch]

    threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        both = claimed["a"] + claimed["b"]
        assert sorted(both) == [f"t{i:03d}" for i in range(300)]  # every one, once
        assert stores[1].claim_due(now=69.0, hold_s=60.0) == []  # held for whoever claimed it...
        assert len(stores[1].claim_due(now=70.0, hold_s=60.0, limit=1000)) == 300  # ...until the hold lapses
    finally:
        for s in stores:
            s.close()


def test_an_unfinished_trace_is_claimed_again_only_when_its_lease_lapses(where):
    a = opened(TraceStore(where("traces"), owner="a", lease_s=20.0))
    b = opened(TraceStore(where("traces"), owner="b", lease_s=20.0))
    try:
        a.insert_if_absent("t1", "cam-1", b"req", 100.0)
        a.set_running("t1", 101.0)
        assert b.claim_unfinished(now=110.0) == []  # a runs it
        assert a.renew(["t1"], now=115.0) == 1  # and says so
        assert b.claim_unfinished(now=130.0) == []  # lease until 135
        assert b.claim_unfinished(now=136.0) == [("t1", b"req")]  # a went quiet: b takes it over
        assert a.renew(["t1"], now=137.0) == 0  # a's claim is gone
        assert a.claim_unfinished(now=140.0) == []  # and b's holds
        b.set_finished("t1", TraceStatus.SUCCESS, b"x", None, 141.0)
        assert b.claim_unfinished(now=1e9) == []  # finished traces are never claimed
    finally:
        a.close()
        b.close()


def test_a_result_stored_by_one_replica_is_heard_by_the_other(pg_url):
    """LISTEN/NOTIFY: how a replica whose gRPC call waits for a trace learns that another one finished it."""
    a = opened(TraceStore(PostgresLocation(pg_url, "traces"), owner="a"))
    b = opened(TraceStore(PostgresLocation(pg_url, "traces"), owner="b"))
    heard: list[str] = []
    got = threading.Event()
    b.on_finished(lambda trace_id: (heard.append(trace_id), got.set()))
    try:
        time.sleep(1.0)  # b's listening connection is up (it polls for notifications every 0.5 s)
        a.insert_if_absent("t1", "cam-1", b"r", 1.0)
        a.set_finished("t1", TraceStatus.SUCCESS, b"x", None, 2.0)
        assert got.wait(10), "b never heard of t1"
        assert heard == ["t1"]
    finally:
        a.close()
        b.close()


def test_registry_fleet_rollouts_and_orchestrator_stores(where, tmp_path):
    registry = SqliteRegistry(where("registry"), tmp_path / "artifacts")
    registry.open()
    sha = registry.put_artifact(b"onnx bytes")
    spec = ModelSpec(name="m", version="1", task="classify", precision="fp32")
    registry.register(spec, sha)
    with pytest.raises(ModelExists):
        registry.register(spec, sha)
    assert [m.version for m in registry.query(name="m")] == ["1"]
    registry.close()

    fleet = opened(FleetStore(where("fleet")))
    device = Device("cam-1", first_seen=1.0, last_seen=2.0, session=Session.ACTIVE, session_since=1.5, available=True)
    fleet.put(device)
    fleet.put(device.__class__(**{**device.__dict__, "last_seen": 3.0}))  # replaced, not added
    assert [(d.device_id, d.last_seen, d.available) for d in fleet.devices()] == [("cam-1", 3.0, True)]
    fleet.audit(4.0, "ops", "settings", "group:a", {"x": 1})
    assert fleet.audit_log()[0]["detail"] == {"x": 1}
    fleet.close()

    rollouts = opened(RolloutStore(where("rollouts")))
    row = RolloutRow("r1", {"waves": []}, "RUNNING", 0, None, 1.0, "ops", 1.0)
    rollouts.put(row, [DeviceRow("r1", "cam-1", 0, "PENDING", updated_at=1.0)])
    rollouts.put(row, [DeviceRow("r1", "cam-1", 0, "DONE", progress=1.0, updated_at=2.0)])
    assert [(d.state, d.progress) for d in rollouts.devices("r1")] == [("DONE", 1.0)]
    rollouts.close()


def test_two_replicas_appending_to_the_audit_chain_keep_it_whole(where):
    """Each append reads the last link and writes the next: a transaction, one at a time across replicas."""
    stores = [opened(OrchestratorStore(where("orchestrator"))) for _ in range(2)]
    try:

        def append(store: OrchestratorStore, who: str) -> None:
            for i in range(40):
                store.audit(float(i), "note", {"who": who, "i": i})

        threads = [threading.Thread(target=append, args=(s, n)) for s, n in zip(stores, "ab", strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        entries = stores[0].entries(limit=1000)
        assert [e["seq"] for e in entries] == list(range(1, 81))
        assert stores[1].verify() is None
        memory = stores[0].memory()
        memory["k"] = {"v": 1}
        memory["k"] = {"v": 2}
        assert dict(stores[1].memory()) == {"k": {"v": 2}}
    finally:
        for s in stores:
            s.close()


def test_migrations_run_once_and_a_store_opens_again(where):
    first = opened(TraceStore(where("traces")))
    first.insert_if_absent("t1", "cam-1", b"r", 1.0)
    first.close()
    again = opened(TraceStore(where("traces")))
    try:
        assert again.get("t1") is not None
        with again.db.connection() as conn:
            steps = conn.execute("SELECT step FROM schema_migrations WHERE store = ? ORDER BY step", ("trace store",))
            assert [r[0] for r in steps.fetchall()] == list(range(1, len(TRACE_MIGRATIONS) + 1))
    finally:
        again.close()


def test_one_replica_leads_and_another_takes_over_when_it_goes(pg_url):
    dbs = [PostgresDatabase(pg_url, "fleet", "fleet store", ()) for _ in range(2)]
    first, second = (db.leader("hub") for db in dbs)
    assert first.held() and not second.held()
    first.release()  # a replica that dies closes its connection: the same
    assert second.held() and not first.held()
    second.release()


def test_an_unreachable_database_is_a_clear_error():
    port = 1  # nothing listens there
    store = TraceStore(PostgresLocation(f"postgresql://postgres@127.0.0.1:{port}/none", "traces"))
    with pytest.raises(HubError, match=re.escape("PostgreSQL at postgresql://postgres@127.0.0.1:1/none")):
        store.open()


def test_glob_to_regex_agrees_with_sqlite_glob(pg_url):
    import sqlite3

    sqlite = sqlite3.connect(":memory:")
    patterns = ["cam-*", "cam-?", "dock-[ab]*", "dock-[^a]?", "a.b*", "x[0-9]", "*", "literal"]
    names = ["cam-1", "cam-12", "dock-a1", "dock-b", "dock-c9", "a.bc", "axbc", "x5", "xa", "literal", ""]
    with psycopg.connect(pg_url) as conn:
        for pattern in patterns:
            for name in names:
                want = sqlite.execute("SELECT ? GLOB ?", (name, pattern)).fetchone()[0] == 1
                got = conn.execute("SELECT %s ~ %s", (name, glob_to_regex(pattern))).fetchone()[0]
                assert got == want, (pattern, name)
