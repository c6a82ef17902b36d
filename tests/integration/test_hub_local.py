"""The hub without Ray: ``Hub`` on a ``LocalPool`` in this process, a real Mosquitto, a real device over MQTT.

The same object the Serve ingress holds, started and closed by hand: what ``Ingress.__init__`` used to wire
is tested here in seconds, and ``close()`` leaves nothing running.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from cloud.config import HubConfig
from cloud.errors import HubError
from cloud.hub import Hub, LocalPool
from cloud.traces.store import TraceStatus
from edge.app import EdgeRuntime
from edge.config import MqttTransportConfig
from edge.judge import TraceState
from tests.integration.conftest import edge_config
from tests.integration.test_end_to_end import escalated
from tests.support.fleet import HubThread


@pytest.fixture
def local_hub(tmp_path, demo_assets, mosquitto, hub) -> Iterator[HubThread]:
    hub.stop()  # the session's Ray hub would answer the same escalations: here only this one may
    config = HubConfig(
        model_path=demo_assets / "models" / "digits-strong.onnx",
        mqtt_port=mosquitto.port,
        mqtt_username="tandem-hub-local",
        trace_store_path=tmp_path / "hub.db",
    )
    runner = HubThread(Hub(config, LocalPool(config.artifacts_dir(), config.max_image_pixels)))
    with runner:
        yield runner


def test_a_hub_without_ray_answers_a_device_over_mqtt(tmp_path, demo_assets, mosquitto, local_hub):
    no_grpc = SimpleNamespace(grpc_port=1)  # the device escalates over MQTT only
    config = edge_config(tmp_path, demo_assets, no_grpc, mosquitto.port, device_id="cam-hub-local", threshold=0.95)
    config = config.model_copy(update={"transport": MqttTransportConfig(kind="mqtt")})
    with EdgeRuntime(config) as runtime:
        runtime.run(max_frames=60)
        assert runtime.wait_resolved(60)
        sent_up = escalated(runtime)
        assert len(sent_up) > 3
        assert all(t.state is TraceState.COMPLETE and t.cloud_label is not None for t in sent_up)
    hub = local_hub.hub
    for trace in sent_up:
        stored = hub.store.get(trace.trace_id)
        assert stored is not None and stored.status is TraceStatus.SUCCESS and stored.runs == 1
    status = local_hub.call(hub.status())
    assert status["models"] == ["strong"] and status["pool_loads"] == 1


def test_closing_the_hub_stops_its_loops_and_clients(tmp_path, demo_assets, mosquitto):
    config = HubConfig(
        model_path=demo_assets / "models" / "digits-strong.onnx",
        mqtt_port=mosquitto.port,
        mqtt_username="tandem-hub-closing",
        trace_store_path=tmp_path / "hub.db",
    )
    before = {t.name for t in threading.enumerate()}
    runner = HubThread(Hub(config, LocalPool(config.artifacts_dir(), config.max_image_pixels)))
    with runner as hub:
        tasks = runner.call(_hub_tasks())
        assert {"hub-resends", "hub-registry-report", "hub-prune", "hub-orphan-reruns", "hub-fleet-check"} <= tasks
    leftover = {t.name for t in threading.enumerate()} - before
    assert not {name for name in leftover if name.startswith("paho")}, leftover
    with pytest.raises(HubError, match="not open"):
        hub.store.get("0" * 32)


async def _hub_tasks() -> set[str]:
    return {t.get_name() for t in asyncio.all_tasks()}
