"""The device as a service: SIGTERM drains and closes cleanly, the outbox survives for the next start;
alerts and webhook calls fire for settled answers."""

from __future__ import annotations

import http.server
import json
import signal
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import yaml

from edge.app import EdgeRuntime
from edge.config import ActionsConfig
from edge.outbox import EdgeStore
from protocol.topics import Channel, DeviceTopic
from tandem.broker import free_port
from tests.integration.conftest import edge_config
from tests.support.mjpeg import MjpegCamera


def test_sigterm_drains_and_the_outbox_survives_a_restart(tmp_path, demo_assets, hub, mosquitto):
    camera = MjpegCamera(sorted((demo_assets / "stream" / "images").iterdir())[:20], free_port(), fps=30)
    camera.start()
    config = tmp_path / "edge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "device_id": "cam-sigterm",
                "state_path": str(tmp_path / "edge.db"),
                "source": {"kind": "stream", "url": camera.url},
                "detector": {"model_path": str(demo_assets / "models" / "digits-weak.onnx")},
                "judge": {"preset": "cloud_only"},
                "transport": {"kind": "grpc", "target": f"127.0.0.1:{free_port()}", "timeout_ms": 300},  # no hub there
                "mqtt": {"port": mosquitto.port},
                "service": {"http_port": 0},
            }
        )
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "tandem.cli", "edge", "run", "--config", str(config), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(6)  # start, then a few seconds of frames, every one escalated to a hub that is not there
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
        camera.cut()
    assert process.returncode == 0, err[-3000:]
    assert "closed" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["escalated"] > 10
    store = EdgeStore(tmp_path / "edge.db")
    store.open()  # opens cleanly: the WAL was checkpointed or is replayable
    try:
        rows = store.outbox()
        # A row stays until its verdict (a fallback keeps it, for a late verdict), so all are still there.
        assert len(rows) == summary["escalated"]
        assert all(r.attempts >= 1 for r in rows[:3]), "sends were attempted before the stop"
    finally:
        store.close()

    # The next start (now with a hub to reach) sends what was queued; the verdicts come back late,
    # after the fallbacks, and are recorded beside them.
    hub.start()
    restarted = edge_config(tmp_path, demo_assets, hub, mosquitto.port, device_id="cam-sigterm")
    restarted = restarted.model_copy(update={"state_path": tmp_path / "edge.db"})
    with EdgeRuntime(restarted) as runtime:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and runtime.store.outbox():
            time.sleep(0.2)
        assert runtime.store.outbox() == [], "the queued escalations were not sent after the restart"
        late = [t for t in runtime.store.traces() if t.escalated_at is not None]
        assert len(late) == summary["escalated"] and all(t.cloud_label is not None for t in late)


class _Webhook(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Webhook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def test_alerts_and_webhook_fire_once_per_settled_answer(tmp_path, demo_assets, hub, mosquitto):
    hub.start()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    device = "cam-alerts"
    alerts: list[dict] = []
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="alert-listener")
    listener.username_pw_set("alert-listener")
    listener.on_message = lambda _c, _u, m: alerts.append(json.loads(m.payload))
    subscribed = threading.Event()
    listener.on_subscribe = lambda *_: subscribed.set()
    listener.connect("127.0.0.1", mosquitto.port)
    listener.loop_start()
    listener.subscribe(str(DeviceTopic(device, Channel.ALERTS)), qos=1)
    assert subscribed.wait(10), "the broker did not confirm the alerts subscription"
    config = edge_config(tmp_path, demo_assets, hub, mosquitto.port, device_id=device, threshold=0.97)
    config = config.model_copy(
        update={
            "actions": ActionsConfig(
                enabled=True, alert_labels=["7"], webhook_url=f"http://127.0.0.1:{server.server_port}/hook"
            )
        }
    )
    try:
        with EdgeRuntime(config) as runtime:
            runtime.run(max_frames=150)
            assert runtime.wait_resolved(60)
            sevens = [t for t in runtime.store.traces() if t.final_label == "7"]
            time.sleep(1.0)
        assert sevens, "no frame ended as a 7"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(alerts) < len(sevens) or len(_Webhook.received) < len(sevens)):
            time.sleep(0.1)
    finally:
        listener.disconnect()
        listener.loop_stop()
        server.shutdown()
        server.server_close()
    assert sorted(a["trace_id"] for a in alerts) == sorted(t.trace_id for t in sevens)
    assert sorted(a["trace_id"] for a in _Webhook.received) == sorted(t.trace_id for t in sevens)
    by_cloud = {a["trace_id"] for a in alerts if a["decided_by"] == "cloud"}
    assert by_cloud == {t.trace_id for t in sevens if t.cloud_label is not None}
