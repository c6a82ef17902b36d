"""The device's heartbeat on ``tandem/v1/devices/{id}/telemetry``: what happened since the previous one.

The frame loop feeds ``Telemetry`` one call per frame (a lock and a few additions); a background thread
publishes a snapshot every ``fleet.telemetry_interval_s`` at QoS 0: a heartbeat that cannot go now is worth
nothing later, so none is queued while the broker is away.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from protocol import fleet

logger = logging.getLogger(__name__)

MAX_LATENCIES = 10_000  # inference times kept per heartbeat for its p95 (at 5 s: 2,000 fps)
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# Where a Jetson reports its GPU load (per mille) and a Linux board its temperature (millidegrees).
GPU_LOAD = Path("/sys/devices/gpu.0/load")
THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


def _read_number(path: Path) -> Optional[float]:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def memory_mb() -> float:
    """This process's resident memory (Linux: /proc/self/statm; elsewhere 0)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return resident_pages * _PAGE_BYTES / 1e6


class Heartbeat:
    """Counters between two snapshots; thread-safe."""

    def __init__(self, device_id: str, clock: Callable[[], float] = time.time, cameras: Sequence[str] = ()) -> None:
        """``cameras``: the device's sources, each reported in every heartbeat (0 frames/s when it gave none: a
        hung camera shows as one); a source not named here counts from its first frame on."""
        self.device_id = device_id
        self._clock = clock
        self._lock = threading.Lock()
        self._cameras = dict.fromkeys(list(dict.fromkeys(cameras))[: fleet.MAX_CAMERAS])  # an ordered set
        self._reset(time.monotonic(), os.times())
        self.new_model()

    def new_model(self) -> None:
        """A model was swapped in: the since-the-model-started counters begin again (what a rollout compares)."""
        with self._lock:
            self._model_frames = 0
            self._model_uncertain = 0
            self._model_bins = [0] * fleet.CONFIDENCE_BINS
            self._model_latencies: collections.deque[float] = collections.deque(maxlen=MAX_LATENCIES)

    def _reset(self, at: float, cpu: os.times_result) -> None:
        self._since = at
        self._cpu = cpu
        self._frames = 0
        self._camera_frames: collections.Counter[str] = collections.Counter()
        self._escalations = 0
        self._fallbacks = 0
        self._bins = [0] * fleet.CONFIDENCE_BINS
        self._latencies: list[float] = []

    def frame(
        self,
        confidence: Optional[float],
        escalated: bool,
        inference_ms: Optional[float] = None,
        uncertain: bool = False,
        camera: str = "",
    ) -> None:
        with self._lock:
            self._frames += 1
            if camera and camera not in self._cameras and len(self._cameras) < fleet.MAX_CAMERAS:
                self._cameras[camera] = None
            if camera in self._cameras:
                self._camera_frames[camera] += 1
            self._escalations += escalated
            if inference_ms is None or confidence is None or not 0.0 <= confidence <= 1.0:
                return
            if len(self._latencies) < MAX_LATENCIES:
                self._latencies.append(inference_ms)
            self._model_latencies.append(inference_ms)
            bin_ = min(int(confidence * fleet.CONFIDENCE_BINS), fleet.CONFIDENCE_BINS - 1)
            self._bins[bin_] += 1
            self._model_bins[bin_] += 1
            self._model_frames += 1
            self._model_uncertain += uncertain

    def fell_back(self, count: int) -> None:
        with self._lock:
            self._fallbacks += count

    def snapshot(
        self, outbox_rows: int, outbox_oldest_age_s: float, judge_threshold: Optional[float] = None
    ) -> fleet.Telemetry:
        """The counts since the last snapshot, as rates; the counters start again."""
        now, cpu = time.monotonic(), os.times()
        with self._lock:
            elapsed = max(now - self._since, 1e-6)
            busy = (cpu.user + cpu.system) - (self._cpu.user + self._cpu.system)
            frames, escalations, fallbacks, bins = self._frames, self._escalations, self._fallbacks, self._bins
            cameras = {camera: self._camera_frames[camera] for camera in self._cameras}
            latencies = self._latencies
            model = (self._model_frames, self._model_uncertain, tuple(self._model_bins), list(self._model_latencies))
            self._reset(now, cpu)
        gpu = _read_number(GPU_LOAD)
        temperature = _read_number(THERMAL_ZONE)
        return fleet.Telemetry(
            device_id=self.device_id,
            sent_at=self._clock(),
            interval_s=elapsed,
            fps=frames / elapsed,
            camera_fps={camera: n / elapsed for camera, n in cameras.items()},
            escalations_per_s=escalations / elapsed,
            fallbacks_per_s=fallbacks / elapsed,
            outbox_rows=outbox_rows,
            outbox_oldest_age_s=max(0.0, outbox_oldest_age_s),
            confidence_histogram=tuple(bins),
            inference_p95_ms=float(np.percentile(latencies, 95)) if latencies else 0.0,
            model_frames=model[0],
            model_uncertain=model[1],
            model_confidence_histogram=model[2],
            model_p95_ms=float(np.percentile(model[3], 95)) if model[3] else 0.0,
            judge_threshold=judge_threshold,
            cpu_percent=max(0.0, 100.0 * busy / elapsed),
            memory_mb=memory_mb(),
            gpu_percent=gpu / 10.0 if gpu is not None else None,
            temperature_c=temperature / 1000.0 if temperature is not None else None,
        )


class HeartbeatLoop:
    """A named thread that publishes a snapshot every ``interval_s`` until ``close()``."""

    def __init__(
        self,
        heartbeat: Heartbeat,
        interval_s: float,
        outbox: Callable[[], tuple[int, float]],
        publish: Callable[[bytes], None],
        judge_threshold: Callable[[], Optional[float]] = lambda: None,
    ) -> None:
        """``outbox``: the outbox's rows and its oldest row's age (s); ``publish``: sends one message, or raises
        ConnectionError; ``judge_threshold``: the judge's confidence_threshold in effect."""
        self._heartbeat = heartbeat
        self._judge_threshold = judge_threshold
        self._interval_s = interval_s
        self._outbox = outbox
        self._publish = publish
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-telemetry", daemon=True)
        self.sent = 0
        self.skipped = 0

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.beat()

    def beat(self) -> None:
        try:
            rows, oldest_age_s = self._outbox()
            message = fleet.encode(self._heartbeat.snapshot(rows, oldest_age_s, self._judge_threshold()))
            self._publish(message)
            self.sent += 1
        except ConnectionError as exc:
            self.skipped += 1
            logger.debug("telemetry: heartbeat skipped: %s", exc)
        except Exception:  # a store error must not end the heartbeat for good
            self.skipped += 1
            logger.exception("telemetry: heartbeat failed")
