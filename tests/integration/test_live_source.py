"""A live HTTP MJPEG camera, served by the test: read, cut off, resumed; the runtime keeps going and counts the gap.

The same run checks /healthz and /metrics, and the systemd protocol (READY,
WATCHDOG pings from the frame loop) through a real notify socket.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

from edge.app import EdgeRuntime
from edge.config import (
    DetectorConfig,
    EdgeConfig,
    JudgeConfig,
    MqttConfig,
    ServiceConfig,
    SourceConfig,
)
from edge.sources import LiveSource, SourceState
from tandem.broker import free_port
from tests.support.mjpeg import MjpegCamera
from tests.support.waiting import wait_for


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def test_mjpeg_stream_cut_off_and_resumed(tmp_path, demo_assets, mosquitto, monkeypatch):
    images = sorted((demo_assets / "stream" / "images").iterdir())[:20]
    camera = MjpegCamera(images, free_port(), fps=60)
    camera.start()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.2)
    messages: list[str] = []

    def listen() -> None:  # like systemd, read every message as it comes
        while True:
            try:
                messages.append(notify.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    threading.Thread(target=listen, daemon=True).start()
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "300000")
    config = EdgeConfig(
        device_id="cam-live",
        state_path=tmp_path / "edge.db",
        source=SourceConfig(
            kind="stream", url=camera.url, reconnect_initial_ms=200, reconnect_max_ms=400, timeout_ms=2000
        ),
        detector=DetectorConfig(model_path=demo_assets / "models" / "digits-weak.onnx"),
        judge=JudgeConfig(preset="no_cloud"),
        mqtt=MqttConfig(port=mosquitto.port),
        service=ServiceConfig(http_port=0, stall_after_s=5),
    )
    runtime = EdgeRuntime(config)
    runtime.start()
    base = f"http://127.0.0.1:{runtime.health.port}"
    loop = threading.Thread(target=runtime.run, daemon=True)
    loop.start()
    try:
        wait_for(lambda: runtime.metrics.value("frames", outcome="complete") >= 30, 20, "frames from the camera")
        source = runtime._source
        assert isinstance(source, LiveSource) and source.state is SourceState.UP
        status, body = get(base + "/healthz")
        assert status == 200 and json.loads(body)["source"]["state"] == "up"

        camera.cut()
        wait_for(lambda: source.state is SourceState.DOWN, 10, "the source to notice the cut")
        before = runtime.metrics.value("frames", outcome="complete")
        time.sleep(1.0)
        assert runtime.metrics.value("frames", outcome="complete") == before  # nothing made up while down
        status, body = get(base + "/healthz")
        health = json.loads(body)
        assert status == 200, "a camera that is down is degraded, not a dead runtime"
        assert health["status"] == "degraded" and "source down" in health["degraded"]

        camera.start()
        wait_for(lambda: runtime.metrics.value("frames", outcome="complete") >= before + 30, 20, "frames again")
        assert source.stats.reconnects >= 1
        assert source.stats.down_s >= 0.9
        _, metrics = get(base + "/metrics")
        text = metrics.decode()
        assert 'tandem_edge_source_state{source="cam0",state="up"} 1.0' in text
        assert "tandem_edge_source_reconnects" in text and "tandem_edge_inference_ms_bucket" in text
        assert 'tandem_edge_judge_decisions_total{camera="cam0",cause="confident",verdict="keep"}' in text
    finally:
        runtime.stop()
        loop.join(10)
        runtime.close()
        camera.cut()
    assert not loop.is_alive(), "stop() did not end a run waiting on a live source"
    time.sleep(0.3)
    notify.close()
    assert messages[0].startswith("READY=1")
    assert any(m == "WATCHDOG=1" for m in messages)
    assert any("source cam0 down" in m for m in messages)
    assert messages[-1] == "STOPPING=1"
