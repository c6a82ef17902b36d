"""The interface every escalation transport implements: gRPC (``grpc_client``) and MQTT (``mqtt_transport``)."""

from __future__ import annotations

import abc

from protocol.messages import EscalationAck


class Transport(abc.ABC):
    @abc.abstractmethod
    def start(self) -> None:
        """Open connections. Must not fail because the hub is down: ``send`` reports that."""

    @abc.abstractmethod
    def send(self, trace_id: str, payload: bytes) -> EscalationAck:
        """Send one serialized EscalationRequest; raise TransportError(retryable=...) on failure."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close connections. Safe to call twice."""
