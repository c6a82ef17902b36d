"""Two hub replicas sharing one PostgreSQL database and one broker, with real devices escalating over MQTT.

The ``Hub`` objects here are what each Serve Ingress replica holds (``tests/integration/test_serve_replicas.py``
runs them under Ray Serve); in one process they start in seconds, and each part of sharing is checked on its
own: the broker's shared subscription splits the escalations, the trace store's key runs each once, a
replica that leaves mid-load loses nothing, a gRPC call waiting on one replica is answered when the other
finishes its trace, and a trace whose replica died is claimed and run by the one left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from types import SimpleNamespace

import psycopg
import pytest

import cloud.hub
from cloud.config import HubConfig
from cloud.database import PostgresLocation
from cloud.hub import Hub, LocalPool
from cloud.traces.store import TraceStatus, TraceStore
from edge.app import EdgeRuntime
from edge.config import MqttTransportConfig
from edge.judge import TraceState
from protocol.codec import encode_request
from protocol.messages import EncodedImage, EscalationRequest, Prediction, new_trace_id
from tests.integration.conftest import edge_config
from tests.integration.test_end_to_end import escalated
from tests.support.fleet import HubThread
from tests.support.waiting import wait_for

USERNAME = "tandem-hub-replicas"  # both replicas: one shared-subscription group


def replica_config(tmp_path, demo_assets, mosquitto, pg_url, name: str) -> HubConfig:
    return HubConfig(
        model_path=demo_assets / "models" / "digits-strong.onnx",
        mqtt_port=mosquitto.port,
        mqtt_username=USERNAME,
        database_url=pg_url,
        trace_store_path=tmp_path / name / "unused.db",
        artifacts_path=tmp_path / "artifacts",  # the volume every replica mounts
    )


@pytest.fixture
def replicas(tmp_path, demo_assets, mosquitto, hub, pg_url) -> Iterator[list[HubThread]]:
    hub.stop()  # the session's Ray hub would answer the same escalations
    runners = []
    for name in ("a", "b"):
        config = replica_config(tmp_path, demo_assets, mosquitto, pg_url, name)
        runners.append(HubThread(Hub(config, LocalPool(config.artifacts_dir(), config.max_image_pixels))))
    for runner in runners:
        runner.__enter__()
    yield runners
    for runner in runners:
        if runner.loop.is_running():
            runner.__exit__(None, None, None)


def digit_request(demo_assets, device_id: str) -> EscalationRequest:
    """An escalation of the demo's first digit, as a device would send it."""
    image = sorted((demo_assets / "stream" / "images").glob("*.png"))[0].read_bytes()
    return EscalationRequest(
        new_trace_id(),
        device_id,
        Prediction("weak", "1", tuple(str(d) for d in range(10)), tuple([0.1] * 10)),
        EncodedImage("image/png", image, 8, 8),
        deadline_ms=10_000,
    )


def owners(pg_url: str) -> dict[str, int]:
    with psycopg.connect(pg_url) as conn:
        return dict(conn.execute("SELECT owner, COUNT(*) FROM traces.traces GROUP BY owner").fetchall())


def mqtt_device(tmp_path, demo_assets, mosquitto, device_id: str):
    no_grpc = SimpleNamespace(grpc_port=1)
    config = edge_config(tmp_path, demo_assets, no_grpc, mosquitto.port, device_id=device_id, threshold=0.97)
    return config.model_copy(update={"transport": MqttTransportConfig(kind="mqtt")})


def test_two_replicas_share_the_load_run_each_trace_once_and_lose_nothing_when_one_leaves(
    tmp_path, demo_assets, mosquitto, pg_url, replicas
):
    devices = [EdgeRuntime(mqtt_device(tmp_path, demo_assets, mosquitto, f"cam-rep-{i}")) for i in range(3)]
    for device in devices:
        device.start()
    try:
        for device in devices:
            device.run(max_frames=40)
        wait_for(lambda: len(owners(pg_url)) == 2, 30, "both replicas to take escalations")
        replicas[0].__exit__(None, None, None)  # replica a leaves mid-load (Serve scaling in, or a rollout)
        for device in devices:
            device.run(max_frames=40)
        for device in devices:
            assert device.wait_resolved(90), f"{device.config.device_id}: escalations left unresolved"
        sent_up = [t for device in devices for t in escalated(device)]
    finally:
        for device in devices:
            device.close()
    store = replicas[1].hub.store
    assert len(sent_up) > 10
    assert all(t.state is TraceState.COMPLETE and t.cloud_label is not None for t in sent_up), "a verdict is missing"
    for trace in sent_up:
        stored = store.get(trace.trace_id)
        assert stored is not None and stored.status is TraceStatus.SUCCESS
        assert stored.runs == 1, f"{trace.trace_id} ran {stored.runs} times"  # no duplicate model runs
        assert stored.sends == 1, f"{trace.trace_id} was sent {stored.sends} times"  # no result sent twice
    took = owners(pg_url)
    assert len(took) == 2 and min(took.values()) > 0, took


def test_a_call_waiting_on_one_replica_is_answered_when_the_other_finishes_the_trace(
    tmp_path, demo_assets, mosquitto, pg_url, replicas
):
    """A device's gRPC retry lands on b while a still runs the trace: b answers it with a's result."""
    a, b = (r.hub for r in replicas)
    request = digit_request(demo_assets, "cam-rep-wait")
    assert a.store.insert_if_absent(request.trace_id, request.device_id, encode_request(request), time.time())

    async def wait_on_b():
        return await b.service.escalate_and_wait(request)

    waiting = asyncio.run_coroutine_threadsafe(wait_on_b(), replicas[1].loop)
    time.sleep(0.5)
    assert not waiting.done()  # b has nothing to answer with yet: a holds the trace

    async def run_on_a():
        return a.service.recover()  # a runs what it holds and has no run for

    assert replicas[0].call(run_on_a()) == 1
    result = waiting.result(15)
    assert result.trace_id == request.trace_id and result.status.name == "SUCCESS"
    assert b.store.get(request.trace_id).runs == 1


def test_a_trace_whose_replica_died_is_run_by_the_replica_left(
    tmp_path, demo_assets, mosquitto, pg_url, monkeypatch, hub
):
    hub.stop()
    monkeypatch.setattr(cloud.hub, "ORPHAN_CHECK_S", 0.5)
    request = digit_request(demo_assets, "cam-rep-orphan")
    dead = TraceStore(PostgresLocation(pg_url, "traces"), owner="dead-replica", lease_s=1.0)
    dead.open()
    dead.insert_if_absent(request.trace_id, request.device_id, encode_request(request), time.time())
    dead.close()  # it accepted the escalation and died before running it; its lease lapses in 1 s
    config = replica_config(tmp_path, demo_assets, mosquitto, pg_url, "left")
    with HubThread(Hub(config, LocalPool(config.artifacts_dir(), config.max_image_pixels))) as left:
        wait_for(
            lambda: (t := left.store.get(request.trace_id)) is not None and t.status is TraceStatus.SUCCESS,
            30,
            "the replica left to run the dead one's trace",
        )
        assert left.store.get(request.trace_id).runs == 1
        assert owners(pg_url) == {left.replica: 1}
