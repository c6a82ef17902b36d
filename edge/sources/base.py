"""What every frame source yields, and the ground-truth sidecar they share."""

from __future__ import annotations

import abc
import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from edge.errors import SourceError


@dataclass(frozen=True)
class Labels:
    """Ground truth from a ``frame,file,label`` CSV, looked up by frame index or file name."""

    by_frame: dict[int, str]
    by_file: dict[str, str]


def load_labels(path: Path) -> Labels:
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise SourceError(f"cannot read labels {path}: {exc}") from exc
    try:
        return Labels(
            by_frame={int(r["frame"]): r["label"] for r in rows},
            by_file={r["file"]: r["label"] for r in rows},
        )
    except (KeyError, ValueError) as exc:
        raise SourceError(f"{path}: expected columns frame,file,label: {exc}") from exc


@dataclass(frozen=True)
class Frame:
    source_id: str
    index: int
    captured_at: float
    image: Optional[np.ndarray]
    """BGR or greyscale pixels; None when the frame could not be decoded."""
    error: str = ""
    """Why ``image`` is None."""
    truth: Optional[str] = None
    """The ground-truth label, when the source has a labels file."""
    name: str = ""
    """The file name, for image folders."""


class FrameSource(abc.ABC):
    """An iterable of frames. Open with ``start()`` (or ``with``), release with ``close()``."""

    def __init__(self, source_id: str) -> None:
        self.source_id = source_id

    @abc.abstractmethod
    def start(self) -> None:
        """Open the device or file; raise SourceError if it cannot be opened."""

    @abc.abstractmethod
    def frames(self) -> Iterator[Frame]:
        """Yield frames until the source ends."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device or file. Safe to call twice."""

    def stop(self) -> None:  # noqa: B027 - a no-op is right for sources that never wait
        """Make ``frames()`` return soon, from another thread (a live source may be waiting for a frame).

        Files and folders never block, so by default there is nothing to do.
        """

    def __enter__(self) -> FrameSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
