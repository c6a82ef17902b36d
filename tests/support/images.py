"""Small real images for tests, made here rather than stored."""

from __future__ import annotations

import zlib

import cv2
import numpy as np


def png(width: int = 8, height: int = 8, value: int = 128) -> bytes:
    """A grey PNG of the given size."""
    ok, data = cv2.imencode(".png", np.full((height, width), value, dtype=np.uint8))
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return data.tobytes()


def png_bomb(width: int, height: int) -> bytes:
    """A valid greyscale PNG of width x height zeros, made without ever holding its pixels: under 1 MB for
    30000 x 30000 (900 million pixels, 0.9 GB decoded). The same run of rows is compressed once, ended with a
    full flush so it can be repeated, and the zlib checksum runs over the rows as they would be decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    row = width + 1  # a filter byte, then the row's pixels
    per_block = max(1, min(height, 4_000_000 // row))
    blocks, rest = divmod(height, per_block)
    raw_block, raw_rest = bytes(row * per_block), bytes(row * rest)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(raw_block) + compressor.flush(zlib.Z_FULL_FLUSH)
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = last.compress(raw_rest) + last.flush(zlib.Z_FINISH)
    checksum = 1
    for _ in range(blocks):
        checksum = zlib.adler32(raw_block, checksum)
    checksum = zlib.adler32(raw_rest, checksum)
    data = b"\x78\xda" + block * blocks + tail + checksum.to_bytes(4, "big")
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
