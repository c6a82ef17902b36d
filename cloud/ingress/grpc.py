"""gRPC ``tandem.v1.Escalation`` (``Escalate``, ``EscalateAndWait``) onto the escalation service.

Ray Serve's gRPC proxy calls the ingress deployment's ``Escalate`` method with
the request and a context; a domain error becomes a status code there
(``cloud.errors``: INVALID_ARGUMENT, FAILED_PRECONDITION, RESOURCE_EXHAUSTED).

The proxy is given ``add_escalation_servicer`` rather than the generated
``add_EscalationServicer_to_server``: the generated one makes the proxy parse
each request itself, and bytes that do not parse then fail inside gRPC with
UNKNOWN, which a device must treat as retryable. Here the requests arrive as
raw bytes and are parsed by the protocol's own codec, so a corrupt request
gets INVALID_ARGUMENT and the device stops sending it.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Protocol

import grpc

from cloud.errors import Forbidden, InvalidInput, QuotaExceeded, grpc_status
from cloud.escalations import EscalationService
from cloud.inputs import check_size
from protocol._generated.tandem.v1 import tandem_pb2 as pb
from protocol.codec import decode_request
from protocol.errors import ProtocolError
from protocol.messages import EscalationRequest

logger = logging.getLogger(__name__)

SERVICE = "tandem.v1.Escalation"


class StatusContext(Protocol):
    """The part of grpc.ServicerContext (and Ray's RayServegRPCContext) used here."""

    def set_code(self, code: grpc.StatusCode) -> None: ...

    def set_details(self, details: str) -> None: ...


def add_escalation_servicer(servicer: Any, server: Any) -> None:
    """Register tandem.v1.Escalation with requests as raw bytes and responses as protobuf."""
    handlers = {
        "Escalate": grpc.unary_unary_rpc_method_handler(
            servicer.Escalate, response_serializer=pb.EscalationAck.SerializeToString
        ),
        "EscalateAndWait": grpc.unary_unary_rpc_method_handler(
            servicer.EscalateAndWait, response_serializer=pb.EscalationResult.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def _refuse(exc: Exception, trace_hint: str, context: StatusContext) -> None:
    context.set_code(grpc_status(exc))
    context.set_details(str(exc))
    logger.warning("rejected escalation %s: %s", trace_hint, exc)


def _parse(service: EscalationService, payload: bytes, context: StatusContext) -> Optional[EscalationRequest]:
    """The request, or None with the status code set (RESOURCE_EXHAUSTED, INVALID_ARGUMENT, FAILED_PRECONDITION)."""
    try:
        check_size(len(payload), service.limits)
        return decode_request(payload)
    except (ProtocolError, InvalidInput) as exc:
        service.metrics.escalations.labels(ack="rejected").inc()
        _refuse(exc, f"of {len(payload)} bytes", context)
        return None


def _speaks_for_itself(
    service: EscalationService, request: EscalationRequest, identity: Optional[str], context: StatusContext
) -> bool:
    """True unless the caller proved an identity (a client certificate) and the request names another device."""
    if identity is None or request.device_id == identity:
        return True
    service.metrics.identity_refusals.labels(reason="impostor").inc()
    _refuse(
        Forbidden(f"certificate of {identity} cannot escalate for device {request.device_id}"),
        request.trace_id,
        context,
    )
    return False


async def escalate(
    service: EscalationService, payload: bytes, context: StatusContext, identity: Optional[str] = None
) -> pb.EscalationAck:
    """``identity``: the device id the caller's certificate proves (``cloud.ingress.device_tls``), if any."""
    request = _parse(service, payload, context)
    if request is None or not _speaks_for_itself(service, request, identity, context):
        return pb.EscalationAck()
    try:
        ack = await service.escalate(request, payload)
    except (InvalidInput, QuotaExceeded) as exc:  # counted by the service
        _refuse(exc, request.trace_id, context)
        return pb.EscalationAck()
    return ack.to_proto()


async def escalate_and_wait(
    service: EscalationService, payload: bytes, context: StatusContext, identity: Optional[str] = None
) -> pb.EscalationResult:
    request = _parse(service, payload, context)
    if request is None or not _speaks_for_itself(service, request, identity, context):
        return pb.EscalationResult()
    try:
        result = await service.escalate_and_wait(request, payload)
    except (InvalidInput, QuotaExceeded) as exc:
        _refuse(exc, request.trace_id, context)
        return pb.EscalationResult()
    return result.to_proto()
