"""Named pauses in a model update, so a test can kill -9 the device at an exact step (the technique of
etcd's gofail and FreeBSD's fail(9)).

    TANDEM_FAILPOINTS="preparing=30"    pause 30 s right after entering the preparing step

Read once, from the environment of the process; unset (always, outside such a test) every ``pause`` is a dict
lookup that finds nothing.
"""

from __future__ import annotations

import logging
import os
import time

logger = logging.getLogger(__name__)

STEPS = ("verifying", "downloading", "preparing", "swap", "probation")


def _parse(spec: str) -> dict[str, float]:
    points: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        step, _, seconds = item.partition("=")
        if step not in STEPS:
            raise ValueError(f"TANDEM_FAILPOINTS: unknown step {step!r}; steps are {', '.join(STEPS)}")
        points[step] = float(seconds or 0)
    return points


_POINTS = _parse(os.environ.get("TANDEM_FAILPOINTS", ""))


def pause(step: str) -> None:
    seconds = _POINTS.get(step)
    if seconds:
        logger.warning("models: failpoint %s: pausing %.0f s", step, seconds)
        time.sleep(seconds)
