"""Escalations over MQTT: QoS 1 on ``tandem/v1/devices/{id}/escalations``, on the device's one broker connection.

The broker's PUBACK is the acknowledgement: from then on the broker holds the
request for the hub (which subscribes with a persistent session). The hub
deduplicates on trace_id, so an escalation retried after a lost PUBACK is
harmless. A request the hub rejects (an unknown schema version) comes back as
a FAILED result on the results topic, not as an error here.
"""

from __future__ import annotations

from edge.comms.mqtt import ResultSubscriber
from edge.comms.transport import Transport
from edge.config import MqttTransportConfig
from edge.errors import TransportError
from protocol.messages import AckStatus, EscalationAck
from protocol.topics import Channel, DeviceTopic


class MqttTransport(Transport):
    def __init__(self, device_id: str, config: MqttTransportConfig, connection: ResultSubscriber) -> None:
        self._config = config
        self._connection = connection
        self._topic = str(DeviceTopic(device_id, Channel.ESCALATIONS))

    def start(self) -> None:
        """The connection is the result subscriber's, started by the runtime."""

    def send(self, trace_id: str, payload: bytes) -> EscalationAck:
        if len(payload) > self._config.max_message_bytes:
            raise TransportError(
                f"escalation of {len(payload)} bytes exceeds max_message_bytes {self._config.max_message_bytes}",
                retryable=False,
            )
        try:
            self._connection.publish_confirmed(self._topic, payload, self._config.timeout_ms / 1000.0)
        except (ConnectionError, TimeoutError) as exc:
            raise TransportError(f"MQTT: {exc}", retryable=True) from exc
        return EscalationAck(trace_id, AckStatus.ACCEPTED)

    def close(self) -> None:
        """Nothing of its own to close."""
