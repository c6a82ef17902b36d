"""Frame -> model input tensor. The hub uses the same code, so a model sees the same pixels on both sides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import cv2
import numpy as np

Dim = Union[int, str, None]


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
    return tensor.transpose(2, 0, 1)[np.newaxis]


def decode_image(data: bytes) -> np.ndarray:
    """Encoded PNG/JPEG bytes -> pixels; ValueError when they are not an image."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{len(data)} bytes are not a decodable image")
    return image
