"""Where an escalated image lies in the device's frame, so the hub can answer in the frame's own pixels.

A device may send the hub less than the whole frame: a crop around the boxes it was unsure of (with a margin
of context), and smaller than the camera took it. The request's attributes then say which part of the frame
the image is and at what scale:

    tandem.frame    "w,h"          the frame's size in pixels
    tandem.region   "x0,y0,x1,y1"  the crop's corners in frame pixels
    tandem.scale    "s"            image pixels per frame pixel (0.5: sent at half size)

Without them the image is the whole frame, as taken. A hub detector puts the image back where it came from, in
a frame of the frame's size (``common.inference.detect.in_frame``; the crop's border pixels carried outwards),
so its model sees objects at the scale the device's camera gives them (a crop blown up to the model's input
would not). It keeps its boxes that the
crop shows whole, and the device's own boxes that the crop does not (``Region.merge``): its verdict covers the
whole frame either way.
Runs on Python 3.10 (the edge imports it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from protocol.errors import MalformedMessage
from protocol.messages import Box

FRAME = "tandem.frame"
REGION = "tandem.region"
SCALE = "tandem.scale"


@dataclass(frozen=True)
class Region:
    """A crop ``[x0, x1) x [y0, y1)`` of a ``width`` x ``height`` frame, sent at ``scale`` image pixels per frame
    pixel."""

    x0: int
    y0: int
    x1: int
    y1: int
    width: int
    height: int
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not (0 < self.width <= 1 << 15 and 0 < self.height <= 1 << 15):
            raise MalformedMessage(f"frame size {self.width}x{self.height} is out of range")
        if not (0 <= self.x0 < self.x1 <= self.width and 0 <= self.y0 < self.y1 <= self.height):
            corners = f"{self.x0},{self.y0},{self.x1},{self.y1}"
            raise MalformedMessage(f"region {corners} is empty or outside the {self.width}x{self.height} frame")
        if not (0 < self.scale <= 1):
            raise MalformedMessage(f"region scale {self.scale} is not in (0, 1]")

    @property
    def whole(self) -> bool:
        return (self.x0, self.y0, self.x1, self.y1) == (0, 0, self.width, self.height)

    def attributes(self) -> dict[str, str]:
        return {
            FRAME: f"{self.width},{self.height}",
            REGION: f"{self.x0},{self.y0},{self.x1},{self.y1}",
            SCALE: f"{self.scale:.6g}",
        }

    @classmethod
    def from_attributes(cls, attributes: Mapping[str, str], image_width: int, image_height: int) -> Region:
        """The region a request names, for its image of ``image_width`` x ``image_height``; the whole frame,
        as taken, when it names none. MalformedMessage when the attributes do not parse or do not fit."""
        if FRAME not in attributes:
            return cls(0, 0, image_width, image_height, image_width, image_height)
        width, height = _ints(attributes, FRAME, 2)
        x0, y0, x1, y1 = _ints(attributes, REGION, 4) if REGION in attributes else (0, 0, width, height)
        raw = attributes.get(SCALE, "1")
        try:
            scale = float(raw)
        except ValueError as exc:
            raise MalformedMessage(f"{SCALE} {raw!r} is not a number") from exc
        region = cls(x0, y0, x1, y1, width, height, scale)
        expected = (round((x1 - x0) * scale), round((y1 - y0) * scale))
        if abs(expected[0] - image_width) > 1 or abs(expected[1] - image_height) > 1:
            raise MalformedMessage(f"a {image_width}x{image_height} image is not region {x0},{y0},{x1},{y1} at {scale}")
        return region

    def to_frame(self, box: Box) -> Box:
        """A box in the escalated image's pixels, in the frame's."""
        s = self.scale
        return Box(
            box.x0 / s + self.x0, box.y0 / s + self.y0, box.x1 / s + self.x0, box.y1 / s + self.y0, box.label, box.score
        )

    def shows(self, box: Box, edge: float = 1.0) -> bool:
        """Whether the crop shows the whole box: the box keeps ``edge`` pixels from each side of the crop that is
        not also the frame's (an object cut by the crop's border is only part of itself there)."""
        left = box.x0 >= self.x0 + edge or self.x0 == 0
        top = box.y0 >= self.y0 + edge or self.y0 == 0
        right = box.x1 <= self.x1 - edge or self.x1 == self.width
        bottom = box.y1 <= self.y1 - edge or self.y1 == self.height
        return (
            left
            and top
            and right
            and bottom
            and box.x0 >= self.x0
            and box.y0 >= self.y0
            and box.x1 <= self.x1
            and box.y1 <= self.y1
        )

    def merge(self, hub: Sequence[Box], device: Sequence[Box]) -> list[Box]:
        """The frame's boxes: the hub's where the crop shows them whole, the device's where it does not."""
        return [b for b in hub if self.shows(b)] + [b for b in device if not self.shows(b)]


def _ints(attributes: Mapping[str, str], key: str, count: int) -> tuple[int, ...]:
    raw = attributes[key]
    try:
        values = tuple(int(v) for v in raw.split(","))
    except ValueError as exc:
        raise MalformedMessage(f"{key} {raw!r} is not {count} integers") from exc
    if len(values) != count:
        raise MalformedMessage(f"{key} {raw!r} is not {count} integers")
    return values


def around(boxes: Sequence[Box], margin: float, width: int, height: int, scale: float = 1.0) -> Region:
    """The smallest region holding every box grown on each side by ``margin`` times its own larger side (context
    for the hub's model), within the ``width`` x ``height`` frame; the whole frame when there are none."""
    if not boxes:
        return Region(0, 0, width, height, width, height, scale)
    pads = [margin * max(b.x1 - b.x0, b.y1 - b.y0) for b in boxes]
    left = max(0, int(min(b.x0 - p for b, p in zip(boxes, pads, strict=True))))
    top = max(0, int(min(b.y0 - p for b, p in zip(boxes, pads, strict=True))))
    right = min(width, math.ceil(max(b.x1 + p for b, p in zip(boxes, pads, strict=True))))
    bottom = min(height, math.ceil(max(b.y1 + p for b, p in zip(boxes, pads, strict=True))))
    return Region(left, top, max(right, left + 1), max(bottom, top + 1), width, height, scale)
