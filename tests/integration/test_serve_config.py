"""`serve run deploy/cloud/serve.yaml` brings the hub up as Ray Serve's own CLI deploys it (ports and paths
changed for the test): HTTP health, the registry, and a gRPC escalation accepted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from edge.comms.grpc_client import GrpcTransport
from edge.config import GrpcConfig
from edge.errors import TransportError
from protocol import EncodedImage, EscalationRequest, Prediction, new_trace_id
from tandem.broker import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_serve_run_with_the_deploy_config(tmp_path, demo_assets, mosquitto):
    config = yaml.safe_load((ROOT / "deploy" / "cloud" / "serve.yaml").read_text())
    http_port, grpc_port = free_port(), free_port()
    config["http_options"]["port"] = http_port
    config["grpc_options"]["port"] = grpc_port
    config["applications"][0]["args"].update(
        model_path=str(demo_assets / "models" / "digits-strong.onnx"),
        trace_store_path=str(tmp_path / "hub.db"),
        mqtt_port=mosquitto.port,
        mqtt_username="tandem-hub-serve-run",  # apart from the session's hub on the same broker
    )
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    serve = Path(sys.executable).with_name("serve")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen(
        [str(serve), "run", str(path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline, healthy = time.monotonic() + 120, False
        while time.monotonic() < deadline and not healthy:
            time.sleep(1)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=2) as reply:
                    healthy = json.loads(reply.read()) == {"status": "ok"}
            except OSError:
                continue
        assert healthy, "serve run did not bring the hub up"
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v1/models", timeout=5) as reply:
            assert json.loads(reply.read()) == []
        transport = GrpcTransport(GrpcConfig(target=f"127.0.0.1:{grpc_port}", timeout_ms=10_000))
        transport.start()
        png = (demo_assets / "stream" / "images" / "000000.png").read_bytes()
        request = EscalationRequest(
            trace_id=new_trace_id(),
            device_id="cam-serve",
            deadline_ms=5000,
            local_prediction=Prediction("weak", "1", ("0", "1"), (0.5, 0.5)),
            input=EncodedImage("image/png", png, 32, 32),
        )
        for _ in range(30):  # the gRPC route may come up a moment after HTTP
            try:
                ack = transport.send(request.trace_id, request.to_proto().SerializeToString())
                break
            except TransportError:  # NOT_FOUND / UNAVAILABLE while the app finishes deploying
                time.sleep(1)
        else:
            pytest.fail("the gRPC Escalate route never answered")
        transport.close()
        assert ack.trace_id == request.trace_id and ack.status.name == "ACCEPTED"
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:  # Serve's graceful shutdown can take longer on a loaded machine
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
