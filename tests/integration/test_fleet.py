"""The fleet as the hub sees it, with a real Mosquitto, a real ``Hub`` (without Ray) and real device runtimes
with frames flowing: devices announce themselves, beat, go silent and offline; a group's judge settings set on
the hub are applied by its devices between frames, without a restart, and a device that was away catches up."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient

from cloud.config import FleetConfig, HubConfig
from cloud.hub import Hub, LocalPool
from edge.app import EdgeRuntime
from edge.config import FleetConfig as DeviceFleet
from edge.config import MqttTransportConfig, SourceConfig
from edge.judge import TraceState
from protocol.topics import Channel, DeviceTopic
from tests.integration.conftest import edge_config
from tests.integration.test_hub_local import HubThread
from tests.support.fleet import operator
from tests.support.waiting import wait_for


@pytest.fixture
def fleet_hub(tmp_path, demo_assets, mosquitto, hub) -> Iterator[HubThread]:
    hub.stop()  # the session's Ray hub would answer the same escalations: here only this one may
    config = HubConfig(
        model_path=demo_assets / "models" / "digits-strong.onnx",
        mqtt_port=mosquitto.port,
        mqtt_username="tandem-hub-fleet",
        trace_store_path=tmp_path / "hub.db",
        fleet=FleetConfig(
            silent_after_s=3.0,
            sleep_after_s=4.0,
            check_every_s=0.5,
            operators={"ana": operator("s3cret")},
        ),
    )
    runner = HubThread(Hub(config, LocalPool(config.artifacts_dir(), config.max_image_pixels)))
    with runner:
        yield runner


class Device:
    """A device runtime whose frame loop runs in a thread at a steady rate until closed."""

    def __init__(self, tmp_path, demo_assets, mqtt_port: int, device_id: str, group: str, tags=()) -> None:
        no_grpc = SimpleNamespace(grpc_port=1)  # escalations over MQTT only
        config = edge_config(tmp_path, demo_assets, no_grpc, mqtt_port, device_id=device_id, threshold=0.0)
        self.config = config.model_copy(
            update={
                "transport": MqttTransportConfig(kind="mqtt"),
                "source": SourceConfig(kind="images", path=demo_assets / "stream" / "images", max_fps=25.0),
                "fleet": DeviceFleet(group=group, tags=list(tags), telemetry_interval_s=0.5),
            }
        )
        self.runtime: EdgeRuntime | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> EdgeRuntime:
        self.runtime = EdgeRuntime(self.config)
        self.runtime.start()
        self._thread = threading.Thread(target=self.runtime.run, name=f"frames-{self.config.device_id}", daemon=True)
        self._thread.start()
        return self.runtime

    def close(self) -> None:
        if self.runtime is not None and self._thread is not None:
            self.runtime.stop()
            self._thread.join(10)
            self.runtime.close()
            self.runtime = None

    def states_since(self, count: int) -> list[TraceState]:
        assert self.runtime is not None
        return [t.state for t in self.runtime.store.traces()[count:]]


@pytest.fixture
def devices(tmp_path, demo_assets, mosquitto) -> Iterator[dict[str, Device]]:
    made = {
        "cam-lobby-1": Device(tmp_path, demo_assets, mosquitto.port, "cam-lobby-1", "fleet-lobby", ["fleet-night"]),
        "cam-lobby-2": Device(tmp_path, demo_assets, mosquitto.port, "cam-lobby-2", "fleet-lobby"),
        "cam-dock-1": Device(tmp_path, demo_assets, mosquitto.port, "cam-dock-1", "fleet-dock"),
    }
    yield made
    for device in made.values():
        device.close()


ADMIN = {"Authorization": "Bearer s3cret"}


def listed(api: TestClient, **query) -> dict[str, dict]:
    """The hub's devices, by id. The session's broker also holds the retained reports of other tests' devices,
    which this hub rightly lists too: a test looks at its own."""
    reply = api.get("/v1/devices", params=query, headers=ADMIN)
    assert reply.status_code == 200, reply.text
    return {d["device_id"]: d for d in reply.json()}


OURS = ("cam-lobby-1", "cam-lobby-2", "cam-dock-1")


def ours(api: TestClient) -> list[dict]:
    found = listed(api)
    return [found[d] for d in OURS if d in found]


def test_the_hub_sees_every_device_and_a_group_setting_applies_without_a_restart(fleet_hub, devices):
    api = TestClient(fleet_hub.hub.http_app())
    runtimes = {name: d.start() for name, d in devices.items()}
    wait_for(lambda: [d["status"] for d in ours(api)] == ["online"] * 3, 30, "three devices online")
    wait_for(lambda: all(d["telemetry"] and d["telemetry"]["fps"] > 0 for d in ours(api)), 30, "heartbeats")
    lobby = listed(api, group="fleet-lobby")
    assert set(lobby) == {"cam-lobby-1", "cam-lobby-2"}
    one = lobby["cam-lobby-1"]
    assert one["tags"] == ["fleet-night"] and one["device_class"].endswith("/cpu")
    assert one["model"]["model_id"] == "digits-weak" and one["model"]["backend"] == "onnxruntime:CPUExecutionProvider"
    assert one["session"] == "INIT" and sum(one["telemetry"]["confidence_histogram"]) > 0
    assert set(listed(api, tag="fleet-night")) == {"cam-lobby-1"}

    # Nothing escalates at threshold 0; the lobby's threshold goes to 1.0 (every frame uncertain) from the hub.
    assert not any(
        s is TraceState.PENDING_CLOUD for r in runtimes.values() for s in [t.state for t in r.store.traces()]
    )
    assert api.put("/v1/admin/settings/group", json={"name": "fleet-lobby", "settings": {}}).status_code == 401
    frames_before = {name: len(r.store.traces()) for name, r in runtimes.items()}
    change = {"name": "fleet-lobby", "settings": {"judge": {"confidence_threshold": 1.0}}}
    reply = api.put("/v1/admin/settings/group", json=change, headers=ADMIN)
    assert reply.status_code == 200, reply.text
    assert sorted(reply.json()["devices"]) == ["cam-lobby-1", "cam-lobby-2"]
    wait_for(lambda: all(d["in_sync"] for d in listed(api, group="fleet-lobby").values()), 30, "the lobby to apply v1")
    for name in ("cam-lobby-1", "cam-lobby-2"):
        wait_for(
            lambda n=name: TraceState.PENDING_CLOUD in devices[n].states_since(frames_before[n]), 30, "escalations"
        )
    assert TraceState.PENDING_CLOUD not in devices["cam-dock-1"].states_since(0)  # another group: unchanged
    assert runtimes["cam-lobby-1"].live.judge.policies[1].threshold == 1.0
    wait_for(lambda: listed(api)["cam-lobby-1"]["session"] == "ACTIVE", 30, "the lobby's session ACTIVE")
    audit = api.get("/v1/admin/audit", headers=ADMIN).json()
    assert audit[0]["who"] == "ana" and audit[0]["target"] == "group:fleet-lobby"

    # A device that was away while its group changed catches up when it comes back.
    devices["cam-lobby-2"].close()
    wait_for(lambda: listed(api)["cam-lobby-2"]["status"] == "offline", 30, "cam-lobby-2 offline")
    settings = {"judge": {"confidence_threshold": 1.0}, "escalation": {"deadline_ms": 777}}
    change = {"name": "fleet-lobby", "settings": settings}
    assert api.put("/v1/admin/settings/group", json=change, headers=ADMIN).status_code == 200
    wait_for(lambda: listed(api)["cam-lobby-1"]["reported"]["applied_version"] == 2, 30, "cam-lobby-1 at v2")
    assert listed(api)["cam-lobby-2"]["reported"]["applied_version"] == 1
    back = devices["cam-lobby-2"].start()
    wait_for(lambda: back.fleet.applied_version == 2, 30, "cam-lobby-2 to catch up")
    assert back.live.escalation.deadline_ms == 777
    wait_for(lambda: listed(api)["cam-lobby-2"]["in_sync"], 30, "the hub to see it in sync")

    # Settings a device cannot take are refused, with the reason on the hub, and nothing changes there.
    bad = {"name": "cam-dock-1", "settings": {"judge": {"confidence_threshold": 5}}}
    assert api.put("/v1/admin/settings/device", json=bad, headers=ADMIN).status_code == 200
    wait_for(lambda: listed(api)["cam-dock-1"]["reported"]["refused_version"] == 1, 30, "the refusal")
    assert "confidence_threshold" in listed(api)["cam-dock-1"]["reported"]["refused_reason"]
    assert runtimes["cam-dock-1"].live.judge.policies[1].threshold == 0.0


def test_a_device_that_goes_quiet_is_shown_silent_then_asleep(fleet_hub, mosquitto):
    """A device that said online and then nothing (a cut cable: no last will yet) is not shown as online."""
    api = TestClient(fleet_hub.hub.http_app())
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cam-quiet")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        client.publish(str(DeviceTopic.availability("cam-quiet")), b"online", qos=1, retain=True).wait_for_publish(5)
        wait_for(lambda: "cam-quiet" in listed(api), 30, "the device to appear")
        assert listed(api)["cam-quiet"]["status"] == "online"
        wait_for(lambda: listed(api)["cam-quiet"]["status"] == "silent", 30, "silent after silent_after_s")
        assert listed(api)["cam-quiet"]["last_seen_age_s"] >= 3.0
        wait_for(lambda: listed(api)["cam-quiet"]["session"] == "SLEEP", 30, "SLEEP after sleep_after_s")
        # Clearing the retained availability (an empty message) is not a malformed one; a heartbeat that names
        # another device on this one's topic is.
        client.publish(str(DeviceTopic.availability("cam-quiet")), b"", qos=1, retain=True).wait_for_publish(5)
        bad = b'{"schema_version": 1, "device_id": "cam-other", "sent_at": 1}'
        client.publish(str(DeviceTopic("cam-quiet", Channel.TELEMETRY)), bad, qos=1).wait_for_publish(5)
        wait_for(lambda: 'channel="telemetry",outcome="MalformedMessage"' in api.get("/metrics").text, 30, "a metric")
        text = api.get("/metrics").text
        assert 'tandem_hub_device_sessions_total{state="SLEEP"}' in text
        assert 'channel="availability",outcome="MalformedMessage"' not in text
    finally:
        client.publish(str(DeviceTopic.availability("cam-quiet")), b"", qos=1, retain=True).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
