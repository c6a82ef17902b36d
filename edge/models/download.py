"""Fetching a bundle's files: HTTP Range requests that resume after a cut, checked as the bytes arrive.

    <dest>.part grows until it holds the declared size; each attempt asks for ``Range: bytes=<have>-``
    more bytes than declared            -> TOO_LARGE (endless data), the part deleted
    under min_bytes_per_s over window_s -> SLOW_RETRIEVAL (a server that trickles), the part kept for a resume
    past the bundle's deadline          -> SLOW_RETRIEVAL
    abort() at any moment               -> ABORTED, the part kept
    complete, but another sha256        -> HASH_MISMATCH (mix-and-match), the part deleted
    complete and right                  -> renamed to <dest>
    a broken connection                 -> tried again (download_attempts), from where it stopped

Standard library only (urllib): the device installs nothing more for it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

from common.signing import BundleRefused
from edge.models import failpoints
from protocol.bundle import FileEntry, Refusal

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Limits:
    min_bytes_per_s: int
    window_s: float
    deadline_at: float
    """time.monotonic() by which the whole bundle must be in."""
    attempts: int
    ca_path: Optional[Path] = None
    """the fleet CA to check an https bundle server against (a secured hub); None: the system's CAs"""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Download:
    """One file. ``progress(bytes_so_far)`` is called as bytes arrive; ``abort`` stops it at the next chunk."""

    def __init__(
        self,
        url: str,
        dest: Path,
        entry: FileEntry,
        limits: Limits,
        abort: threading.Event,
        progress: Callable[[int], None] = lambda _n: None,
    ) -> None:
        self.url = url
        self.dest = dest
        self.part = dest.with_name(dest.name + ".part")
        self.entry = entry
        self.limits = limits
        self.abort = abort
        self.progress = progress

    def run(self) -> None:
        if self.dest.exists() and self.dest.stat().st_size == self.entry.size:
            return  # fetched and checked by an earlier run (the device was restarted mid-bundle)
        last_error = ""
        for attempt in range(1, self.limits.attempts + 1):
            try:
                self._attempt()
                break
            except (urllib.error.URLError, OSError) as exc:  # a cut: try again, resuming
                if isinstance(getattr(exc, "reason", exc), TimeoutError):  # nothing for a whole window: a stall
                    raise BundleRefused(
                        Refusal.SLOW_RETRIEVAL, f"{self.dest.name}: no bytes for {self.limits.window_s:g} s"
                    ) from exc
                last_error = str(getattr(exc, "reason", exc))
                logger.warning("models: %s attempt %d/%d: %s", self.dest.name, attempt, self.limits.attempts, exc)
                if self.abort.wait(min(2.0**attempt * 0.1, 5.0)):
                    raise BundleRefused(Refusal.ABORTED, "aborted") from exc
        else:
            raise BundleRefused(Refusal.DOWNLOAD_FAILED, f"{self.dest.name}: {last_error}")
        if sha256_of(self.part) != self.entry.sha256:
            self.part.unlink()
            raise BundleRefused(Refusal.HASH_MISMATCH, f"{self.dest.name} is not the file the manifest covers")
        self.part.rename(self.dest)

    def _attempt(self) -> None:
        have = self.part.stat().st_size if self.part.exists() else 0
        if have > self.entry.size:
            self.part.unlink()
            have = 0
        if have == self.entry.size:
            return
        request = urllib.request.Request(self.url, headers={"Range": f"bytes={have}-"})
        timeout = max(1.0, self.limits.window_s)
        context = ssl.create_default_context(cafile=str(self.limits.ca_path)) if self.limits.ca_path else None
        with urllib.request.urlopen(request, timeout=timeout, context=context) as reply:
            if reply.status != 206:  # the server ignored the range: start again
                have = 0
            with open(self.part, "ab" if have else "wb") as out:
                self._copy(reply, out, have)

    def _copy(self, reply: http.client.HTTPResponse, out: BinaryIO, have: int) -> None:
        window_start, window_bytes = time.monotonic(), 0
        while True:
            if self.abort.is_set():
                raise BundleRefused(Refusal.ABORTED, "aborted")
            chunk = reply.read1(CHUNK_BYTES)  # what has arrived, up to a chunk: a trickle is seen as one
            if not chunk:
                break
            have += len(chunk)
            if have > self.entry.size:
                out.close()
                self.part.unlink()
                raise BundleRefused(
                    Refusal.TOO_LARGE, f"{self.dest.name}: more than the {self.entry.size} bytes declared"
                )
            out.write(chunk)
            if have == len(chunk) or window_bytes == 0:
                out.flush()  # what has arrived is on disk before a pause (a test's kill -9 lands here)
                failpoints.pause("downloading")
            window_bytes += len(chunk)
            self.progress(have)
            now = time.monotonic()
            if now > self.limits.deadline_at:
                raise BundleRefused(Refusal.SLOW_RETRIEVAL, f"{self.dest.name}: not in by the bundle's deadline")
            if now - window_start >= self.limits.window_s:
                rate = window_bytes / (now - window_start)
                if rate < self.limits.min_bytes_per_s:
                    raise BundleRefused(
                        Refusal.SLOW_RETRIEVAL,
                        f"{self.dest.name}: {rate:.0f} B/s, below the minimum {self.limits.min_bytes_per_s} B/s",
                    )
                window_start, window_bytes = now, 0
        if have < self.entry.size:
            raise ConnectionError(f"the connection closed at {have} of {self.entry.size} bytes")
