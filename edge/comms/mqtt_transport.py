"""Escalations over MQTT: QoS 1 on ``tandem/v1/devices/{id}/escalations``, on the device's one broker connection.

The broker's PUBACK only says the broker has the request. A broker is a
relay, not a store the device may trust: it may crash before it saves, or
drop the message because the hub's session is gone. So a send returns None
("relayed"), the outbox row stays due for a resend, and the escalation is
done on the device only when the hub says so: its EscalationAck on
``tandem/v1/devices/{id}/accepted`` (or the verdict itself). The hub
deduplicates on trace_id, so resends are harmless. A request the hub rejects
(an unknown schema version) comes back as a FAILED result on the results
topic, not as an error here.
"""

from __future__ import annotations

from typing import Optional

from edge.comms.link import DeviceLink
from edge.comms.transport import Transport
from edge.config import MqttTransportConfig
from edge.errors import TransportError
from protocol.messages import EscalationAck
from protocol.topics import Channel


class MqttTransport(Transport):
    def __init__(self, config: MqttTransportConfig, connection: DeviceLink) -> None:
        self._config = config
        self._connection = connection

    def start(self) -> None:
        """The connection is the device link's, started by the runtime."""

    def send(self, trace_id: str, payload: bytes) -> Optional[EscalationAck]:
        if len(payload) > self._config.max_message_bytes:
            raise TransportError(
                f"escalation of {len(payload)} bytes exceeds max_message_bytes {self._config.max_message_bytes}",
                retryable=False,
            )
        try:
            self._connection.publish_confirmed(Channel.ESCALATIONS, payload, self._config.timeout_ms / 1000.0)
        except (ConnectionError, TimeoutError) as exc:
            raise TransportError(f"MQTT: {exc}", retryable=True) from exc
        return None  # relayed: the hub's acknowledgement comes on the accepted topic

    def close(self) -> None:
        """Nothing of its own to close."""
