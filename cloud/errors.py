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


class ReplicaFailed(HubError):
    """A replica could not answer (it crashed, or raised); counts against it. The message is short:
    the device sees it, and the details stay in the hub's log."""


class ReplicaUnavailable(ReplicaFailed):
    """The replica died under the call (its process or its node gone): no answer about the input, so the trace
    is worth running again once Serve has noticed (``EscalationService``)."""


class V2Error(HubError):
    """An Open Inference Protocol v2 request that cannot be served: bad JSON, a tensor of the wrong type or shape."""


class V2ModelNotFound(V2Error):
    """A v2 request for a model the hub does not serve."""


class InvalidInput(HubError):
    """An escalation whose input the hub refuses before any model sees it: an image that is empty,
    undecodable or has too many pixels, a tensor whose bytes do not fit its shape. Never a replica's fault."""


class RequestTooLarge(InvalidInput):
    """A request larger than the hub's max_request_bytes."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"request of {size} bytes is larger than the hub's limit of {limit} bytes")
        self.size = size
        self.limit = limit


class QuotaExceeded(HubError):
    """A device, a tenant or an operator token over its quota: try again after ``retry_after_s``."""

    def __init__(self, message: str, quota: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.quota = quota
        self.retry_after_s = retry_after_s


class StorageQuotaExceeded(HubError):
    """A tenant's models would take more bytes than its ``max_model_bytes``."""


class DeviceNotFound(HubError):
    """No device by that id has ever spoken to this hub."""


class InvalidSettings(HubError):
    """Device settings the hub cannot store: not a mapping of sections to mappings, or a bad scope name."""


class Unauthorized(HubError):
    """An admin request without a valid operator token."""


class Forbidden(HubError):
    """An operator's request outside their role or their groups."""


class BundleError(HubError):
    """A model bundle that cannot be built as asked (a missing artifact, a manifest that does not validate)."""


class BundleNotFound(BundleError):
    pass


class KeysError(HubError):
    """The bundle-signing keys are missing or unusable (tandem hub keys init makes them)."""


class RolloutError(HubError):
    """A rollout request that cannot be carried out now: no device matches, or the rollout's state forbids it."""


class RolloutNotFound(RolloutError):
    pass


class OrchestratorError(HubError):
    """An orchestrator request that cannot be carried out: the orchestrator is off, or a proposal's state forbids
    the step (approving one already applied, reverting one never applied)."""


class ProposalNotFound(OrchestratorError):
    pass


class InvalidAction(OrchestratorError):
    """An action an operator sent that is not one of the orchestrator's tools, or not well formed."""


class ActionFailed(OrchestratorError):
    """An action passed the guardrails but the part it acts on could not carry it out (no such route, a pool
    that cannot scale)."""


class PkiError(HubError):
    """The fleet CA cannot do what was asked: no CA yet, a bad CSR, an unknown device."""


class InvalidCsr(PkiError):
    """A certificate signing request that cannot be read, does not verify, or carries a weak key."""


class EnrolmentRefused(HubError):
    """An enrolment token that is unknown, expired or already used, or a CSR that does not match it."""


# (gRPC code, HTTP status) per error type; the first match in order wins.
_STATUS: list[tuple[type[Exception], grpc.StatusCode, int]] = [
    (UnsupportedSchemaVersion, grpc.StatusCode.FAILED_PRECONDITION, 400),
    (RequestTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    (QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (StorageQuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (MalformedMessage, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (ProtocolError, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (TraceNotFound, grpc.StatusCode.NOT_FOUND, 404),
    (V2ModelNotFound, grpc.StatusCode.NOT_FOUND, 404),
    (V2Error, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND, 404),
    (ModelExists, grpc.StatusCode.ALREADY_EXISTS, 409),
    (IllegalStatusChange, grpc.StatusCode.FAILED_PRECONDITION, 409),
    (RegistryError, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (RoutingError, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (ModelUnavailable, grpc.StatusCode.UNAVAILABLE, 503),
    (ReplicaFailed, grpc.StatusCode.UNAVAILABLE, 503),
    (DeviceNotFound, grpc.StatusCode.NOT_FOUND, 404),
    (InvalidSettings, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (Unauthorized, grpc.StatusCode.UNAUTHENTICATED, 401),
    (Forbidden, grpc.StatusCode.PERMISSION_DENIED, 403),
    (EnrolmentRefused, grpc.StatusCode.PERMISSION_DENIED, 403),
    (InvalidCsr, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (PkiError, grpc.StatusCode.FAILED_PRECONDITION, 409),
    (BundleNotFound, grpc.StatusCode.NOT_FOUND, 404),
    (BundleError, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (KeysError, grpc.StatusCode.FAILED_PRECONDITION, 409),
    (RolloutNotFound, grpc.StatusCode.NOT_FOUND, 404),
    (RolloutError, grpc.StatusCode.FAILED_PRECONDITION, 409),
    (ProposalNotFound, grpc.StatusCode.NOT_FOUND, 404),
    (InvalidAction, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (ActionFailed, grpc.StatusCode.FAILED_PRECONDITION, 409),
    (OrchestratorError, grpc.StatusCode.FAILED_PRECONDITION, 409),
]


def one_line(text: str, limit: int = 300) -> str:
    """The first line of an error's text, at most ``limit`` characters: what a device or a client is told."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def grpc_status(exc: Exception) -> grpc.StatusCode:
    return next((code for kind, code, _ in _STATUS if isinstance(exc, kind)), grpc.StatusCode.INTERNAL)


def http_status(exc: Exception) -> int:
    return next((status for kind, _, status in _STATUS if isinstance(exc, kind)), 500)
