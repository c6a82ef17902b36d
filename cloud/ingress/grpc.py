"""gRPC ``tandem.v1.Escalation/Escalate`` onto the escalation service.

Ray Serve's gRPC proxy calls the ingress deployment's ``Escalate`` method with
the parsed request and a context; a domain error becomes a status code there.
"""

from __future__ import annotations

import logging
from typing import Protocol

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


async def escalate(
    service: EscalationService, message: pb.EscalationRequest, context: StatusContext
) -> pb.EscalationAck:
    try:
        request = EscalationRequest.from_proto(message)
    except ProtocolError as exc:
        logger.warning("rejected escalation %r: %s", message.trace_id, exc)
        context.set_code(grpc_status(exc))
        context.set_details(str(exc))
        return pb.EscalationAck()
    ack = await service.escalate(request)
    return ack.to_proto()
