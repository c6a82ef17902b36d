"""Live sources: cameras, RTSP and HTTP MJPEG URLs, GStreamer pipelines.

A live source is read by its own thread as fast as it delivers, into a slot
that holds one frame: the frame loop always takes the newest frame, and a
frame it had no time for is overwritten and counted as dropped. Nothing
queues up behind a slow model, so latency stays one frame deep.

When the stream fails (no frame, a dropped connection, a camera unplugged)
the source goes ``DOWN``, is reopened with capped, jittered backoff, and the
time it was down is added to ``stats.down_s``. The frame loop just waits.

    CONNECTING --opened--> UP --read failed--> DOWN --backoff, reopen--> UP ...
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from edge.errors import SourceError
from edge.sources.base import Frame, FrameSource

logger = logging.getLogger(__name__)


class SourceState(str, enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    CLOSED = "closed"


@dataclass
class SourceStats:
    read: int = 0
    """Frames the source delivered."""
    dropped: int = 0
    """Frames overwritten before the frame loop took them (latest frame wins)."""
    reconnects: int = 0
    down_s: float = 0.0
    """Total time spent DOWN, reconnecting."""


Opener = Callable[[], cv2.VideoCapture]
StateCallback = Callable[[str, SourceState, str], None]


class LiveSource(FrameSource):
    def __init__(
        self,
        source_id: str,
        opener: Opener,
        description: str,
        *,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        on_state: Optional[StateCallback] = None,
    ) -> None:
        super().__init__(source_id)
        self._open = opener
        self._description = description
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._on_state = on_state
        self.stats = SourceStats()
        self.state = SourceState.CONNECTING
        self._cond = threading.Condition()
        self._latest: Optional[tuple[int, float, np.ndarray]] = None
        self._sequence = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.on_idle: Callable[[], None] = lambda: None
        """Called about twice a second while ``frames()`` waits for a frame (the runtime pings its watchdog)."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._read_loop, name=f"source-{self.source_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._set_state(SourceState.CLOSED, "closed")

    def frames(self) -> Iterator[Frame]:
        while not self._stop.is_set():
            with self._cond:
                if self._latest is None:
                    self._cond.wait(0.5)
                latest, self._latest = self._latest, None
            if latest is None:
                self.on_idle()  # outside the lock: the reader thread must never wait on the frame loop
                continue
            sequence, captured_at, image = latest
            yield Frame(self.source_id, sequence, captured_at, image)

    # -- the reader thread -----------------------------------------------------

    def _set_state(self, state: SourceState, reason: str) -> None:
        if state is self.state:
            return
        self.state = state
        log = logger.warning if state is SourceState.DOWN else logger.info
        log("source %s: %s (%s)", self.source_id, state.value, reason)
        if self._on_state is not None:
            self._on_state(self.source_id, state, reason)

    def _read_loop(self) -> None:
        delay = self._reconnect_initial_s
        down_since: Optional[float] = None
        while not self._stop.is_set():
            capture = self._try_open()
            if capture is not None:
                if down_since is not None:
                    self.stats.down_s += time.monotonic() - down_since
                    self.stats.reconnects += 1
                    down_since = None
                self._set_state(SourceState.UP, f"reading {self._description}")
                delay = self._reconnect_initial_s
                reason = self._pump(capture)
                capture.release()
                if self._stop.is_set():
                    return
            else:
                reason = f"cannot open {self._description}"
            if down_since is None:
                down_since = time.monotonic()
            self._set_state(SourceState.DOWN, reason)
            self._stop.wait(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._reconnect_max_s)
        if down_since is not None:
            self.stats.down_s += time.monotonic() - down_since

    def _try_open(self) -> Optional[cv2.VideoCapture]:
        try:
            capture = self._open()
        except (cv2.error, SourceError) as exc:
            logger.debug("source %s: open failed: %s", self.source_id, exc)
            return None
        if not capture.isOpened():
            capture.release()
            return None
        return capture

    def _pump(self, capture: cv2.VideoCapture) -> str:
        """Read until the stream fails or the source stops; return why it stopped."""
        while not self._stop.is_set():
            try:
                ok, image = capture.read()
            except cv2.error as exc:
                return f"read failed: {exc}"
            if not ok or image is None:
                return "the stream stopped delivering frames"
            with self._cond:
                if self._latest is not None:
                    self.stats.dropped += 1
                self._latest = (self._sequence, time.time(), image)
                self._sequence += 1
                self.stats.read += 1
                self._cond.notify()
        return "stopped"


def gstreamer_available() -> bool:
    return "GStreamer:                   YES" in cv2.getBuildInformation()


def ffmpeg_opener(url: str, timeout_ms: int) -> Opener:
    """RTSP, HTTP MJPEG and other URLs through OpenCV's FFmpeg backend, with open and read timeouts."""
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
    return lambda: cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)


def gstreamer_opener(pipeline: str) -> Opener:
    """A GStreamer pipeline ending in ``appsink`` (a Jetson CSI camera: ``nvarguscamerasrc ! ... ! appsink``)."""
    if not gstreamer_available():
        raise SourceError(
            "this OpenCV build has no GStreamer support (PyPI's opencv-python-headless never has); "
            "on a Jetson, use JetPack's OpenCV (deploy/jetson/install.sh makes it visible to the venv)"
        )
    return lambda: cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)


def camera_opener(device: str | int) -> Opener:
    """A V4L2 camera by index (0 = /dev/video0) or by device path."""
    return lambda: cv2.VideoCapture(device, cv2.CAP_V4L2)
