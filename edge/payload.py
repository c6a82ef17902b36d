"""What an escalation carries: the frame, or a crop of it, encoded for the hub.

    payload: frame   the whole frame
    payload: boxes   the crop around the boxes the judge doubts (a detector's weak or unknown-class boxes),
                     grown by crop_margin for context; the whole frame when no box is doubted (an audit,
                     a blurred frame)
    max_side         scaled down until the longer side fits (never up)
    image_format     png (lossless) or jpeg at jpeg_quality

A crop or a scaled image names its place in the frame in the request's attributes (``protocol.regions``), and
the hub answers in the frame's pixels, so the device treats the verdict the same whatever it sent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from edge.config import EscalationConfig
from protocol.messages import Box, EncodedImage
from protocol.regions import Region, around

logger = logging.getLogger(__name__)

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}


@dataclass(frozen=True)
class Payload:
    image: EncodedImage
    attributes: dict[str, str]  # the region's, when the image is not the whole frame as taken
    kind: str  # "frame" or "crop", for the bytes metric

    @property
    def size(self) -> int:
        return len(self.image.data)


def encode(image: np.ndarray, settings: EscalationConfig, doubted: Sequence[Box]) -> Optional[Payload]:
    """The payload for one escalated frame; None when the encoder fails (the caller keeps the local answer)."""
    height, width = int(image.shape[0]), int(image.shape[1])
    if settings.payload == "boxes" and doubted:
        region = around(doubted, settings.crop_margin, width, height)
    else:
        region = Region(0, 0, width, height, width, height)
    longest = max(region.x1 - region.x0, region.y1 - region.y0)
    scale = min(1.0, settings.max_side / longest) if settings.max_side else 1.0
    if scale < 1.0:
        region = Region(region.x0, region.y0, region.x1, region.y1, width, height, scale)
    part = image[region.y0 : region.y1, region.x0 : region.x1]
    if scale < 1.0:
        size = (max(1, round(part.shape[1] * scale)), max(1, round(part.shape[0] * scale)))
        part = cv2.resize(part, size, interpolation=cv2.INTER_AREA)
    fmt = settings.image_format
    params = [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality] if fmt == "jpeg" else []
    ok, encoded = cv2.imencode(f".{fmt}", part, params)
    if not ok:
        logger.error("cannot encode a %dx%d image as %s for the hub", part.shape[1], part.shape[0], fmt)
        return None
    sent = EncodedImage(MEDIA_TYPES[fmt], encoded.tobytes(), int(part.shape[1]), int(part.shape[0]))
    plain = region.whole and scale == 1.0
    return Payload(sent, {} if plain else region.attributes(), "frame" if region.whole else "crop")
