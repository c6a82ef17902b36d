"""What the hub accepts as an escalation's input, checked at the door, before it is stored or any model sees it.

A request's own fault (too large, an empty or undecodable image, a decompression
bomb, a tensor whose bytes do not fit its shape) is refused here with
``InvalidInput`` (``RequestTooLarge`` for size), which the adapters answer
with INVALID_ARGUMENT / RESOURCE_EXHAUSTED (HTTP 400 / 413) or a FAILED result:
it never reaches a replica, so it can never count against one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cloud.errors import InvalidInput, RequestTooLarge
from common.inference.preprocess import MAX_IMAGE_PIXELS, image_size
from protocol.messages import EncodedImage, Input

MAX_REQUEST_BYTES = 4 * 1024 * 1024

TENSOR_DTYPES = frozenset(
    {"uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "float16", "float32", "float64", "bool"}
)


@dataclass(frozen=True)
class InputLimits:
    max_request_bytes: int = MAX_REQUEST_BYTES
    max_image_pixels: int = MAX_IMAGE_PIXELS


def check_size(size: int, limits: InputLimits) -> None:
    if size > limits.max_request_bytes:
        raise RequestTooLarge(size, limits.max_request_bytes)


def check_input(data: Input, limits: InputLimits) -> None:
    """Raise InvalidInput unless a model could be given this input. Reads an image's header only."""
    if isinstance(data, EncodedImage):
        try:
            width, height = image_size(data.data)
        except ValueError as exc:
            raise InvalidInput(f"escalated image: {exc}") from exc
        if width * height > limits.max_image_pixels:
            raise InvalidInput(
                f"escalated image of {width}x{height} pixels is larger than the limit of {limits.max_image_pixels}"
            )
        return
    if data.dtype not in TENSOR_DTYPES:
        raise InvalidInput(f"escalated tensor: dtype {data.dtype!r} is not one of {', '.join(sorted(TENSOR_DTYPES))}")
    if not data.shape or any(d <= 0 for d in data.shape):
        raise InvalidInput(f"escalated tensor: shape {list(data.shape)} must have positive dimensions")
    expected = math.prod(data.shape) * np.dtype(data.dtype).itemsize
    if expected != len(data.data):
        raise InvalidInput(
            f"escalated tensor {data.dtype}{list(data.shape)} needs {expected} bytes, not {len(data.data)}"
        )
