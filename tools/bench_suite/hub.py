"""``tools/bench hub``: the hub's round trip and batching, each against a baseline in the same Ray cluster and run.

rtt_p50_ratio / rtt_p99_ratio   an escalation's round trip through the hub (gRPC Escalate in, routing, the
                                demo strong model on the ModelPool, the result out on MQTT and received by a
                                subscriber, which acknowledges it as a device does) ÷ a bare Ray Serve
                                deployment running the same model, called over HTTP with the same PNG; at
                                concurrency 1, 16 and 64 (the ratios quoted are the worst of the three). The
                                two paths take turns in blocks, so drift in the machine's load falls on both.
                                The cache is off, so every escalation runs the model.
batch_throughput_ratio          requests/s through the ModelPool with dynamic batching (up to 16, 5 ms wait) ÷
                                the same deployment with batches of 1, 32 callers at once, on an MLP classifier
                                this script builds (64 -> 5120 -> 5120 -> 5120 -> 10, random weights: the cost of a
                                trained one) whose single inference takes >= 5 ms here.

Ray calls live in cloud/app.py and cloud/deployments/ for the product; this script adds only the baseline deployment.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import yaml

from common.mqtt import new_client
from edge.comms.grpc_client import GrpcTransport
from edge.config import GrpcConfig
from protocol import EncodedImage, EscalationRequest, Prediction, ResultAck, new_trace_id
from protocol.codec import decode_result, encode_result_ack
from protocol.topics import DeviceTopic
from tandem.broker import MosquittoBroker, free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / ".tandem" / "demo"
DEVICE = "bench-device"
LEVELS = (1, 16, 64)
GOALS = {"rtt_p50_ratio": ("<=", 1.5), "rtt_p99_ratio": ("<=", 3.0), "batch_throughput_ratio": (">=", 2.0)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="end with the figures as one JSON line")
    parser.add_argument("--requests", type=int, default=256, help="round trips per concurrency level")


def build_big_model(path: Path, hidden: int = 5120) -> Path:
    """An MLP with the Tandem classifier contract (image [N,1,8,8] -> scores [N,10])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shapes = [(64, hidden), (hidden, hidden), (hidden, hidden), (hidden, 10)]
    weights = [
        numpy_helper.from_array((rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32), f"w{i}")
        for i, s in enumerate(shapes)
    ]
    nodes = [
        helper.make_node("Flatten", ["image"], ["x0"], axis=1),
        helper.make_node("MatMul", ["x0", "w0"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["x1"]),
        helper.make_node("MatMul", ["x1", "w1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["x2"]),
        helper.make_node("MatMul", ["x2", "w2"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["x3"]),
        helper.make_node("MatMul", ["x3", "w3"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "big-mlp",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (
        ("tandem.model_id", "big-mlp"),
        ("tandem.model_version", "1"),
        ("tandem.labels", json.dumps([str(i) for i in range(10)])),
    ):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def _request(frame: bytes) -> EscalationRequest:
    return EscalationRequest(
        trace_id=new_trace_id(),
        device_id=DEVICE,
        deadline_ms=30_000,
        local_prediction=Prediction("weak", "1", ("0", "1"), (0.5, 0.5)),
        input=EncodedImage("image/png", frame, 8, 8),
    )


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _loop(concurrency: int, total: int, one: callable) -> list[float]:
    """``total`` calls of ``one(i)`` from ``concurrency`` threads; each returns its round trip in ms."""
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(total)))


def _alternating(concurrency: int, total: int, paths: dict[str, callable]) -> dict[str, list[float]]:
    """``total`` round trips down each path from ``concurrency`` threads, the paths taking turns in blocks.

    The machine's load drifts over a run (on this 2-core box, by more than the hub's overhead), so one
    path measured after the other would be compared under different conditions; in alternating blocks
    of max(32, 2 x concurrency) both see the same drift. The threads, and the connections each opens
    on its first call, last from the warm-up to the end of the level.
    """
    block = max(32, 2 * concurrency)
    samples: dict[str, list[float]] = {name: [] for name in paths}
    with ThreadPoolExecutor(concurrency) as pool:
        for one in paths.values():  # warm each path, and open every thread's connections
            list(pool.map(one, range(concurrency * 2)))
        for start in range(0, total, block):
            for name, one in paths.items():
                samples[name].extend(pool.map(one, range(start, min(total, start + block))))
    return samples


class ResultWaiter:
    """An MQTT subscriber on the bench device's results topic that wakes the sender of each trace."""

    def __init__(self, port: int) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.failed = 0
        self._client = new_client("bench-results")
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_: c.subscribe(str(DeviceTopic.results(DEVICE)), 1)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def expect(self, trace_id: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(trace_id, threading.Event())

    def _on_message(self, client: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        result = decode_result(message.payload)
        if result.status.name != "SUCCESS":
            self.failed += 1
        self.expect(result.trace_id).set()
        # As a device does: acknowledge it, so the hub does not send it again during the run.
        client.publish(str(DeviceTopic.acks(DEVICE)), encode_result_ack(ResultAck(result.trace_id, DEVICE)), qos=1)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def rtt(http_port: int, grpc_port: int, mqtt_port: int, frames: list[bytes], total: int) -> dict[str, float]:
    waiter = ResultWaiter(mqtt_port)
    time.sleep(0.5)
    figures: dict[str, float] = {}
    local = threading.local()

    def hub_one(i: int) -> float:
        if not hasattr(local, "transport"):
            local.transport = GrpcTransport(GrpcConfig(target=f"127.0.0.1:{grpc_port}", timeout_ms=30_000))
            local.transport.start()
        request = _request(frames[i % len(frames)])
        done = waiter.expect(request.trace_id)
        started = time.perf_counter()
        local.transport.send(request.trace_id, request.to_proto().SerializeToString())
        if not done.wait(60):
            raise RuntimeError(f"no result for {request.trace_id} within 60 s")
        return (time.perf_counter() - started) * 1000.0

    def bare_one(i: int) -> float:
        if not hasattr(local, "http"):
            local.http = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
        started = time.perf_counter()
        local.http.request("POST", "/bare", body=frames[i % len(frames)])
        reply = local.http.getresponse()
        reply.read()
        if reply.status != 200:
            raise RuntimeError(f"bare deployment answered {reply.status}")
        return (time.perf_counter() - started) * 1000.0

    try:
        for concurrency in LEVELS:
            samples = _alternating(concurrency, total, {"bare": bare_one, "hub": hub_one})
            bare, hub = _percentiles(samples["bare"]), _percentiles(samples["hub"])
            for name, value in (
                ("bare_p50_ms", bare[0]),
                ("bare_p99_ms", bare[1]),
                ("hub_p50_ms", hub[0]),
                ("hub_p99_ms", hub[1]),
            ):
                figures[f"c{concurrency}_{name}"] = value
            figures[f"c{concurrency}_rtt_p50_ratio"] = hub[0] / bare[0]
            figures[f"c{concurrency}_rtt_p99_ratio"] = hub[1] / bare[1]
    finally:
        waiter.close()
    if waiter.failed:
        raise RuntimeError(f"{waiter.failed} escalations did not succeed")
    figures["rtt_p50_ratio"] = max(figures[f"c{c}_rtt_p50_ratio"] for c in LEVELS)
    figures["rtt_p99_ratio"] = max(figures[f"c{c}_rtt_p99_ratio"] for c in LEVELS)
    return figures


def run(args: argparse.Namespace) -> int:
    import ray
    from ray import serve
    from starlette.requests import Request

    from cloud.app import GRPC_SERVICERS, ModelPool, build_app
    from cloud.config import HubConfig
    from cloud.models.classifier import Classifier
    from cloud.registry import SqliteRegistry

    @serve.deployment(name="Bare", max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.25})
    class Bare:
        """The baseline: the same model behind Serve's HTTP proxy, nothing else."""

        def __init__(self, path: str) -> None:
            self._model = Classifier(Path(path))

        async def __call__(self, request: Request) -> dict[str, str]:
            prediction = self._model.predict(EncodedImage("image/png", await request.body(), 8, 8))
            return {"label": prediction.label}

    strong = DEMO / "models" / "digits-strong.onnx"
    frames = [p.read_bytes() for p in sorted((DEMO / "stream" / "images").iterdir())[:200]]
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="tandem-bench-hub-") as tmp, MosquittoBroker(free_port()) as broker:
        work = Path(tmp)
        routing = work / "routing.yaml"
        routing.write_text(
            yaml.safe_dump(
                {
                    "models": {"strong": {"path": str(strong)}},
                    "routes": [{"name": "default", "steps": [{"model": "strong"}]}],
                    "cache": {"enabled": False},
                }
            )
        )
        config = HubConfig(
            routing_path=routing,
            trace_store_path=work / "hub.db",
            mqtt_port=broker.port,
            http_port=free_port(),
            grpc_port=free_port(),
        )
        ray.init(address="local", include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024 * 1024)
        try:
            serve.start(
                http_options={"host": "127.0.0.1", "port": config.http_port},
                grpc_options={"port": config.grpc_port, "grpc_servicer_functions": GRPC_SERVICERS},
            )
            serve.run(build_app(config), name=config.app_name, route_prefix="/")
            serve.run(Bare.bind(str(strong)), name="bare", route_prefix="/bare")
            figures.update(rtt(config.http_port, config.grpc_port, broker.port, frames, args.requests))

            big = build_big_model(work / "big-mlp.onnx")
            registry = SqliteRegistry(config.registry_file(), config.artifacts_dir())
            registry.open()
            sha = registry.put_artifact(big.read_bytes())
            figures["big_model_single_ms"] = _single_ms(Classifier(big), frames[0])
            rates = {}
            for name, batch in (("unbatched", 1), ("batched", 16)):
                pool = ModelPool.options(name=f"Pool-{name}", ray_actor_options={"num_cpus": 0.25}).bind(
                    str(config.artifacts_dir()), batch, 5.0, 2, config.max_image_pixels
                )
                handle = serve.run(pool, name=f"pool-{name}", route_prefix=None).options(multiplexed_model_id=sha)
                rates[name] = _throughput(handle, frames, 32, args.requests * 2)
                serve.delete(f"pool-{name}")
            figures["unbatched_rps"], figures["batched_rps"] = rates["unbatched"], rates["batched"]
            figures["batch_throughput_ratio"] = rates["batched"] / rates["unbatched"]
        finally:
            serve.shutdown()
            ray.shutdown()
    _print(figures, args)
    return 0


def _single_ms(model: object, frame: bytes) -> float:
    data = EncodedImage("image/png", frame, 8, 8)
    model.predict(data)
    times = []
    for _ in range(20):
        started = time.perf_counter()
        model.predict(data)
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def _throughput(handle: object, frames: list[bytes], concurrency: int, total: int) -> float:
    def one(i: int) -> float:
        handle.predict.remote(_request(frames[i % len(frames)])).result()
        return 0.0

    _loop(concurrency, concurrency * 2, one)  # load the model and warm up
    started = time.perf_counter()
    _loop(concurrency, total, one)
    return total / (time.perf_counter() - started)


def _print(figures: dict[str, float], args: argparse.Namespace) -> None:
    print(f"tools/bench hub: {args.requests} round trips per level, Python {sys.version.split()[0]}")
    print(
        f"  {'concurrency':>11} {'bare p50':>9} {'hub p50':>9} {'ratio':>6} {'bare p99':>9} {'hub p99':>9} {'ratio':>6}"
    )
    for c in LEVELS:
        f = {k.split("_", 1)[1]: v for k, v in figures.items() if k.startswith(f"c{c}_")}
        print(
            f"  {c:>11} {f['bare_p50_ms']:>7.2f}ms {f['hub_p50_ms']:>7.2f}ms {f['rtt_p50_ratio']:>6.2f}"
            f" {f['bare_p99_ms']:>7.2f}ms {f['hub_p99_ms']:>7.2f}ms {f['rtt_p99_ratio']:>6.2f}"
        )
    print(
        f"  batching: big-mlp single inference {figures['big_model_single_ms']:.2f} ms; 32 callers:"
        f" {figures['unbatched_rps']:.0f} req/s unbatched, {figures['batched_rps']:.0f} req/s batched"
    )
    for name, (op, goal) in GOALS.items():
        value = figures[name]
        met = value >= goal if op == ">=" else value <= goal
        print(f"  {name:<24} {value:8.3f}  {op} {goal:g}  {'met' if met else 'NOT MET'}")
    if args.json:
        print(json.dumps({k: round(v, 4) for k, v in figures.items()}))
