"""The interface every escalation transport implements: gRPC (``grpc_client``) and MQTT (``mqtt_transport``)."""

from __future__ import annotations

import abc
from typing import Optional

from protocol.messages import EscalationAck


class Transport(abc.ABC):
    @abc.abstractmethod
    def start(self) -> None:
        """Open connections. Must not fail because the hub is down: ``send`` reports that."""

    @abc.abstractmethod
    def send(self, trace_id: str, payload: bytes) -> Optional[EscalationAck]:
        """Send one serialized EscalationRequest; raise TransportError(retryable=...) on failure.

        Returns the hub's acknowledgement when the call carries it (gRPC), or None when a relay
        took the request (MQTT: the broker's PUBACK). A relay is not the hub: the hub's own
        acknowledgement arrives later on the device's ``accepted`` topic, and until it does the
        outbox sends the request again (``outbox.confirm_timeout_ms``).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close connections. Safe to call twice."""
