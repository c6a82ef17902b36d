"""The root of every error Tandem raises on purpose; each side (``edge.errors``, ``cloud.errors``) grows its own
branch from ``TandemError``. Library errors are translated at each boundary."""

from __future__ import annotations


class TandemError(Exception):
    """Base class for every error the project raises on purpose."""


class ConfigError(TandemError):
    """A configuration file that cannot be read or does not validate."""


class InferenceError(TandemError):
    """A model that cannot be loaded or cannot run on an input."""
