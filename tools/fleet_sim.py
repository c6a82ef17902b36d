"""A simulated fleet against a real hub: N devices, each with its own MQTT connection (its results, its
acknowledgements) and, for every ``grpc_every``-th device, escalations over gRPC (``Escalate``) instead of MQTT.

    python -m tools.fleet_sim --mqtt-port 1883 --grpc-port 9000 --devices 200 --period 2 --seconds 300

Each device escalates one camera-sized frame (640x480 JPEG, one of a few dozen made at start) every ``period``
seconds, at a random phase, and acknowledges each result as a device does (``ResultAck``), so the hub has no
reason to send one twice. A result's round trip is timed from the escalation's send to its arrival on the
device's results topic. An escalation with no result ``grace_s`` after the run is counted lost.

What it reports (``FleetRun``): escalations sent and answered, answered per second (over the window and the
drain after it: what the hub sustained), round-trip p50/p90/p99, FAILED results, losses (no answer 180 s
after the run), how long the backlog took to drain, and MQTT publishes the broker refused.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import resource
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import cv2
import numpy as np
import paho.mqtt.client as mqtt

from common.mqtt import new_client
from edge.comms.grpc_client import GrpcTransport
from edge.config import GrpcConfig
from protocol import EncodedImage, EscalationRequest, Prediction, ResultAck, new_trace_id
from protocol.codec import decode_result, encode_request, encode_result_ack
from protocol.topics import Channel, DeviceTopic

FRAME_SIZE = (640, 480)
LABELS = tuple(str(d) for d in range(10))


def raise_file_limit() -> int:
    """Each simulated device holds a socket and paho's wake-up pair: 500 devices need about 1,500 descriptors,
    over the usual soft limit of 1,024. Raises the soft limit to the hard one (a broker started after this
    inherits it too); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def camera_frames(count: int = 24, seed: int = 0, quality: int = 85) -> list[bytes]:
    """640x480 JPEGs of a noisy scene with a bright digit-like blob: what a camera's escalated frame weighs."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        image = rng.normal(90, 25, (FRAME_SIZE[1], FRAME_SIZE[0])).clip(0, 255).astype(np.uint8)
        image = cv2.GaussianBlur(image, (5, 5), 0)
        x, y = int(rng.integers(100, 500)), int(rng.integers(80, 380))
        cv2.putText(image, str(i % 10), (x, y), cv2.FONT_HERSHEY_SIMPLEX, 4.0, 230, 12)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("OpenCV could not encode a JPEG")
        frames.append(data.tobytes())
    return frames


@dataclass
class FleetRun:
    devices: int
    period_s: float
    seconds: float
    sent: int = 0
    answered: int = 0
    failed: int = 0
    lost: int = 0
    send_errors: int = 0
    escalations_per_s: float = 0.0
    offered_per_s: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    bytes_per_escalation: int = 0
    drain_s: float = 0.0
    """After the last escalation, how long until every answer was in (or grace_s ran out)."""
    rtts_ms: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if k != "rtts_ms"}


class _Device:
    def __init__(self, fleet: Fleet, device_id: str, grpc: bool) -> None:
        self.fleet = fleet
        self.device_id = device_id
        self.grpc = grpc
        self.connected = threading.Event()
        self.client = new_client(f"sim-{device_id}")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def start(self) -> None:
        self.client.connect_async(self.fleet.host, self.fleet.mqtt_port, keepalive=60)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            return
        client.subscribe([(str(DeviceTopic.results(self.device_id)), 1)])
        self.connected.set()

    def _on_message(self, client: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        result = decode_result(message.payload)
        self.fleet.answered(result.trace_id, result.status.name == "SUCCESS")
        ack = encode_result_ack(ResultAck(result.trace_id, self.device_id))
        client.publish(str(DeviceTopic.acks(self.device_id)), ack, qos=1)

    def escalate(self, frame: bytes) -> None:
        request = EscalationRequest(
            new_trace_id(),
            self.device_id,
            Prediction("weak", "0", LABELS, tuple([0.1] * 10)),
            EncodedImage("image/jpeg", frame, *FRAME_SIZE),
            deadline_ms=30_000,
        )
        payload = encode_request(request)
        self.fleet.sending(request.trace_id, len(payload))
        if self.grpc:
            self.fleet.grpc_pool.submit(self.fleet.send_grpc, request.trace_id, payload)
            return
        info = self.client.publish(str(DeviceTopic(self.device_id, Channel.ESCALATIONS)), payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.fleet.send_error(request.trace_id)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Fleet:
    """``devices`` simulated devices on one broker and one hub."""

    def __init__(
        self,
        devices: int,
        mqtt_port: int,
        grpc_port: int,
        *,
        host: str = "127.0.0.1",
        grpc_every: int = 4,
        frames: Optional[list[bytes]] = None,
        seed: int = 0,
        prefix: str = "sim",
    ) -> None:
        raise_file_limit()
        self.host = host
        self.mqtt_port = mqtt_port
        self.grpc_port = grpc_port
        self._rng = random.Random(seed)
        self._frames = frames or camera_frames()
        self._lock = threading.Lock()
        self._sent_at: dict[str, float] = {}  # trace_id -> send time, until answered
        self._rtts: list[float] = []
        self._counting = False
        self._counts = {"sent": 0, "answered": 0, "failed": 0, "send_errors": 0, "bytes": 0}
        self._grpc_local = threading.local()
        self.grpc_pool = ThreadPoolExecutor(16, thread_name_prefix="sim-grpc")
        self.devices = [
            _Device(self, f"{prefix}-{i:04d}", grpc=grpc_every > 0 and i % grpc_every == grpc_every - 1)
            for i in range(devices)
        ]

    # -- bookkeeping (called from paho's and the gRPC pool's threads) -----------------------------------------

    def sending(self, trace_id: str, size: int) -> None:
        with self._lock:
            self._sent_at[trace_id] = time.perf_counter()
            if self._counting:
                self._counts["sent"] += 1
                self._counts["bytes"] += size

    def answered(self, trace_id: str, success: bool) -> None:
        now = time.perf_counter()
        with self._lock:
            sent = self._sent_at.pop(trace_id, None)
            if sent is None:
                return  # a repeat, or one sent before the measured window
            if self._counting:
                self._counts["answered"] += 1
                self._counts["failed"] += not success
                self._rtts.append((now - sent) * 1000.0)

    def send_error(self, trace_id: str) -> None:
        with self._lock:
            self._counts["send_errors"] += 1

    def send_grpc(self, trace_id: str, payload: bytes) -> None:
        transport = getattr(self._grpc_local, "transport", None)
        if transport is None:
            transport = GrpcTransport(GrpcConfig(target=f"{self.host}:{self.grpc_port}", timeout_ms=30_000))
            transport.start()
            self._grpc_local.transport = transport
        try:
            transport.send(trace_id, payload)
        except Exception:  # counted; the trace then has no result and counts as lost unless it arrives
            self.send_error(trace_id)

    # -- running ----------------------------------------------------------------------------------------------

    def connect(self, timeout_s: float = 120.0) -> None:
        for i, device in enumerate(self.devices):
            device.start()
            if i % 50 == 49:
                time.sleep(0.2)  # a fleet does not all connect in the same millisecond
        end = time.monotonic() + timeout_s
        for device in self.devices:
            if not device.connected.wait(max(0.0, end - time.monotonic())):
                raise RuntimeError(f"{device.device_id} did not connect to the broker in {timeout_s:g} s")

    def run(self, period_s: float, seconds: float, warmup_s: float = 10.0, grace_s: float = 180.0) -> FleetRun:
        """Escalate for warmup_s (not counted), then seconds (counted); wait up to grace_s for the last answers
        (a hub behind its load drains its backlog then: those answers count, late, in the round trips)."""
        due = [(time.monotonic() + self._rng.uniform(0, period_s), i) for i in range(len(self.devices))]
        heapq.heapify(due)
        start = time.monotonic()
        counting_from = start + warmup_s
        end = counting_from + seconds
        while True:
            at, index = heapq.heappop(due)
            if at >= end:
                break
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if not self._counting and time.monotonic() >= counting_from:
                with self._lock:
                    self._counting = True
                    self._sent_at.clear()  # warm-up escalations are neither timed nor counted
            self.devices[index].escalate(self._frames[self._rng.randrange(len(self._frames))])
            heapq.heappush(due, (at + period_s * self._rng.uniform(0.9, 1.1), index))
        finished = time.monotonic()
        deadline = finished + grace_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._sent_at:
                    break
            time.sleep(0.2)
        drained_s = time.monotonic() - finished
        with self._lock:
            self._counting = False
            counts, rtts, unanswered = dict(self._counts), list(self._rtts), len(self._sent_at)
        run = FleetRun(len(self.devices), period_s, seconds)
        run.sent, run.answered, run.failed = counts["sent"], counts["answered"], counts["failed"]
        run.send_errors, run.lost = counts["send_errors"], unanswered
        window = finished - counting_from
        run.escalations_per_s = run.answered / (window + drained_s) if window > 0 else 0.0
        run.drain_s = drained_s
        run.offered_per_s = len(self.devices) / period_s
        run.bytes_per_escalation = counts["bytes"] // max(1, counts["sent"])
        if rtts:
            ordered = sorted(rtts)
            run.p50_ms = statistics.median(ordered)
            run.p90_ms = ordered[int(0.90 * (len(ordered) - 1))]
            run.p99_ms = ordered[int(0.99 * (len(ordered) - 1))]
        run.rtts_ms = rtts
        return run

    def close(self) -> None:
        self.grpc_pool.shutdown(wait=True)
        for device in self.devices:
            device.close()


SHARD_DEVICES = 250  # paho waits on its sockets with select(), which takes no descriptor above 1,023: at three
# descriptors a device (its socket and paho's wake-up pair), one process holds about 300 devices at most


def _shard(
    devices: int,
    prefix: str,
    mqtt_port: int,
    grpc_port: int,
    grpc_every: int,
    seed: int,
    period_s: float,
    seconds: float,
    connected: Any,
    out: Any,
) -> None:
    """One process's devices: connect, wait for every shard to be connected, run, hand back the run."""
    fleet = Fleet(devices, mqtt_port, grpc_port, grpc_every=grpc_every, seed=seed, prefix=prefix)
    try:
        fleet.connect()
        connected.wait()
        out.put(fleet.run(period_s, seconds))
    finally:
        fleet.close()


def run_fleet(
    devices: int,
    mqtt_port: int,
    grpc_port: int,
    period_s: float,
    seconds: float,
    *,
    grpc_every: int = 4,
    prefix: str = "sim",
) -> FleetRun:
    """``devices`` simulated devices in as many processes as they need (SHARD_DEVICES each), run together;
    their figures merged (the round trips pooled)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    shards = [SHARD_DEVICES] * (devices // SHARD_DEVICES) + (
        [devices % SHARD_DEVICES] if devices % SHARD_DEVICES else []
    )
    connected = context.Barrier(len(shards))
    out = context.Queue()
    processes = [
        context.Process(
            target=_shard,
            args=(n, f"{prefix}{k}-", mqtt_port, grpc_port, grpc_every, k, period_s, seconds, connected, out),
        )
        for k, n in enumerate(shards)
    ]
    for process in processes:
        process.start()
    runs = [out.get(timeout=seconds + 600) for _ in processes]
    for process in processes:
        process.join(60)
    merged = FleetRun(devices, period_s, seconds)
    for run in runs:
        for name in ("sent", "answered", "failed", "lost", "send_errors"):
            setattr(merged, name, getattr(merged, name) + getattr(run, name))
        merged.escalations_per_s += run.escalations_per_s
        merged.rtts_ms += run.rtts_ms
        merged.drain_s = max(merged.drain_s, run.drain_s)
    merged.offered_per_s = devices / period_s
    merged.bytes_per_escalation = runs[0].bytes_per_escalation if runs else 0
    if merged.rtts_ms:
        ordered = sorted(merged.rtts_ms)
        merged.p50_ms = statistics.median(ordered)
        merged.p90_ms = ordered[int(0.90 * (len(ordered) - 1))]
        merged.p99_ms = ordered[int(0.99 * (len(ordered) - 1))]
    return merged


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fleet_sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--grpc-port", type=int, default=9000)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--period", type=float, default=2.0, help="seconds between one device's escalations")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the measured window lasts")
    parser.add_argument("--grpc-every", type=int, default=4, help="every Nth device escalates over gRPC (0: none)")
    args = parser.parse_args(argv)
    run = run_fleet(args.devices, args.mqtt_port, args.grpc_port, args.period, args.seconds, grpc_every=args.grpc_every)
    print(json.dumps(run.summary()))
    return 0 if run.lost == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
