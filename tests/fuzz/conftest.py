"""Property-based fuzzing (Hypothesis) of everything that reads bytes from outside: the protobuf and MQTT payload
decoders, the config loaders, the image decode path, the hub's request checks. Every input either decodes or is
refused with the documented error; nothing crashes, nothing hangs (each example has a deadline).

The default profile runs a few hundred examples per property inside tools/test; ``HYPOTHESIS_PROFILE=long``
(tools/fuzz --hypothesis) runs many more. tools/fuzz runs atheris, coverage-guided, for longer still."""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=300,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run, so CI is repeatable; tools/fuzz explores
)
settings.register_profile(
    "long", max_examples=20_000, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
