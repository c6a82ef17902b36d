"""A sensor on MQTT drives the judge: frames are escalated while the sensor reads over its limit."""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt

from edge.app import EdgeRuntime
from edge.config import JudgeConfig, SensorConfig, SensorGateConfig
from edge.judge import TraceState
from tests.integration.conftest import edge_config
from tests.support.waiting import wait_for


def test_mqtt_sensor_gates_escalation(tmp_path, demo_assets, hub, mosquitto):
    hub.start()
    topic = "site/dock/thermo"
    config = edge_config(tmp_path, demo_assets, hub, mosquitto.port, device_id="cam-sensor")
    config = config.model_copy(
        update={
            "sensors": [SensorConfig(name="thermo", kind="mqtt", topic=topic, fields={"celsius": "number"})],
            "judge": JudgeConfig(
                confidence_threshold=0.0,  # only the sensor decides
                sensor_gates=[SensorGateConfig(sensor="thermo.celsius", above=60)],
            ),
        }
    )
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="thermo-1")
    publisher.username_pw_set("thermo-1")
    publisher.connect("127.0.0.1", mosquitto.port)
    publisher.loop_start()
    try:
        with EdgeRuntime(config) as runtime:

            def first_reading_seen() -> bool:
                # Sent again until it arrives: the sensor's subscription is in place once one gets through.
                publisher.publish(topic, json.dumps({"celsius": 21.0}), qos=1)
                return runtime.sensors.values().get("thermo.celsius") == 21.0

            wait_for(first_reading_seen, 10, "the first reading", poll_s=0.2)
            runtime.run(max_frames=20)
            publisher.publish(topic, b"{not json", qos=1).wait_for_publish(5)
            publisher.publish(topic, json.dumps({"celsius": 75.5}), qos=1).wait_for_publish(5)
            wait_for(lambda: runtime.sensors.values().get("thermo.celsius") == 75.5, 10, "the hot reading")
            runtime.run(max_frames=20)
            assert runtime.wait_resolved(60)
            traces = runtime.store.traces()
            assert runtime.metrics.value("sensor_errors", sensor="thermo", error="invalid") == 1
    finally:
        publisher.disconnect()
        publisher.loop_stop()
    cool, hot = traces[:20], traces[20:]
    assert all(t.escalated_at is None for t in cool)
    assert all(t.escalated_at is not None and t.state is TraceState.COMPLETE for t in hot)
    assert all(any("thermo.celsius = 75.5 > 60" in r for r in t.reasons) for t in hot)
