"""The edge runtime's branch of the exception tree (its root, ``ConfigError`` and ``InferenceError`` are in
``common.errors``). Library errors are translated at each boundary."""

from __future__ import annotations

from common.errors import TandemError


class EdgeError(TandemError):
    """Base class for every error the edge runtime raises on purpose."""


class SourceError(EdgeError):
    """A frame source that cannot be opened."""


class StoreError(EdgeError):
    """The device's SQLite store cannot be opened or written."""


class StoreFull(StoreError):
    """The device store's filesystem is full (SQLITE_FULL): nothing new is written until space returns.
    What is on disk stays intact; SQLite rolls the failed transaction back."""


class TransportError(EdgeError):
    """An escalation that did not reach the hub.

    ``retryable`` says whether sending the same bytes again can succeed (the
    hub is down or busy) or not (the hub rejected the request as invalid).
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable
