"""Frame sources: video files and image folders (read in order), and live sources (latest frame wins).

``open_source(config)`` picks the implementation. A source yields ``Frame``s;
a frame that cannot be decoded is still yielded, with ``image=None`` and the
reason in ``error``, so the runtime can record it instead of losing it. Live
sources (cameras, RTSP/MJPEG URLs, GStreamer pipelines) reconnect on their own;
see ``edge.sources.live``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from edge.config import SourceConfig
from edge.errors import SourceError
from edge.sources.base import Frame, FrameSource, load_labels
from edge.sources.folder import ImageFolderSource
from edge.sources.live import (
    LiveSource,
    SourceState,
    StateCallback,
    camera_opener,
    ffmpeg_opener,
    gstreamer_opener,
)
from edge.sources.opencv import CaptureSource


def open_source(config: SourceConfig, on_state: Optional[StateCallback] = None) -> FrameSource:
    labels = load_labels(config.labels_csv) if config.labels_csv else None
    if config.kind == "images":
        return ImageFolderSource(config.source_id, _need_path(config), labels, config.max_image_pixels, config.loop)
    if config.kind == "video":
        return CaptureSource(config.source_id, str(_need_path(config)), labels)
    if config.kind == "stream":
        opener, what = ffmpeg_opener(str(config.url), config.timeout_ms), str(config.url)
    elif config.kind == "gstreamer":
        opener, what = gstreamer_opener(str(config.pipeline)), "a GStreamer pipeline"
    else:
        device = config.device if config.device is not None else config.camera_index
        opener, what = camera_opener(device), f"camera {device}"
    return LiveSource(
        config.source_id,
        opener,
        what,
        reconnect_initial_s=config.reconnect_initial_ms / 1000.0,
        reconnect_max_s=config.reconnect_max_ms / 1000.0,
        on_state=on_state,
    )


def _need_path(config: SourceConfig) -> Path:
    if config.path is None:
        raise SourceError(f"source {config.source_id!r} of kind {config.kind!r} needs a path")
    return config.path


__all__ = [
    "CaptureSource",
    "Frame",
    "FrameSource",
    "ImageFolderSource",
    "LiveSource",
    "SourceState",
    "load_labels",
    "open_source",
]
