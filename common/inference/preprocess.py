"""Frame -> model input tensor. The hub uses the same code, so a model sees the same pixels on both sides."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Union

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

Dim = Union[int, str, None]

MAX_IMAGE_PIXELS = 7680 * 4320
"""The default limit on an image's pixels (8K UHD, 33 megapixels): a larger one is refused before decoding."""

# Pillow is used here only to read headers, never to decode; its own bomb check (a warning, then an error past
# 179 megapixels) would only hide the size behind its message. decode_image applies its own, lower limit.
Image.MAX_IMAGE_PIXELS = None


def image_to_nchw(image: np.ndarray, input_shape: Sequence[Dim]) -> np.ndarray:
    """Resize and convert an image to a float32 [1, C, H, W] tensor with pixel values 0-255.

    ``input_shape`` is the ONNX input's declared shape; C must be 1 (greyscale)
    or 3 (RGB), and H, W fixed numbers.
    """
    _, channels, height, width = input_shape
    if not (isinstance(channels, int) and isinstance(height, int) and isinstance(width, int)):
        raise ValueError(f"model input {list(input_shape)} needs fixed channels, height and width")
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if channels == 1 and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    elif channels == 3 and image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif channels == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    if image.dtype != np.uint8:
        raise ValueError(f"expected 8-bit pixels, got {image.dtype}")
    tensor = image.astype(np.float32)
    if tensor.ndim == 2:
        return tensor[np.newaxis, np.newaxis]
    nchw: np.ndarray = tensor.transpose(2, 0, 1)[np.newaxis]
    return nchw


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from an encoded image's header, without decoding its pixels.

    ValueError when the bytes are empty or not an image format Pillow can identify (PNG, JPEG,
    BMP, TIFF, WebP, PNM, ...): an image whose size cannot be known is not decoded; and for a PNG,
    when a chunk is broken (its length past the end, its CRC wrong).
    """
    if not data:
        raise ValueError("0 bytes: an empty image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if image.format == "PNG":
                # Every chunk where its length says and its checksum right, without decompressing anything:
                # OpenCV's PNG reader spins for seconds on a chunk that claims more bytes than there are
                # (found by fuzzing: 100 bytes took 12 s to refuse).
                image.verify()
    except UnidentifiedImageError as exc:
        raise ValueError(f"{len(data)} bytes are not a decodable image (PNG, JPEG, BMP, TIFF, WebP, PNM)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # a known format with a broken header
        raise ValueError(f"{len(data)} bytes are not a decodable image: {exc}") from exc
    return int(width), int(height)


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded image bytes -> pixels; ValueError when they are not an image, or one of more than ``max_pixels``.

    The size comes from the header first, so a small file that declares a huge image (a decompression
    bomb: a 30000 x 30000 PNG fits in 3 MB and decodes to 2.7 GB) is refused without decoding it.
    """
    width, height = image_size(data)
    if width * height > max_pixels:
        raise ValueError(f"image of {width}x{height} pixels is larger than the limit of {max_pixels} pixels")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ValueError(f"{len(data)} bytes did not decode: {exc}") from exc
    if image is None or image.size == 0:
        raise ValueError(f"{len(data)} bytes are not a decodable image")
    return image
