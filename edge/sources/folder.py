"""A folder of images, read in file-name order."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from edge.errors import SourceError
from edge.sources.base import Frame, FrameSource, Labels

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


class ImageFolderSource(FrameSource):
    def __init__(self, source_id: str, folder: Path, labels: Optional[Labels] = None) -> None:
        super().__init__(source_id)
        self._folder = folder
        self._labels = labels
        self._files: list[Path] = []

    def start(self) -> None:
        if not self._folder.is_dir():
            raise SourceError(f"source {self.source_id!r}: {self._folder} is not a folder")
        self._files = sorted(p for p in self._folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        logger.info("source %s: %d images in %s", self.source_id, len(self._files), self._folder)

    def frames(self) -> Iterator[Frame]:
        for index, path in enumerate(self._files):
            image, error = _read(path)
            truth = self._labels.by_file.get(path.name) if self._labels else None
            yield Frame(self.source_id, index, time.time(), image, error=error, truth=truth, name=path.name)

    def close(self) -> None:
        self._files = []


def _read(path: Path) -> tuple[Optional[np.ndarray], str]:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        return None, f"cannot read {path.name}: {exc}"
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        return None, f"cannot decode {path.name} ({data.size} bytes)"
    return image, ""
