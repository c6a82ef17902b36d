"""Frame sources: video files, cameras and image folders, all read with OpenCV.

``open_source(config)`` picks the implementation. A source yields ``Frame``s;
a frame that cannot be decoded is still yielded, with ``image=None`` and the
reason in ``error``, so the runtime can record it instead of losing it.
"""

from __future__ import annotations

from pathlib import Path

from edge.config import SourceConfig
from edge.errors import SourceError
from edge.sources.base import Frame, FrameSource, load_labels
from edge.sources.folder import ImageFolderSource
from edge.sources.opencv import CaptureSource


def open_source(config: SourceConfig) -> FrameSource:
    labels = load_labels(config.labels_csv) if config.labels_csv else None
    if config.kind == "images":
        return ImageFolderSource(config.source_id, _need_path(config), labels)
    if config.kind == "video":
        return CaptureSource(config.source_id, str(_need_path(config)), labels)
    return CaptureSource(config.source_id, config.camera_index, labels)


def _need_path(config: SourceConfig) -> Path:
    if config.path is None:
        raise SourceError(f"source {config.source_id!r} of kind {config.kind!r} needs a path")
    return config.path


__all__ = ["CaptureSource", "Frame", "FrameSource", "ImageFolderSource", "load_labels", "open_source"]
