"""Waiting in tests for something another thread or process does."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.05) -> None:
    """Return once ``predicate()`` is true; fail the test, naming ``what``, after ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
