"""What each fault test injected and what it counted, printed at the end of the pytest run.

A fault test calls ``report(...)``; ``tests/conftest.py`` prints every line
in a section of the terminal summary, so CI logs show the figures whether
the tests passed or not.
"""

from __future__ import annotations

from collections.abc import Mapping

LINES: list[str] = []


def report(test: str, injected: str, counted: Mapping[str, object]) -> None:
    figures = ", ".join(f"{key} {value}" for key, value in counted.items())
    LINES.append(f"{test}: injected {injected}; counted {figures}")
