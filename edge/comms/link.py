"""The device's one broker connection: QoS 1, persistent session, a handler per channel it reads.

It reads ``results`` (the hub's verdicts), ``accepted`` (the hub's
acknowledgements of escalations sent over MQTT) and ``desired`` (the hub's
settings for it), and carries what the device publishes: escalations, result
acks, alerts, its report (retained) and its heartbeat. The broker keeps the session
(``clean_session=False``, a fixed client id), so what is published while the
device is offline is delivered when it comes back, as long as the broker
still has it; the hub resends results and the device resends escalations
until the other side confirms them, so nothing depends on the broker keeping
its state. A message is acknowledged (PUBACK) only after its handler has
dealt with it, so a verdict that could not be stored is redelivered, not lost.

``tandem/v1/devices/{id}/availability`` is ``online`` (retained) while the
device is connected and ``offline`` (the retained last will) after it is gone.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Optional

import paho.mqtt.client as mqtt

from common.mqtt import Will, new_client
from common.tls import TlsFiles
from edge.config import MqttConfig
from protocol.topics import Channel, DeviceTopic

logger = logging.getLogger(__name__)


class Handled(enum.Enum):
    """What a message handler tells the subscriber to do with the message."""

    ACK = "ack"  # dealt with (or never will be: malformed); the broker may forget it
    RETRY = "retry"  # not stored; leave it unacknowledged so the broker sends it again


MessageHandler = Callable[[bytes], Handled]


class DeviceLink:
    def __init__(
        self,
        device_id: str,
        config: MqttConfig,
        handlers: Mapping[Channel, MessageHandler],
        on_connected: Callable[[], None] = lambda: None,
        tls: Optional[TlsFiles] = None,
    ) -> None:
        """``handlers``: the channels this device reads, each with what deals with its messages;
        ``on_connected``: called (on paho's thread) after every connect, e.g. to publish the device's report;
        ``tls``: the device's certificate (the broker then takes the device id from it, and the client id too)."""
        self._config = config
        self._on_connected = on_connected
        self._topics = {channel: str(DeviceTopic(device_id, channel)) for channel in Channel}
        self._handlers = {self._topics[channel]: handler for channel, handler in handlers.items()}
        self._availability = str(DeviceTopic.availability(device_id))
        self._subscribed = threading.Event()
        self._closing = False
        self._client = new_client(
            f"tandem-edge-{device_id}",
            username=config.username or device_id,
            password=config.password,
            clean_session=False,
            manual_ack=True,
            will=Will(self._availability, b"offline"),
            tls=tls,
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self.counts = {"messages": 0, "redeliveries_requested": 0, "handler_errors": 0, "disconnects": 0}

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    def start(self) -> None:
        """Connect in the background; wait up to connect_timeout_ms for the subscription."""
        self._client.connect_async(self._config.host, self._config.port, keepalive=self._config.keepalive_s)
        self._client.loop_start()
        if not self._subscribed.wait(self._config.connect_timeout_ms / 1000.0):
            logger.warning(
                "mqtt: broker %s:%d not reachable yet; going on, verdicts arrive once it is",
                self._config.host,
                self._config.port,
            )

    def wait_subscribed(self, timeout_s: float) -> bool:
        return self._subscribed.wait(timeout_s)

    def publish(self, channel: Channel, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Queue a message on one of this device's channels. QoS 1: paho sends it now or after it reconnects;
        QoS 0: now or never (ConnectionError while disconnected)."""
        info = self._client.publish(self._topics[channel], payload, qos=qos, retain=retain)
        if qos == 0 and info.rc == mqtt.MQTT_ERR_NO_CONN:
            raise ConnectionError("broker not connected")
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise ConnectionError(f"paho could not queue the message (rc {info.rc})")

    def publish_confirmed(self, channel: Channel, payload: bytes, timeout_s: float) -> None:
        """Publish at QoS 1 on this device's connection and wait for the broker's PUBACK.

        Raises ConnectionError when the broker is not connected and TimeoutError
        when no PUBACK comes in time; the caller decides whether to retry.
        """
        if not self._client.is_connected():
            raise ConnectionError("broker not connected")
        info = self._client.publish(self._topics[channel], payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"paho could not queue the message (rc {info.rc})")
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise TimeoutError(f"no PUBACK within {timeout_s:.1f} s")

    def close(self) -> None:
        self._closing = True
        if self._client.is_connected():
            self._client.publish(self._availability, b"offline", qos=1, retain=True).wait_for_publish(2.0)
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho callbacks (paho's network thread) --------------------------------

    def _on_connect(
        self, client: mqtt.Client, _userdata: object, flags: mqtt.ConnectFlags, reason: object, _props: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            logger.error("mqtt: broker refused the connection: %s", reason)
            return
        logger.info("mqtt: connected (session present: %s)", flags.session_present)
        client.publish(self._availability, b"online", qos=1, retain=True)
        client.subscribe([(topic, 1) for topic in self._handlers])
        try:
            self._on_connected()
        except Exception:  # must not kill paho's network thread
            logger.exception("mqtt: on_connected hook failed")

    def _on_subscribe(self, _client: mqtt.Client, _userdata: object, _mid: int, reasons: list, _props: object) -> None:
        if any(getattr(r, "is_failure", False) for r in reasons):
            logger.error("mqtt: broker refused the subscription to %s: %s", ", ".join(self._handlers), reasons)
            return
        self._subscribed.set()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: object, _flags: object, reason: object, _props: object
    ) -> None:
        self._subscribed.clear()
        self.counts["disconnects"] += 1
        if self._closing:
            logger.info("mqtt: disconnected (%s)", reason)
        else:
            logger.warning("mqtt: disconnected (%s); paho reconnects with backoff", reason)

    def _on_message(self, client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        self.counts["messages"] += 1
        handler = self._handlers.get(message.topic)
        if handler is None:  # the broker only sends what was subscribed; nothing to do but let it go
            logger.error("mqtt: message on %s, which this device does not read; dropped", message.topic)
            client.ack(message.mid, message.qos)
            return
        try:
            handled = handler(bytes(message.payload))
        except Exception:  # a handler bug must not kill paho's network thread
            logger.exception("mqtt: handler failed on %s", message.topic)
            self.counts["handler_errors"] += 1
            handled = Handled.RETRY
        if handled is Handled.ACK:
            client.ack(message.mid, message.qos)
        else:
            self.counts["redeliveries_requested"] += 1
