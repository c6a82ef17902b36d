"""The hub's round trip, like for like: two real devices (``EdgeRuntime``, gRPC ``EscalateAndWait``) escalate the
same frames through the same Ray Serve gRPC proxy, one to the hub (application ``tandem``: Ingress, the routing,
the ModelPool with dynamic batching, the trace store), the other to ``bare`` (one deployment that parses the
request, runs the same model with the same dynamic batching (16, 5 ms) and answers). Each round trip is timed by
the device itself: from the escalation's enqueue in its outbox to the verdict stored on its trace.

Concurrency c: each device keeps exactly c escalations outstanding (``outbox.max_in_flight`` c, a new frame
enqueued as each verdict lands). The two devices take turns in blocks, so drift in the machine's load falls
on both.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.app import EdgeRuntime
from edge.config import (
    DetectorConfig,
    EdgeConfig,
    GrpcConfig,
    JudgeConfig,
    MqttConfig,
    OutboxConfig,
    ServiceConfig,
    SourceConfig,
)
from edge.judge import TraceState
from edge.sources import Frame

BATCH = (16, 5.0)  # batch_max_size, batch_wait_ms: the hub's defaults, given to the bare deployment too


def bare_deployment(model_path: Path) -> Any:
    """The baseline as a Serve application: ``tandem.v1.Escalation/EscalateAndWait`` on one deployment (the only
    method the bench's devices call: they wait for the verdict)."""
    from ray import serve

    from cloud.models.classifier import Classifier
    from protocol._generated.tandem.v1 import tandem_pb2 as pb
    from protocol.codec import decode_request, encode_result
    from protocol.messages import EscalationResult, ResultStatus

    @serve.deployment(name="BareEscalation", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})
    class BareEscalation:
        def __init__(self, path: str) -> None:
            self._model = Classifier(Path(path))

        @serve.batch(max_batch_size=BATCH[0], batch_wait_timeout_s=BATCH[1] / 1000.0)
        async def _run(self, inputs: list[Any]) -> list[Any]:
            return self._model.predict_batch(inputs)

        async def EscalateAndWait(self, request: bytes, grpc_context: Any) -> Any:
            parsed = decode_request(request)
            answer = await self._run(parsed.input)
            result = EscalationResult(parsed.trace_id, parsed.device_id, ResultStatus.SUCCESS, (answer,), answer)
            return pb.EscalationResult.FromString(encode_result(result))

    return BareEscalation.bind(str(model_path))


def device(work: Path, demo: Path, name: str, application: str, grpc_port: int, concurrency: int) -> EdgeRuntime:
    config = EdgeConfig(
        device_id=f"rtt-{name}-{concurrency}",
        state_path=work / f"rtt-{name}-{concurrency}.db",
        source=SourceConfig(kind="images", path=demo / "stream" / "images"),
        detector=DetectorConfig(model_path=demo / "models" / "digits-weak.onnx"),
        judge=JudgeConfig(preset="cloud_only"),
        transport=GrpcConfig(
            target=f"127.0.0.1:{grpc_port}", application=application, wait_for_verdict=True, timeout_ms=30_000
        ),
        outbox=OutboxConfig(max_in_flight=concurrency, retry_initial_ms=50, retry_max_ms=500),
        mqtt=MqttConfig(port=9, connect_timeout_ms=200),  # verdicts come back in the gRPC response
        service=ServiceConfig(http_port=None),
    )
    runtime = EdgeRuntime(config)
    runtime.start()
    return runtime


def drive(runtime: EdgeRuntime, images: list[np.ndarray], total: int, concurrency: int, start: int) -> None:
    """Enqueue ``total`` escalations, keeping ``concurrency`` outstanding; return when all have verdicts."""
    sent = 0
    while sent < total:
        if runtime.store.depth().rows < concurrency:
            image = images[(start + sent) % len(images)]
            runtime.process(Frame("rtt", start + sent, time.time(), image))
            sent += 1
        else:
            time.sleep(0.0002)
    if not runtime.wait_resolved(120):
        raise RuntimeError(f"{runtime.config.device_id}: verdicts missing after 120 s")


def round_trips_ms(runtime: EdgeRuntime) -> dict[str, float]:
    """Enqueue (PENDING_CLOUD) to verdict stored (COMPLETE), per escalated trace, from the device's history."""
    found = {}
    for trace in runtime.store.traces():
        if trace.escalated_at is None:
            continue
        pending = next((t.at for t in trace.history if t.target is TraceState.PENDING_CLOUD), None)
        done = next((t.at for t in trace.history if t.target is TraceState.COMPLETE), None)
        if pending is None or done is None:
            raise RuntimeError(f"trace {trace.trace_id} has no verdict: {trace.state}")
        found[trace.trace_id] = (done - pending) * 1000.0
    return found


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def measure(
    work: Path, demo: Path, grpc_port: int, levels: tuple[int, ...], total: int, hubs: dict[str, str]
) -> dict[str, float]:
    """Per level, the bare deployment's and each hub's p50 and p99 (``hubs``: a name -> its Serve application),
    and each hub's ratios; ``rtt_p*_ratio<suffix>``: the worst level's, the suffix being the hub's name."""
    import cv2

    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((demo / "stream" / "images").iterdir())[:200]]
    figures: dict[str, float] = {}
    for concurrency in levels:
        sides = {"bare": device(work, demo, "bare", "bare", grpc_port, concurrency)}
        sides.update(
            {name: device(work, demo, f"hub{name}", app, grpc_port, concurrency) for name, app in hubs.items()}
        )
        try:
            block = max(32, 2 * concurrency)
            for runtime in sides.values():  # warm-up: connections, model loads, batch paths
                drive(runtime, images, concurrency * 2, concurrency, 0)
            warm = {name: set(round_trips_ms(r)) for name, r in sides.items()}
            for start in range(0, total, block):
                for runtime in sides.values():
                    drive(runtime, images, min(block, total - start), concurrency, start)
            samples = {
                name: [ms for trace_id, ms in round_trips_ms(r).items() if trace_id not in warm[name]]
                for name, r in sides.items()
            }
        finally:
            for runtime in sides.values():
                runtime.close()
        bare = percentiles(samples["bare"])
        figures[f"c{concurrency}_bare_p50_ms"], figures[f"c{concurrency}_bare_p99_ms"] = bare
        for name in hubs:
            hub = percentiles(samples[name])
            figures[f"c{concurrency}_hub{name}_p50_ms"], figures[f"c{concurrency}_hub{name}_p99_ms"] = hub
            figures[f"c{concurrency}_rtt_p50_ratio{name}"] = hub[0] / bare[0]
            figures[f"c{concurrency}_rtt_p99_ratio{name}"] = hub[1] / bare[1]
    for name in hubs:
        figures[f"rtt_p50_ratio{name}"] = max(figures[f"c{c}_rtt_p50_ratio{name}"] for c in levels)
        figures[f"rtt_p99_ratio{name}"] = max(figures[f"c{c}_rtt_p99_ratio{name}"] for c in levels)
    return figures
