"""A folder of images, read in file-name order."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import numpy as np

from common.inference.preprocess import MAX_IMAGE_PIXELS, decode_image
from edge.errors import SourceError
from edge.sources.base import Frame, FrameSource, Labels

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


class ImageFolderSource(FrameSource):
    def __init__(
        self,
        source_id: str,
        folder: Path,
        labels: Optional[Labels] = None,
        max_pixels: int = MAX_IMAGE_PIXELS,
        loop: bool = False,
    ) -> None:
        super().__init__(source_id)
        self._loop = loop
        self._folder = folder
        self._labels = labels
        self._max_pixels = max_pixels
        self._files: list[Path] = []

    def start(self) -> None:
        if not self._folder.is_dir():
            raise SourceError(f"source {self.source_id!r}: {self._folder} is not a folder")
        self._files = sorted(p for p in self._folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        logger.info("source %s: %d images in %s", self.source_id, len(self._files), self._folder)

    def frames(self) -> Iterator[Frame]:
        """The images in name order; with loop, again and again (the index keeps counting)."""
        index = 0
        while True:
            for path in self._files:
                image, error = _read(path, self._max_pixels)
                truth = self._labels.by_file.get(path.name) if self._labels else None
                yield Frame(self.source_id, index, time.time(), image, error=error, truth=truth, name=path.name)
                index += 1
            if not (self._loop and self._files):
                return

    def close(self) -> None:
        self._files = []


def _read(path: Path, max_pixels: int) -> tuple[Optional[np.ndarray], str]:
    """The image, or None and why not: unreadable, undecodable, or more pixels than max_pixels (never decoded)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"cannot read {path.name}: {exc}"
    try:
        return decode_image(data, max_pixels), ""
    except ValueError as exc:
        return None, f"cannot decode {path.name}: {exc}"
