"""Escalations over gRPC to the hub's ``tandem.v1.Escalation`` service (through Ray Serve's gRPC proxy).

``Escalate`` is answered with an ack and the verdict comes on MQTT. With
``wait_for_verdict``, ``EscalateAndWait`` is answered with the verdict itself,
which goes to ``on_result`` (the same handler MQTT results go to).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Optional

import grpc

from common.tls import TlsFiles
from edge.comms.link import Handled
from edge.comms.transport import Transport
from edge.config import GrpcConfig
from edge.errors import TransportError
from protocol._generated.tandem.v1 import tandem_pb2 as pb
from protocol.errors import ProtocolError
from protocol.messages import AckStatus, EscalationAck

logger = logging.getLogger(__name__)

# Codes after which the same request can succeed later. NOT_FOUND is here
# because Ray Serve's proxy answers it while the application is still deploying.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.CANCELLED,
    }
)


class GrpcTransport(Transport):
    def __init__(
        self,
        config: GrpcConfig,
        on_result: Optional[Callable[[bytes], Handled]] = None,
        tls: Optional[TlsFiles] = None,
    ) -> None:
        """``on_result`` takes the serialized EscalationResult of a wait_for_verdict call; ``tls``: the device's
        certificate, presented to a secured hub's device port (which checks it against every request's device_id)."""
        if config.wait_for_verdict and on_result is None:
            raise ValueError("wait_for_verdict needs an on_result handler")
        self._config = config
        self._on_result = on_result
        self._tls = tls
        self._channel: Optional[grpc.Channel] = None
        self._call: Optional[grpc.UnaryUnaryMultiCallable] = None

    def start(self) -> None:
        limit = self._config.max_message_bytes
        options = [
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        # Connecting is lazy: a hub that is down shows up as UNAVAILABLE on send.
        if self._tls is None:
            self._channel = grpc.insecure_channel(self._config.target, options=options)
        else:
            ca, cert, key = self._tls.read()
            credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
            self._channel = grpc.secure_channel(self._config.target, credentials, options=options)
        # Raw bytes in (the outbox already holds serialized requests); an ack, or the result's raw bytes.
        if self._config.wait_for_verdict:
            self._call = self._channel.unary_unary("/tandem.v1.Escalation/EscalateAndWait")
        else:
            self._call = self._channel.unary_unary(
                "/tandem.v1.Escalation/Escalate", response_deserializer=pb.EscalationAck.FromString
            )

    def send(self, trace_id: str, payload: bytes) -> Optional[EscalationAck]:
        if self._call is None:
            raise TransportError("gRPC transport used before start()", retryable=True)
        if len(payload) > self._config.max_message_bytes:
            raise TransportError(
                f"escalation of {len(payload)} bytes exceeds max_message_bytes {self._config.max_message_bytes}",
                retryable=False,
            )
        try:
            reply = self._call(
                payload,
                timeout=self._config.timeout_ms / 1000.0,
                metadata=(("application", self._config.application),),
            )
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            raise TransportError(f"gRPC {code.name}: {details}", retryable=code in RETRYABLE) from exc
        if self._on_result is not None and self._config.wait_for_verdict:
            if self._on_result(reply) is Handled.RETRY:  # not stored: ask again; the hub answers from its store
                raise TransportError(f"verdict for {trace_id} arrived but could not be stored", retryable=True)
            return EscalationAck(trace_id, AckStatus.ACCEPTED)
        try:
            return EscalationAck.from_proto(reply)
        except ProtocolError as exc:
            raise TransportError(f"hub sent a bad ack: {exc}", retryable=True) from exc

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._call = None
