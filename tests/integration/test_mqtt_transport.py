"""Escalations over MQTT instead of gRPC: the same hub, the same verdicts, and rejections come back as results."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt

from edge.app import EdgeRuntime
from edge.config import MqttTransportConfig
from edge.judge import TraceState
from protocol import DeviceTopic, EncodedImage, EscalationRequest, Prediction, new_trace_id
from protocol.codec import decode_result
from protocol.topics import Channel
from tests.integration.conftest import edge_config
from tests.integration.test_end_to_end import escalated
from tests.support.waiting import wait_for


def test_escalations_over_mqtt_get_their_verdicts(tmp_path, demo_assets, hub, mosquitto):
    hub.start()
    config = edge_config(tmp_path, demo_assets, hub, mosquitto.port, device_id="cam-mqtt", threshold=0.95)
    config = config.model_copy(update={"transport": MqttTransportConfig(kind="mqtt")})
    with EdgeRuntime(config) as runtime:
        runtime.run(max_frames=200)
        assert runtime.wait_resolved(60)
        sent_up = escalated(runtime)
        assert len(sent_up) > 3
        assert all(t.state is TraceState.COMPLETE and t.cloud_label is not None for t in sent_up)
        # The broker took each one, and the hub confirmed each one on .../accepted.
        assert runtime.metrics.value("escalations_sent", ack="relayed") == len(sent_up)
        assert runtime.metrics.value("hub_acks", status="accepted") + runtime.metrics.value(
            "hub_acks", status="repeat"
        ) == len(sent_up)
        assert runtime.store.outbox() == []


def test_a_rejected_mqtt_escalation_comes_back_as_a_failed_result(hub, mosquitto):
    hub.start()
    device = "cam-mqtt-reject"
    results: list[bytes] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, clean_session=True)
    client.username_pw_set(device)
    client.on_message = lambda _c, _u, m: results.append(m.payload)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        client.subscribe(str(DeviceTopic.results(device)), qos=1)
        assert subscribed.wait(10), "the broker did not confirm the results subscription"
        request = EscalationRequest(
            trace_id=new_trace_id(),
            device_id=device,
            local_prediction=Prediction("weak", "1", ("0", "1"), (0.5, 0.5)),
            input=EncodedImage("image/png", b"not a png", 8, 8),
            deadline_ms=5000,
        )
        wire = request.to_proto()
        wire.schema_version = 99
        topic = str(DeviceTopic(device, Channel.ESCALATIONS))
        client.publish(topic, wire.SerializeToString(), qos=1).wait_for_publish(5)
        client.publish(topic, b"\xff\x00 not protobuf", qos=1).wait_for_publish(5)  # dropped, logged
        wait_for(lambda: results, 20, "the FAILED result")
        result = decode_result(results[0])
        assert result.trace_id == request.trace_id and result.status.name == "FAILED"
        assert "schema_version 99 is not supported" in result.error
    finally:
        client.disconnect()
        client.loop_stop()
