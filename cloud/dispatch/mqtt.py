"""Results to devices: MQTT QoS 1 on ``tandem/v1/devices/{device_id}/results``.

paho keeps QoS 1 messages it could not send yet (broker down) and sends them
when it reconnects; the broker's PUBACK calls ``on_delivered`` so the trace
store can record that the broker has it. Whether the device has it is the
device's ResultAck; until then ``cloud.dispatch.delivery`` publishes it again.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Optional

import paho.mqtt.client as mqtt

from cloud.metrics import HubMetrics
from common.mqtt import new_client
from common.tls import TlsFiles
from protocol.topics import DeviceTopic

logger = logging.getLogger(__name__)


class Publisher(abc.ABC):
    """Where the escalation service sends finished results."""

    @abc.abstractmethod
    def publish(self, device_id: str, trace_id: str, payload: bytes) -> None:
        """Queue one result for delivery; never blocks on the network."""


class MqttDispatcher(Publisher):
    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: Optional[str] = None,
        on_delivered: Callable[[str], None] = lambda _trace_id: None,
        metrics: Optional[HubMetrics] = None,
        tls: Optional[TlsFiles] = None,
    ) -> None:
        self._host = host
        self._port = port
        self._on_delivered = on_delivered
        self._metrics = metrics
        self._lock = threading.Lock()
        self._pending: dict[int, str] = {}  # message id -> trace id, until the broker's PUBACK
        self._acked_early: set[int] = set()  # PUBACKs that arrived before publish() recorded the id
        # Each hub replica needs its own client id: a broker drops the older of two equal ids.
        self._client = new_client(
            f"{username}-{uuid.uuid4().hex[:8]}",
            username=username,
            password=password,
            max_queued_messages=0,  # unbounded: never drop a result while the broker is away
            tls=tls,
        )
        self._client.on_connect = self._on_connect
        self._client.on_publish = self._on_publish
        self._client.on_disconnect = self._on_disconnect

    def start(self) -> None:
        self._client.connect_async(self._host, self._port, keepalive=30)
        self._client.loop_start()

    def close(self, flush_s: float = 2.0) -> None:
        """Wait up to flush_s for the broker to take what is queued (a draining replica's last results), then
        disconnect. What it does not take stays due in the trace store: the next replica or start sends it."""
        end = time.monotonic() + flush_s
        while self._client.is_connected() and time.monotonic() < end:
            with self._lock:
                if not self._pending:
                    break
            time.sleep(0.02)
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, device_id: str, trace_id: str, payload: bytes) -> None:
        topic = str(DeviceTopic.results(device_id))
        # Never hold self._lock while calling into paho: paho's network thread holds its
        # own mutex while it runs on_publish, which takes self._lock (lock-order deadlock).
        info = self._client.publish(topic, payload, qos=1)
        with self._lock:
            acked_already = info.mid in self._acked_early
            if acked_already:  # the PUBACK beat us here
                self._acked_early.discard(info.mid)
            else:
                self._pending[info.mid] = trace_id
        if acked_already:
            self._delivered(trace_id)
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            logger.warning("result %s: broker not connected; queued until it is", trace_id)
            self._count_error("broker_not_connected")
        elif info.rc != mqtt.MQTT_ERR_SUCCESS:
            logger.error("result %s: paho refused to queue it (rc %s); it is sent again later", trace_id, info.rc)
            self._count_error(f"paho_rc_{info.rc}")

    def publish_state(self, topic: str, payload: bytes) -> None:
        """A retained QoS 1 message (a device's desired state); paho keeps it while the broker is away."""
        info = self._client.publish(topic, payload, qos=1, retain=True)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            logger.error("%s: paho refused to queue it (rc %s); it is sent again at the next report", topic, info.rc)
            self._count_error(f"paho_rc_{info.rc}")

    def _count_error(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.delivery_errors.labels(channel="mqtt", reason=reason).inc()

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            logger.error("dispatch: broker refused the connection: %s", reason)
            return
        logger.info("dispatch: connected to %s:%d", self._host, self._port)

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        logger.warning("dispatch: disconnected from the broker (%s); reconnecting", reason)

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, _reason: object, _p: object) -> None:
        with self._lock:
            trace_id = self._pending.pop(mid, None)
            if trace_id is None:
                self._acked_early.add(mid)
        if trace_id is not None:
            self._delivered(trace_id)

    def _delivered(self, trace_id: str) -> None:
        try:
            self._on_delivered(trace_id)
        except Exception:  # a store error must not kill paho's network thread
            logger.exception("result %s: delivered, but recording it failed", trace_id)
