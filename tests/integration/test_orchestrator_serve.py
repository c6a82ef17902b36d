"""The orchestrator's replica bounds on a real Ray Serve hub (``tandem hub run``): an operator's set_replicas, checked
by the guardrails, approved, and carried out by Serve's controller while escalations keep flowing; none is lost."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
import yaml

from edge.comms.grpc_client import GrpcTransport
from edge.config import GrpcConfig
from edge.errors import TransportError
from protocol import EncodedImage, EscalationRequest, Prediction, new_trace_id
from tandem.cli import main
from tests.integration.conftest import HubProcess
from tests.support.waiting import wait_for


@pytest.fixture
def orchestrated_serve_hub(tmp_path, demo_assets, mosquitto, hub) -> Iterator[HubProcess]:
    hub.stop()  # one Ray cluster at a time on this machine
    config = tmp_path / "hub.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "mqtt_username": "tandem-hub-scaling",
                "orchestrator": {"mode": "approve", "llm": {"enabled": False}, "bounds": {"replicas_max": 2}},
            }
        )
    )
    process = HubProcess(
        demo_assets / "models" / "digits-strong.onnx",
        mosquitto.port,
        tmp_path / "hub.db",
        tmp_path / "hub.log",
        extra=("--config", str(config)),
    )
    process.start()
    yield process
    process.stop()


def _get(hub: HubProcess, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{hub.http_port}{path}", timeout=10) as reply:
        return json.loads(reply.read())


def _pool(hub: HubProcess) -> dict:
    """The pool as the orchestrator sees it ({} for the moment Serve is applying a new config)."""
    return _get(hub, "/v1/admin/orchestrator/snapshot")["pool"] or {}


def test_replica_bounds_change_without_dropping_a_request(orchestrated_serve_hub, demo_assets, capsys):
    hub = orchestrated_serve_hub
    url = f"http://127.0.0.1:{hub.http_port}"
    wait_for(lambda: _pool(hub).get("running") == 1, 60, "the pool")

    transport = GrpcTransport(GrpcConfig(target=f"127.0.0.1:{hub.grpc_port}", timeout_ms=10_000))
    transport.start()
    frame = sorted((demo_assets / "stream" / "images").iterdir())[0].read_bytes()
    sent, refused, stop = [], [], threading.Event()

    def escalate() -> None:  # a steady stream of escalations while the pool scales
        while not stop.is_set():
            request = EscalationRequest(
                trace_id=new_trace_id(),
                device_id="cam-scaling",
                deadline_ms=10_000,
                local_prediction=Prediction("weak", "1", ("0", "1"), (0.5, 0.5)),
                input=EncodedImage("image/png", frame, 32, 32),
            )
            try:
                ack = transport.send(request.trace_id, request.to_proto().SerializeToString())
                (sent if ack.status.name == "ACCEPTED" else refused).append(request.trace_id)
            except TransportError as exc:
                refused.append(str(exc))
            time.sleep(0.05)

    flow = threading.Thread(target=escalate, daemon=True)
    flow.start()
    try:
        # Outside the bounds: refused by the guardrails and recorded; the loop goes on.
        capsys.readouterr()
        action = '{"tool": "set_replicas", "min_replicas": 1, "max_replicas": 9}'
        assert main(["hub", "proposals", "--url", url, "propose", action]) == 1
        assert "BLOCKED" in capsys.readouterr().out
        # Within them: waits for approval, then Serve's controller scales the pool.
        action = '{"tool": "set_replicas", "min_replicas": 2, "max_replicas": 2}'
        assert main(["hub", "proposals", "--url", url, "propose", action, "--reason", "more headroom"]) == 0
        proposal_id = capsys.readouterr().out.split()[0]
        assert main(["hub", "proposals", "--url", url, "approve", proposal_id]) == 0
        wait_for(lambda: _pool(hub).get("running") == 2, 120, "two replicas")
        pool = _pool(hub)
        assert (pool["min_replicas"], pool["max_replicas"]) == (2, 2)
        time.sleep(2)  # a little traffic on two replicas
    finally:
        stop.set()
        flow.join(15)
        transport.close()
    assert sent and not refused, refused[:3]

    def answered() -> bool:
        return all(_get(hub, f"/v1/traces/{t}")["status"] == "SUCCESS" for t in sent)

    wait_for(answered, 60, "every escalation sent while the pool scaled to be answered")
    # One command undoes it: back to the bounds it had.
    assert main(["hub", "proposals", "--url", url, "revert", proposal_id]) == 0
    wait_for(lambda: _pool(hub).get("max_replicas") == 1, 60, "the revert")
