"""gRPC ``tandem.v1.Escalation`` (``Escalate``, ``EscalateAndWait``) onto the escalation service.

Ray Serve's gRPC proxy calls the ingress deployment's ``Escalate`` method with
the parsed request and a context; a domain error becomes a status code there.
"""

from __future__ import annotations

import logging
from typing import Optional, Protocol

import grpc

from cloud.errors import grpc_status
from cloud.escalations import EscalationService
from protocol._generated.tandem.v1 import tandem_pb2 as pb
from protocol.errors import ProtocolError
from protocol.messages import EscalationRequest

logger = logging.getLogger(__name__)


class StatusContext(Protocol):
    """The part of grpc.ServicerContext (and Ray's RayServegRPCContext) used here."""

    def set_code(self, code: grpc.StatusCode) -> None: ...

    def set_details(self, details: str) -> None: ...


def _parse(message: pb.EscalationRequest, context: StatusContext) -> Optional[EscalationRequest]:
    """The request, or None with the status code set (INVALID_ARGUMENT, FAILED_PRECONDITION)."""
    try:
        return EscalationRequest.from_proto(message)
    except ProtocolError as exc:
        logger.warning("rejected escalation %r: %s", message.trace_id, exc)
        context.set_code(grpc_status(exc))
        context.set_details(str(exc))
        return None


async def escalate(
    service: EscalationService, message: pb.EscalationRequest, context: StatusContext
) -> pb.EscalationAck:
    request = _parse(message, context)
    if request is None:
        return pb.EscalationAck()
    ack = await service.escalate(request)
    return ack.to_proto()


async def escalate_and_wait(
    service: EscalationService, message: pb.EscalationRequest, context: StatusContext
) -> pb.EscalationResult:
    request = _parse(message, context)
    if request is None:
        return pb.EscalationResult()
    result = await service.escalate_and_wait(request)
    return result.to_proto()
