"""``tools/bench hub``: the hub's round trip and batching, each against a baseline in the same Ray cluster and run.

rtt_p50_ratio / rtt_p99_ratio   an escalation's round trip through the hub ÷ through a bare Serve deployment of the
                                same model (the same dynamic batching), both behind the same gRPC proxy and both
                                timed by a real device from the escalation's enqueue to the verdict stored on its
                                trace (``tools.bench_suite.hub_rtt``); at concurrency 1, 16 and 64, the worst
                                level's ratio quoted. The two take turns in blocks. The hub's cache is off.
baseline                        what the ratios are measured against (the bare deployment, named)
batch_throughput_ratio*         requests/s through the ModelPool with dynamic batching (up to 16, 5 ms wait) ÷ the
                                same deployment with batches of 1, 32 callers at once, the two pools taking turns
                                in rounds: on an MLP this script builds (64 -> 5120 x3 -> 10, the best case for
                                batching: _mlp), on a convolutional classifier (3x128x128 input, ~5 ms: _conv),
                                and on the demo's own strong model, the one the hub serves (no suffix).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from protocol import EncodedImage, EscalationRequest, Prediction, new_trace_id
from tandem.broker import MosquittoBroker, free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / ".tandem" / "demo"
DEVICE = "bench-device"
LEVELS = (1, 16, 64)
GOALS = {"rtt_p50_ratio": ("<=", 1.5), "rtt_p99_ratio": ("<=", 3.0), "batch_throughput_ratio": (">=", 2.0)}
BASELINE = (
    "bare Serve deployment of the same model (dynamic batching 16 / 5 ms) behind the same gRPC proxy, "
    "EscalateAndWait from a real device, enqueue to verdict stored"
)


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


def _loop(concurrency: int, total: int, one: callable) -> list[float]:
    """``total`` calls of ``one(i)`` from ``concurrency`` threads; each returns its round trip in ms."""
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(total)))


def run(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from cloud.app import GRPC_SERVICERS, ModelPool, build_app
    from cloud.config import HubConfig
    from cloud.models.classifier import Classifier
    from cloud.registry import SqliteRegistry
    from tools.bench_suite import edge_speed, hub_rtt

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
            batch_max_size=hub_rtt.BATCH[0],
            batch_wait_ms=hub_rtt.BATCH[1],
        )
        ray.init(address="local", include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024 * 1024)
        try:
            serve.start(
                http_options={"host": "127.0.0.1", "port": config.http_port},
                grpc_options={"port": config.grpc_port, "grpc_servicer_functions": GRPC_SERVICERS},
            )
            serve.run(build_app(config), name=config.app_name, route_prefix="/")
            # The same hub with its model in the Ingress replica (model_pool: ingress): one Serve hop fewer.
            local = config.model_copy(
                update={
                    "app_name": "tandem-ingress",
                    "model_pool": "ingress",
                    "mqtt_username": "tandem-hub-ingress",
                    "trace_store_path": work / "ingress" / "hub.db",
                    "artifacts_path": config.artifacts_dir(),
                }
            )
            serve.run(build_app(local), name=local.app_name, route_prefix="/ingress")
            # With route_prefix None the gRPC proxy answered NOT_FOUND for the app: it gets one, as the hub has.
            serve.run(hub_rtt.bare_deployment(strong), name="bare", route_prefix="/bare")
            hubs = {"": config.app_name, "_ingress": local.app_name}
            figures.update(hub_rtt.measure(work, DEMO, config.grpc_port, LEVELS, args.requests, hubs))
            serve.delete("bare")
            serve.delete(local.app_name)

            registry = SqliteRegistry(config.registry_file(), config.artifacts_dir())
            registry.open()
            models = {
                "_mlp": build_big_model(work / "big-mlp.onnx"),
                "_conv": edge_speed.build_conv(work / "conv.onnx", 48, 3),
                "": strong,
            }
            pools = {}
            for name, batch in (("unbatched", 1), ("batched", hub_rtt.BATCH[0])):
                pool = ModelPool.options(name=f"Pool-{name}", ray_actor_options={"num_cpus": 0.25}).bind(
                    str(config.artifacts_dir()), batch, hub_rtt.BATCH[1], 4, config.max_image_pixels
                )
                pools[name] = serve.run(pool, name=f"pool-{name}", route_prefix=None)
            for suffix, path in models.items():
                sha = registry.put_artifact(path.read_bytes())
                figures[f"single_ms{suffix}"] = _single_ms(Classifier(path), frames[0])
                handles = {name: pool.options(multiplexed_model_id=sha) for name, pool in pools.items()}
                rates: dict[str, list[float]] = {name: [] for name in handles}
                for _ in range(3):  # the two pools take turns, so both see the same machine
                    for name, handle in handles.items():
                        rates[name].append(_throughput(handle, frames, 32, args.requests))
                figures[f"unbatched_rps{suffix}"] = statistics.median(rates["unbatched"])
                figures[f"batched_rps{suffix}"] = statistics.median(rates["batched"])
                figures[f"batch_throughput_ratio{suffix}"] = (
                    figures[f"batched_rps{suffix}"] / figures[f"unbatched_rps{suffix}"]
                )
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
    print(f"tools/bench hub: {args.requests} round trips per level and side, Python {sys.version.split()[0]}")
    print(f"  baseline: {BASELINE}")
    print(
        f"  {'concurrency':>11} {'bare p50':>9} {'hub p50':>9} {'ratio':>6} {'bare p99':>9} {'hub p99':>9} {'ratio':>6}"
    )
    for suffix, what in (("", "model_pool serve (ModelPool deployment)"), ("_ingress", "model_pool ingress")):
        print(f"  hub with {what}:")
        for c in LEVELS:
            f = {k.split("_", 1)[1]: v for k, v in figures.items() if k.startswith(f"c{c}_")}
            print(
                f"  {c:>11} {f['bare_p50_ms']:>7.2f}ms {f[f'hub{suffix}_p50_ms']:>7.2f}ms"
                f" {f[f'rtt_p50_ratio{suffix}']:>6.2f} {f['bare_p99_ms']:>7.2f}ms {f[f'hub{suffix}_p99_ms']:>7.2f}ms"
                f" {f[f'rtt_p99_ratio{suffix}']:>6.2f}"
            )
    print("  batching, 32 callers:")
    for suffix, what in (("_mlp", "MLP 64-5120x3-10"), ("_conv", "conv 3x128x128"), ("", "digits-strong (served)")):
        print(
            f"    {what:<24} single {figures[f'single_ms{suffix}']:6.2f} ms  unbatched"
            f" {figures[f'unbatched_rps{suffix}']:6.0f} req/s  batched {figures[f'batched_rps{suffix}']:6.0f} req/s"
            f"  ratio {figures[f'batch_throughput_ratio{suffix}']:.2f}"
        )
    for name, (op, goal) in GOALS.items():
        value = figures[name]
        met = value <= goal if op == "<=" else value >= goal
        print(f"  {name:<24} {value:8.3f}  {op} {goal:g}  {'met' if met else 'NOT MET'}")
    if args.json:
        print(json.dumps({"baseline": BASELINE, **{k: round(v, 4) for k, v in figures.items()}}))
