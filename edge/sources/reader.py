"""One camera of several, read on its own thread into a one-frame slot.

A device with several cameras runs one ``CameraReader`` per camera and one frame loop that takes what the
slots hold. A camera that stalls (a stream that stops sending, a USB camera that hangs in its driver) blocks
only its own thread: the loop goes on with the others. A file waits for its slot to empty, so every frame of
it is processed; a live camera does not wait, its newest frame replaces one not yet taken (``dropped``), as a
camera that outruns its device must.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Optional

from edge.config import SourceConfig
from edge.sources import Frame, FrameSource, LiveSource, SourceState, StateCallback, open_source

logger = logging.getLogger(__name__)


class CameraReader:
    def __init__(
        self,
        config: SourceConfig,
        stop: threading.Event,
        arrived: threading.Event,
        on_state: Optional[StateCallback] = None,
        on_idle: Optional[Callable[[], None]] = None,
    ) -> None:
        self.config = config
        self._stop = stop
        self._arrived = arrived  # shared by the readers: set when any of them fills its slot
        self._on_state = on_state
        self._on_idle = on_idle
        self._slot: Optional[Frame] = None
        self._lock = threading.Condition()
        self._source: Optional[FrameSource] = None
        self.live = config.kind not in ("video", "images")
        self.finished = False
        self.read = 0
        self.dropped = 0  # live frames replaced before the loop took them
        self.error = ""
        self._thread = threading.Thread(target=self._run, name=f"camera-{config.source_id}", daemon=True)

    @property
    def source(self) -> Optional[FrameSource]:
        """The open source, while the reader runs."""
        return self._source

    def start(self) -> None:
        self._thread.start()

    def take(self) -> Optional[Frame]:
        """The frame waiting in the slot, if any (never blocks)."""
        with self._lock:
            frame, self._slot = self._slot, None
            if frame is not None:
                self._lock.notify_all()  # a file's reader waits for the slot to empty
            return frame

    def stop(self) -> None:
        self._stop.set()
        source = self._source
        if source is not None:
            source.stop()
        with self._lock:
            self._lock.notify_all()

    def join(self, timeout_s: float) -> None:
        self.stop()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("camera %s: its reader did not stop within %.0f s", self.config.source_id, timeout_s)

    def _put(self, frame: Frame) -> None:
        with self._lock:
            if self._slot is not None and self.live:
                self.dropped += 1
            while self._slot is not None and not self.live and not self._stop.is_set():
                self._lock.wait(0.1)
            self._slot = frame
        self._arrived.set()

    def _run(self) -> None:
        fps = self.config.max_fps
        interval = 1.0 / fps if fps else 0.0
        next_at = time.monotonic()
        try:
            with open_source(self.config, self._on_state) as source:
                self._source = source
                if isinstance(source, LiveSource) and self._on_idle is not None:
                    source.on_idle = self._on_idle
                for frame in source.frames():
                    self._put(frame)
                    self.read += 1
                    if self._stop.is_set():
                        break
                    if interval:
                        next_at = max(next_at + interval, time.monotonic() - interval)
                        self._stop.wait(max(0.0, next_at - time.monotonic()))
        except Exception as exc:  # a camera that cannot be read ends; the others go on
            self.error = str(exc)
            logger.error("camera %s: stopped: %s", self.config.source_id, exc)
            if self._on_state is not None:  # /healthz and tandem_edge_source_state say so
                self._on_state(self.config.source_id, SourceState.DOWN, f"stopped: {exc}")
        finally:
            self._source = None
            self.finished = True
            self._arrived.set()
