"""A frame goes from the device to the hub and its verdict comes back: real Mosquitto, real Ray Serve, real SQLite."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import grpc
import paho.mqtt.client as mqtt
import pytest

from edge.app import EdgeRuntime
from edge.comms.grpc_client import GrpcTransport
from edge.config import GrpcConfig
from edge.errors import TransportError
from edge.judge import TraceState
from edge.outbox import OutboxStatus
from protocol import DeviceTopic, EncodedImage, EscalationRequest, Prediction, new_trace_id
from protocol._generated.tandem.v1 import tandem_pb2_grpc as pb_grpc
from tests.integration.conftest import edge_config
from tests.support.waiting import wait_for


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.load(reply)


def escalated(runtime: EdgeRuntime):
    return [t for t in runtime.store.traces() if t.escalated_at is not None]


def test_frame_escalated_while_the_hub_is_down_gets_its_verdict_once_it_is_back(tmp_path, demo_assets, hub, mosquitto):
    hub.stop()
    config = edge_config(tmp_path, demo_assets, hub, mosquitto.port, device_id="cam-hub-down", threshold=0.97)
    with EdgeRuntime(config) as runtime:
        runtime.run(max_frames=80)
        sent_up = escalated(runtime)
        assert sent_up, "the judge escalated nothing; the test needs a lower-confidence frame"
        wait_for(lambda: all(r.attempts >= 2 for r in runtime.store.outbox()), 20, "retries against the dead hub")
        rows = runtime.store.outbox()
        assert {r.status for r in rows} == {OutboxStatus.QUEUED}
        assert all("UNAVAILABLE" in (r.last_error or "") for r in rows)
        assert {t.state for t in escalated(runtime)} == {TraceState.PENDING_CLOUD}

        hub.start()
        assert runtime.wait_resolved(60), "verdicts did not arrive after the hub came back"
        traces = escalated(runtime)
        assert len(traces) == len(sent_up)
        assert all(t.state is TraceState.COMPLETE and t.cloud_label is not None for t in traces)
        assert runtime.store.outbox() == []
        assert runtime.metrics.value("send_errors", retryable="true") >= len(sent_up)


def test_every_escalated_frame_gets_exactly_one_verdict(tmp_path, demo_assets, hub, mosquitto):
    hub.start()
    config = edge_config(tmp_path, demo_assets, hub, mosquitto.port, device_id="cam-e2e", threshold=0.95)
    with EdgeRuntime(config) as runtime:
        frames = runtime.run()
        assert runtime.wait_resolved(60)
        traces = runtime.store.traces()
        sent_up = escalated(runtime)
        assert len(traces) == frames == 540
        assert len(sent_up) > 10
        for trace in sent_up:
            assert trace.state is TraceState.COMPLETE, trace
            assert [t.target for t in trace.history].count(TraceState.COMPLETE) == 1
            assert trace.final_label == trace.cloud_label
        assert runtime.metrics.value("verdicts", outcome="completed") == len(sent_up)
        assert runtime.metrics.value("verdicts", outcome="duplicate") == 0
        # The hub cascade improves on the device alone.
        correct_local = sum(t.local_label == t.truth for t in sent_up)
        correct_final = sum(t.final_label == t.truth for t in sent_up)
        assert correct_final > correct_local

        # The hub's HTTP API tells the same story.
        trace_id = sent_up[0].trace_id
        body = get_json(f"http://127.0.0.1:{hub.http_port}/v1/traces/{trace_id}")
        assert body["status"] == "SUCCESS" and body["device_id"] == "cam-e2e"
        assert body["result"]["final"]["modelId"] == "aggregate:single"
        wait_for(
            lambda: get_json(f"http://127.0.0.1:{hub.http_port}/v1/traces/{trace_id}")["delivered_at"] is not None,
            10,
            "the broker's PUBACK to be recorded",
        )
        with pytest.raises(urllib.error.HTTPError) as missing:
            get_json(f"http://127.0.0.1:{hub.http_port}/v1/traces/{new_trace_id()}")
        assert missing.value.code == 404
        missing.value.close()


def test_hub_rejects_an_unknown_schema_version_and_the_device_does_not_retry(demo_assets, hub):
    hub.start()
    request = EscalationRequest(
        new_trace_id(),
        "cam-x",
        Prediction("m", "1", ("0",), (1.0,)),
        EncodedImage("image/png", b"x", 1, 1),
        deadline_ms=1000,
    ).to_proto()
    request.schema_version = 99
    stub = pb_grpc.EscalationStub(grpc.insecure_channel(f"127.0.0.1:{hub.grpc_port}"))
    with pytest.raises(grpc.RpcError) as rejected:
        stub.Escalate(request, timeout=10, metadata=(("application", "tandem"),))
    assert rejected.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "schema_version 99" in rejected.value.details()

    transport = GrpcTransport(GrpcConfig(target=f"127.0.0.1:{hub.grpc_port}"))
    transport.start()
    with pytest.raises(TransportError) as error:
        transport.send(request.trace_id, request.SerializeToString())
    transport.close()
    assert not error.value.retryable


def test_malformed_result_on_the_wire_is_dropped_and_the_runtime_keeps_going(tmp_path, demo_assets, hub, mosquitto):
    hub.start()
    config = edge_config(tmp_path, demo_assets, hub, mosquitto.port, device_id="cam-garbage", threshold=0.95)
    with EdgeRuntime(config) as runtime:
        poison = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="poison")
        poison.username_pw_set("poison")
        poison.connect(mosquitto.host, mosquitto.port)
        poison.loop_start()
        poison.publish(str(DeviceTopic.results("cam-garbage")), b"\x00\x01 not protobuf", qos=1).wait_for_publish(5)
        wait_for(lambda: runtime.metrics.value("bad_results", error="MalformedMessage") == 1, 10, "the bad message")
        poison.disconnect()
        poison.loop_stop()
        runtime.run(max_frames=120)
        assert runtime.wait_resolved(60)
        assert all(t.state is TraceState.COMPLETE for t in escalated(runtime))


def test_broker_down_means_fallback_at_the_deadline_not_a_crash(tmp_path, demo_assets, hub, mosquitto):
    hub.start()
    config = edge_config(
        tmp_path, demo_assets, hub, mqtt_port=1, device_id="cam-no-broker", threshold=0.95, deadline_ms=1500
    )
    config = config.model_copy(update={"mqtt": config.mqtt.model_copy(update={"connect_timeout_ms": 500})})
    with EdgeRuntime(config) as runtime:
        runtime.run(max_frames=100)
        assert runtime.wait_resolved(30)
        traces = escalated(runtime)
        assert traces and all(t.state is TraceState.FALLBACK_COMPLETE for t in traces)
        assert all(t.final_label == t.local_label for t in traces)
        assert runtime.metrics.value("fallbacks") == len(traces)


def test_verdict_published_while_the_device_is_offline_arrives_when_it_restarts(tmp_path, demo_assets, hub, mosquitto):
    hub.stop()
    config = edge_config(tmp_path, demo_assets, hub, mosquitto.port, device_id="cam-offline", threshold=0.97)
    with EdgeRuntime(config) as runtime:  # subscribes (the broker now holds a session), escalates, cannot send
        runtime.run(max_frames=60)
        queued = [(r.trace_id, r.payload) for r in runtime.store.outbox()]
        pending = {t.trace_id for t in escalated(runtime)}
    assert queued and pending

    # While the device is off, its escalations reach the hub another way and the results are published.
    hub.start()
    sender = GrpcTransport(GrpcConfig(target=f"127.0.0.1:{hub.grpc_port}"))
    sender.start()
    for trace_id, payload in queued:
        sender.send(trace_id, payload)
    sender.close()

    def all_delivered() -> bool:
        url = f"http://127.0.0.1:{hub.http_port}/v1/traces/"
        return all(get_json(url + t)["delivered_at"] for t in pending)

    wait_for(all_delivered, 30, "the broker to accept every result for the offline device")

    with EdgeRuntime(config) as runtime:  # same device id and state file: session and outbox resume
        assert runtime.wait_resolved(60)
        traces = escalated(runtime)
        assert {t.trace_id for t in traces} == pending
        assert all(t.state is TraceState.COMPLETE for t in traces)
        assert runtime.store.outbox() == []
