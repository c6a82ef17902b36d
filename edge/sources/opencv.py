"""Video files and cameras through OpenCV's VideoCapture."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Optional, Union

import cv2

from edge.errors import SourceError
from edge.sources.base import Frame, FrameSource, Labels

logger = logging.getLogger(__name__)


class CaptureSource(FrameSource):
    """A video file (path) or a camera (index). Ends when the capture returns no frame."""

    def __init__(self, source_id: str, target: Union[str, int], labels: Optional[Labels] = None) -> None:
        super().__init__(source_id)
        self._target = target
        self._labels = labels
        self._capture: Optional[cv2.VideoCapture] = None

    def start(self) -> None:
        capture = cv2.VideoCapture(self._target)
        if not capture.isOpened():
            raise SourceError(f"source {self.source_id!r}: OpenCV cannot open {self._target!r}")
        self._capture = capture
        logger.info("source %s: opened %r", self.source_id, self._target)

    def frames(self) -> Iterator[Frame]:
        if self._capture is None:
            raise SourceError(f"source {self.source_id!r} was not started")
        index = 0
        while True:
            ok, image = self._capture.read()
            if not ok:
                logger.info("source %s: ended after %d frames", self.source_id, index)
                return
            truth = self._labels.by_frame.get(index) if self._labels else None
            yield Frame(self.source_id, index, time.time(), image, truth=truth)
            index += 1

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
