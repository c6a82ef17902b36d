"""Routing on a real hub (`tandem hub run --routing`, Ray Serve, Mosquitto): every strategy and aggregation, the
circuit breaker, the cache, multiplexing, the Triton backend against the hub's own v2 endpoint, the v2 protocol
with tritonclient over HTTP and gRPC, and a hot reload of the rules."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from edge.comms.grpc_client import GrpcTransport
from edge.config import GrpcConfig
from protocol import EncodedImage, EscalationRequest, Prediction, new_trace_id
from tandem.broker import free_port
from tests.integration.conftest import HubProcess
from tests.support.tcp_proxy import TcpForwarder
from tests.support.waiting import wait_for

DEAD_PORT = free_port()  # nothing listens here: the "flaky" model's only replica


def rules(models: Path, hub_grpc_port: int, reload_model: str = "digits-weak", extra: dict | None = None) -> dict:
    step = {"deadline_ms": 10_000}
    return {
        "models": {
            **(extra or {}),
            "digits-weak": {"path": str(models / "digits-weak.onnx"), "cost_per_1k": 0.01},
            "digits-strong": {"path": str(models / "digits-strong.onnx"), "cost_per_1k": 0.1},
            # The Triton backend, pointed at the hub's own v2 gRPC endpoint serving digits-strong.
            "strong-via-triton": {
                "path": str(models / "digits-strong.onnx"),
                "replicas": [
                    {"backend": "triton", "url": f"127.0.0.1:{hub_grpc_port}", "remote_name": "digits-strong"}
                ],
            },
            "flaky": {
                "path": str(models / "digits-strong.onnx"),
                "replicas": [{"backend": "triton", "url": f"127.0.0.1:{DEAD_PORT}", "timeout_ms": 2000}],
            },
            "digit-format": {"kind": "parser", "pattern": "[0-4]"},
        },
        "routes": [
            {"name": "single", "when": {"model_hint": ["single"]}, "steps": [{"model": "digits-strong", **step}]},
            *[
                {
                    "name": how,
                    "when": {"model_hint": [how]},
                    "strategy": "parallel",
                    "aggregate": how,
                    "steps": [{"model": "digits-strong", **step}, {"model": "digits-weak", **step}],
                }
                for how in ("vote", "max_confidence", "weighted")
            ],
            {
                "name": "chain",
                "when": {"model_hint": ["chain"]},
                "strategy": "parallel",
                "aggregate": "chain",
                "steps": [{"model": "digits-strong", **step}, {"model": "digit-format"}],
            },
            {
                "name": "first_success",
                "when": {"model_hint": ["first_success"]},
                "strategy": "first_success",
                "steps": [{"model": "flaky"}, {"model": "digits-strong", **step}],
            },
            {
                "name": "fallback",
                "when": {"model_hint": ["fallback"]},
                "strategy": "fallback",
                "cache": False,
                "steps": [{"model": "flaky"}, {"model": "digits-strong", **step}],
            },
            {
                "name": "cascade",
                "when": {"model_hint": ["cascade"]},
                "strategy": "cascade",
                "gate": 1.0,
                "steps": [{"model": "digits-weak", **step}, {"model": "digits-strong", **step}],
            },
            {
                "name": "weighted-ab",
                "when": {"model_hint": ["weighted-ab"]},
                "strategy": "weighted",
                "cache": False,
                "steps": [{"model": "digits-weak", "weight": 1}, {"model": "digits-strong", "weight": 1}],
            },
            {"name": "triton", "when": {"model_hint": ["triton"]}, "steps": [{"model": "strong-via-triton", **step}]},
            {
                "name": "reload",
                "when": {"model_hint": ["reload"]},
                "cache": False,
                "steps": [{"model": reload_model, **step}],
            },
        ],
        "breaker": {"failure_threshold": 2, "open_ms": 600_000},
    }


@pytest.fixture(scope="module")
def routed_hub(demo_assets, mosquitto, tmp_path_factory) -> Iterator[tuple[HubProcess, Path]]:
    work = tmp_path_factory.mktemp("routed-hub")
    routing = work / "routing.yaml"
    config = work / "hub.yaml"
    # Two pool models in turn must evict each other; its own MQTT user: client ids and share group apart from
    # the session's hub on the same broker.
    config.write_text("max_models_per_replica: 1\nmqtt_username: tandem-hub-routed\n")
    hub = HubProcess(
        demo_assets / "models" / "digits-strong.onnx",
        mosquitto.port,
        work / "hub.db",
        work / "hub.log",
        extra=("--routing", str(routing), "--config", str(config)),
    )
    routing.write_text(yaml.safe_dump(rules(demo_assets / "models", hub.grpc_port)))
    hub.start()
    yield hub, routing
    hub.stop()


def get(hub: HubProcess, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{hub.http_port}{path}", timeout=10) as reply:
        return json.loads(reply.read())


def escalate(hub: HubProcess, frame: Path, hint: str) -> dict:
    """One escalation over gRPC; returns its finished trace."""
    transport = GrpcTransport(GrpcConfig(target=f"127.0.0.1:{hub.grpc_port}", timeout_ms=10_000))
    transport.start()
    request = EscalationRequest(
        trace_id=new_trace_id(),
        device_id="cam-route",
        deadline_ms=30_000,
        model_hint=hint,
        local_prediction=Prediction("weak", "1", ("0", "1"), (0.5, 0.5)),
        input=EncodedImage("image/png", frame.read_bytes(), 8, 8),
    )
    try:
        assert transport.send(request.trace_id, request.to_proto().SerializeToString()).status.name == "ACCEPTED"
    finally:
        transport.close()
    wait_for(lambda: get(hub, f"/v1/traces/{request.trace_id}")["status"] not in ("PENDING", "RUNNING"), 60, hint)
    return get(hub, f"/v1/traces/{request.trace_id}")


def frames(demo_assets: Path) -> list[Path]:
    return sorted((demo_assets / "stream" / "images").iterdir())


def models_of(trace: dict) -> list[str]:
    return [o["modelId"] for o in trace["result"].get("outputs", [])]


def test_every_strategy_and_aggregation_answers(routed_hub, demo_assets):
    hub, _ = routed_hub
    frame = frames(demo_assets)[3]
    for how in ("vote", "max_confidence", "weighted"):
        trace = escalate(hub, frame, how)
        assert trace["status"] == "SUCCESS" and trace["route"] == how
        assert trace["result"]["final"]["modelId"] == f"aggregate:{how}"
        assert sorted(models_of(trace)) == ["digits-strong", "digits-weak"]
        assert trace["cost"] == pytest.approx(0.00011)
    single = escalate(hub, frame, "single")
    assert models_of(single) == ["digits-strong"] and single["cost"] == pytest.approx(0.0001)

    cascade = escalate(hub, frame, "cascade")  # gate 1: the strong model runs after the weak one
    assert models_of(cascade) == ["digits-weak", "digits-strong"]
    assert cascade["result"]["final"] == {**single["result"]["final"], "modelId": "aggregate:cascade"}

    picked = {tuple(models_of(escalate(hub, f, "weighted-ab"))) for f in frames(demo_assets)[:12]}
    assert picked == {("digits-weak",), ("digits-strong",)}  # 50/50: both arms get traffic


def test_chain_checks_the_strong_answer_with_the_parser(routed_hub, demo_assets):
    hub, _ = routed_hub
    for frame in frames(demo_assets)[:10]:
        trace = escalate(hub, frame, "chain")
        strong, parsed = trace["result"]["outputs"]
        top = strong["labels"][int(np.argmax(strong["scores"]))]
        expected = top if int(top) <= 4 else "invalid"
        assert (parsed["modelId"], trace["result"]["final"]["labels"][0]) == ("digit-format", expected)


def test_dead_replica_trips_the_breaker_and_fallback_still_answers(routed_hub, demo_assets):
    hub, _ = routed_hub
    traces = [escalate(hub, f, "fallback") for f in frames(demo_assets)[20:24]]
    assert all(t["status"] == "SUCCESS" and models_of(t) == ["digits-strong"] for t in traces)
    hops = [h["hop"] for h in traces[-1]["result"]["timings"]]
    assert any(h.startswith("model:flaky@") and h.endswith("failed") for h in hops)
    status = get(hub, "/v1/routing")
    assert status["replicas"]["flaky"] == {f"triton-grpc://127.0.0.1:{DEAD_PORT}": "open"}
    quick = escalate(hub, frames(demo_assets)[30], "first_success")  # the open circuit fails fast; strong answers
    assert quick["status"] == "SUCCESS" and models_of(quick) == ["digits-strong"]


def test_same_input_same_route_comes_from_the_cache(routed_hub, demo_assets):
    hub, _ = routed_hub
    frame = frames(demo_assets)[40]
    first = escalate(hub, frame, "single")
    second = escalate(hub, frame, "single")
    assert "cache" not in [h["hop"] for h in first["result"]["timings"]]
    assert "cache" in [h["hop"] for h in second["result"]["timings"]]
    assert second["cost"] == 0 and second["result"]["final"] == first["result"]["final"]
    assert get(hub, "/v1/routing")["cache"]["hits"] >= 1


def test_models_share_a_pool_replica_and_evict_each_other(routed_hub, demo_assets):
    hub, _ = routed_hub
    before = get(hub, "/v1/routing")["pool_loads"]
    for frame, hint in zip(frames(demo_assets)[50:54], ["reload", "single"] * 2, strict=True):
        assert escalate(hub, frame, hint)["status"] == "SUCCESS"  # digits-weak, then digits-strong, in turn
    assert get(hub, "/v1/routing")["pool_loads"] - before >= 3  # one model per replica: each switch reloads


def test_triton_backend_calls_a_v2_server(routed_hub, demo_assets):
    hub, _ = routed_hub
    frame = frames(demo_assets)[60]
    via_triton = escalate(hub, frame, "triton")
    direct = escalate(hub, frame, "single")
    assert via_triton["status"] == "SUCCESS", via_triton["error"]
    assert [h["hop"].split(" ")[0] for h in via_triton["result"]["timings"]][1] == (
        f"model:strong-via-triton@triton-grpc://127.0.0.1:{hub.grpc_port}"
    )
    assert via_triton["result"]["outputs"][0]["scores"] == pytest.approx(direct["result"]["outputs"][0]["scores"])


def test_tritonclient_speaks_v2_to_the_hub_over_http_and_grpc(routed_hub, demo_assets):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    hub, _ = routed_hub
    batch = np.random.default_rng(0).uniform(0, 16, (3, 1, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(str(demo_assets / "models" / "digits-strong.onnx"))
    (expected,) = session.run(["scores"], {"image": batch})
    for module, port in ((httpclient, hub.http_port), (grpcclient, hub.grpc_port)):
        client = module.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live() and client.is_model_ready("digits-strong")
        meta = client.get_model_metadata("digits-strong")
        inputs = meta["inputs"] if isinstance(meta, dict) else [{"name": i.name} for i in meta.inputs]
        assert inputs[0]["name"] == "image"
        data = module.InferInput("image", list(batch.shape), "FP32")
        data.set_data_from_numpy(batch)
        reply = client.infer("digits-strong", [data], outputs=[module.InferRequestedOutput("scores")])
        assert reply.as_numpy("scores") == pytest.approx(expected, abs=1e-5)
        with pytest.raises(Exception, match="unknown model"):
            client.infer("no-such-model", [data])
        client.close()


def test_changed_rules_are_reloaded_in_place(routed_hub, demo_assets):
    hub, routing = routed_hub
    before = get(hub, "/v1/routing")
    assert models_of(escalate(hub, frames(demo_assets)[70], "reload")) == ["digits-weak"]
    routing.write_text(yaml.safe_dump(rules(demo_assets / "models", hub.grpc_port, reload_model="digits-strong")))
    wait_for(lambda: get(hub, "/v1/routing")["digest"] != before["digest"], 60, "the new rules")
    after = get(hub, "/v1/routing")
    assert after["pid"] == before["pid"]  # the same ingress replica: reconfigured, not restarted
    assert models_of(escalate(hub, frames(demo_assets)[71], "reload")) == ["digits-strong"]

    routing.write_text("models: {}\nroutes: []\n")  # refused: the hub keeps the rules it has
    time.sleep(3)
    assert get(hub, "/v1/routing")["digest"] == after["digest"]
    assert models_of(escalate(hub, frames(demo_assets)[72], "reload")) == ["digits-strong"]


def test_rules_route_to_a_registry_version_and_the_registry_shows_it_serving(routed_hub, demo_assets):
    hub, routing = routed_hub
    base = f"http://127.0.0.1:{hub.http_port}"
    blob = (demo_assets / "models" / "digits-weak.onnx").read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    upload = urllib.request.Request(f"{base}/v1/artifacts/{sha}", data=blob, method="PUT")
    urllib.request.urlopen(upload, timeout=30).close()
    spec = {"name": "digits-small", "version": "7", "task": "classification", "cost_per_1k": 0.5}
    register = urllib.request.Request(
        f"{base}/v1/models",
        data=json.dumps({**spec, "artifact_sha256": sha}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(register, timeout=30).close()
    before = get(hub, "/v1/routing")["digest"]
    small = {"small": {"registry": "digits-small@7"}}
    routing.write_text(yaml.safe_dump(rules(demo_assets / "models", hub.grpc_port, "small", small)))
    wait_for(lambda: get(hub, "/v1/routing")["digest"] != before, 60, "the rules naming the registry version")

    trace = escalate(hub, frames(demo_assets)[80], "reload")
    assert models_of(trace) == ["digits-weak"]  # the registered artifact is the weak model's file
    assert trace["cost"] == pytest.approx(0.5 / 1000)  # the registry's cost_per_1k, the rules set none
    version = get(hub, "/v1/models/digits-small/7")
    assert (version["status"], version["replicas"], version["health"]) == ("serving", ["serve"], "healthy")

    after = get(hub, "/v1/routing")["digest"]
    routing.write_text(yaml.safe_dump(rules(demo_assets / "models", hub.grpc_port, "digits-strong")))
    wait_for(lambda: get(hub, "/v1/routing")["digest"] != after, 60, "rules without the registry version")
    assert get(hub, "/v1/models/digits-small/7")["status"] == "draining"


def test_an_ejected_replica_is_probed_and_taken_back(routed_hub, demo_assets):
    hub, routing = routed_hub
    forwarder = TcpForwarder(free_port(), hub.grpc_port)  # the replica's port: nothing listens yet
    key = f"triton-grpc://127.0.0.1:{forwarder.port}"
    models = demo_assets / "models"
    late = {
        "late": {
            "path": str(models / "digits-strong.onnx"),
            "replicas": [{"backend": "triton", "url": f"127.0.0.1:{forwarder.port}", "remote_name": "digits-strong"}],
        }
    }
    raw = rules(models, hub.grpc_port, "late", late)
    raw["breaker"] = {"failure_threshold": 2, "open_ms": 1500}
    try:
        before = get(hub, "/v1/routing")["digest"]
        routing.write_text(yaml.safe_dump(raw))
        wait_for(lambda: get(hub, "/v1/routing")["digest"] != before, 60, "the rules with the late replica")
        for frame in frames(demo_assets)[90:92]:
            assert escalate(hub, frame, "reload")["status"] == "FAILED"  # connection refused, twice: ejected
        assert get(hub, "/v1/routing")["replicas"]["late"] == {key: "open"}
        ejected = escalate(hub, frames(demo_assets)[92], "reload")
        assert ejected["status"] == "FAILED" and "circuit is open" in ejected["error"]

        forwarder.start()  # the replica is back; after open_ms one probe call may reach it
        probes = iter(frames(demo_assets)[93:150])
        wait_for(lambda: escalate(hub, next(probes), "reload")["status"] == "SUCCESS", 30, "the probe to succeed")
        assert get(hub, "/v1/routing")["replicas"]["late"] == {key: "closed"}
    finally:
        forwarder.close()
