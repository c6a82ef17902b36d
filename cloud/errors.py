"""The hub's exception tree, and the one place domain errors become gRPC and HTTP status codes."""

from __future__ import annotations

import grpc

from protocol.errors import MalformedMessage, ProtocolError, UnsupportedSchemaVersion


class HubError(Exception):
    """Base class for errors the hub raises on purpose."""


class TraceNotFound(HubError):
    pass


class RegistryError(HubError):
    """A registry request that cannot be carried out as asked."""


class ModelNotFound(RegistryError):
    pass


class ModelExists(RegistryError):
    pass


class IllegalStatusChange(RegistryError):
    pass


class RoutingError(HubError):
    """Routing rules that cannot be used; the hub keeps the rules it had."""


class NoRoute(HubError):
    """No routing rule matches the escalation."""


class ModelUnavailable(HubError):
    """Every replica of a model is ejected (circuit open), or the model cannot be loaded."""


# (gRPC code, HTTP status) per error type; the first match in order wins.
_STATUS: list[tuple[type[Exception], grpc.StatusCode, int]] = [
    (UnsupportedSchemaVersion, grpc.StatusCode.FAILED_PRECONDITION, 400),
    (MalformedMessage, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (ProtocolError, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (TraceNotFound, grpc.StatusCode.NOT_FOUND, 404),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND, 404),
    (ModelExists, grpc.StatusCode.ALREADY_EXISTS, 409),
    (IllegalStatusChange, grpc.StatusCode.FAILED_PRECONDITION, 409),
    (RegistryError, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (RoutingError, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (ModelUnavailable, grpc.StatusCode.UNAVAILABLE, 503),
]


def grpc_status(exc: Exception) -> grpc.StatusCode:
    return next((code for kind, code, _ in _STATUS if isinstance(exc, kind)), grpc.StatusCode.INTERNAL)


def http_status(exc: Exception) -> int:
    return next((status for kind, _, status in _STATUS if isinstance(exc, kind)), 500)
