"""Escalations from devices over MQTT: ``tandem/v1/devices/+/escalations``, QoS 1, onto the escalation service;
the devices' result acknowledgements, ``tandem/v1/devices/+/acks``, onto its delivery; their
availability, ``tandem/v1/devices/+/availability``: a device that comes back ``online`` gets its
unacknowledged results at once instead of at their next resend; and their reports and heartbeats
(``…/reported``, ``…/telemetry``) onto the fleet service.

Each escalation the service recorded (new or a duplicate) is confirmed to its
device with an EscalationAck on ``tandem/v1/devices/{id}/accepted``; until it
arrives the device sends the escalation again, because the broker's PUBACK
only says the broker had it.

The hub subscribes through a shared subscription (``$share/{mqtt_username}/...``),
so with several ingress replicas each message goes to one of them, with a
persistent session under a fixed client id, so the broker keeps what devices
send while the hub is down. A message is acknowledged only after the service
has recorded the trace (manual ack), so a hub that dies in between receives
it again; the trace store's trace_id check makes the repeat harmless.

A request that cannot be accepted (an unknown schema version, a bad trace
id) is answered with a FAILED result on the device's results topic, the MQTT
counterpart of gRPC's FAILED_PRECONDITION, so the device falls back at once.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import TimeoutError as FutureTimeout

import paho.mqtt.client as mqtt
from google.protobuf.message import DecodeError

from cloud.errors import InvalidInput, QuotaExceeded, RequestTooLarge
from cloud.escalations import EscalationService
from cloud.fleet.service import FleetService
from common.mqtt import new_client
from common.tls import TlsFiles
from protocol import fleet
from protocol._generated.tandem.v1 import tandem_pb2 as pb
from protocol.codec import decode_request, decode_result_ack, encode_escalation_ack
from protocol.errors import InvalidTopic, MalformedMessage, ProtocolError
from protocol.messages import EscalationAck, validate_trace_id
from protocol.topics import PREFIX, Channel, DeviceTopic

logger = logging.getLogger(__name__)


def topic_filters(share_group: str) -> list[str]:
    """Escalations, result acks, availability, reports and heartbeats of every device, shared among the replicas
    of one hub (its MQTT user name): another hub on the same broker has its own group, so it never takes this
    hub's messages."""
    channels = (Channel.ESCALATIONS, Channel.ACKS, Channel.AVAILABILITY, Channel.REPORTED, Channel.TELEMETRY)
    return [f"$share/{share_group}/{PREFIX}/+/{c.value}" for c in channels]


RECORD_TIMEOUT_S = 10.0


class MqttEscalations:
    """Subscribes for escalations and hands each to the service on the replica's event loop."""

    def __init__(
        self,
        service: EscalationService,
        fleet: FleetService,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        username: str,
        password: str | None,
        client_id: str,
        tls: TlsFiles | None = None,
        persistent: bool = True,
    ) -> None:
        """``persistent``: keep the session (and what the broker queued for it) while this client is away: for a
        client id that comes back after a restart. A replica among several, named afresh at each start, has none
        to come back to: its share of the subscription goes to the replicas that are connected."""
        self._service = service
        self._fleet = fleet
        self._loop = loop
        self._host = host
        self._port = port
        self._filters = topic_filters(username)
        self._client = new_client(
            client_id, username=username, password=password, clean_session=not persistent, manual_ack=True, tls=tls
        )
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self.counts = {"accepted": 0, "rejected": 0, "undecodable": 0, "acks": 0, "bad_acks": 0, "over_quota": 0}

    def start(self) -> None:
        self._client.connect_async(self._host, self._port, keepalive=30)
        self._client.loop_start()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            logger.error("mqtt ingress: broker refused the connection: %s", reason)
            return
        client.subscribe([(f, 1) for f in self._filters])
        logger.info("mqtt ingress: subscribed to %s", ", ".join(self._filters))

    def _on_message(self, client: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        """paho's thread: record the escalation on the event loop, then acknowledge it."""
        try:
            topic = DeviceTopic.parse(message.topic)
        except InvalidTopic as exc:
            logger.error("mqtt ingress: %s; dropped", exc)
            client.ack(message.mid, message.qos)
            return
        device_id = topic.device_id
        if topic.channel in (Channel.AVAILABILITY, Channel.REPORTED, Channel.TELEMETRY):
            try:
                self._on_fleet_message(topic, bytes(message.payload))
            except Exception:  # a store error: leave it unacknowledged so the broker sends it again
                logger.exception("mqtt ingress: %s from %s not recorded; left for redelivery", topic.channel, device_id)
                return
            client.ack(message.mid, message.qos)
            return
        if topic.channel is Channel.ACKS:
            try:
                self._on_result_ack(device_id, bytes(message.payload))
            except Exception:  # a store error: leave it unacknowledged so the broker sends it again
                logger.exception("mqtt ingress: result ack from %s not recorded; left for redelivery", device_id)
                return
            client.ack(message.mid, message.qos)
            return
        future = asyncio.run_coroutine_threadsafe(self._handle(device_id, bytes(message.payload)), self._loop)
        try:
            future.result(RECORD_TIMEOUT_S)
        except FutureTimeout:
            logger.error("mqtt ingress: escalation from %s not recorded in time; left for redelivery", device_id)
            return
        except Exception:  # a store error: leave it unacknowledged so the broker sends it again
            logger.exception("mqtt ingress: escalation from %s not recorded; left for redelivery", device_id)
            return
        client.ack(message.mid, message.qos)

    def _on_fleet_message(self, topic: DeviceTopic, payload: bytes) -> None:
        """What a device says about itself: its availability, its report, its heartbeat. A malformed one is
        logged, counted and dropped."""
        device_id, channel = topic.device_id, topic.channel
        if not payload:  # a retained message cleared (an empty retained publish): nothing is said
            return
        if channel is Channel.AVAILABILITY:
            if payload not in (b"online", b"offline"):
                logger.error("mqtt ingress: availability %r from %s is neither online nor offline", payload, device_id)
                self._fleet.bad_message(channel.value, MalformedMessage("availability"))
                return
            self._fleet.on_availability(device_id, payload == b"online")
            if payload == b"online":  # sending may post HTTP callbacks: done on the event loop
                self._loop.call_soon_threadsafe(self._on_online, device_id)
            return
        kind = fleet.Reported if channel is Channel.REPORTED else fleet.Telemetry
        try:
            message = fleet.decode(payload, kind)
            if message.device_id != device_id:
                raise MalformedMessage(f"{kind.__name__} for {message.device_id} on {device_id}'s topic")
        except ProtocolError as exc:
            logger.error("mqtt ingress: %s from %s dropped: %s", channel.value, device_id, exc)
            self._fleet.bad_message(channel.value, exc)
            return
        if isinstance(message, fleet.Reported):
            self._fleet.on_reported(message)
        elif isinstance(message, fleet.Telemetry):
            self._fleet.on_telemetry(message)

    def _on_result_ack(self, device_id: str, payload: bytes) -> None:
        """A device has stored a result: stop resending it. A bad ack is logged, counted and dropped."""
        metrics = self._service.metrics
        try:
            ack = decode_result_ack(payload)
        except ProtocolError as exc:
            logger.error("mqtt ingress: undecodable result ack from %s dropped: %s", device_id, exc)
            self.counts["bad_acks"] += 1
            metrics.bad_acks.labels(reason=type(exc).__name__).inc()
            return
        if ack.device_id != device_id:
            logger.error("mqtt ingress: ack for %s sent on %s's topic; dropped", ack.device_id, device_id)
            self.counts["bad_acks"] += 1
            metrics.bad_acks.labels(reason="WrongDevice").inc()
            return
        self.counts["acks"] += 1
        self._service.delivery.acknowledged(ack.trace_id, device_id, "mqtt")

    def _on_online(self, device_id: str) -> None:
        """A device (re)connected, perhaps to a broker that forgot its session: what it has not acknowledged
        goes out now."""
        try:
            due = self._service.delivery.device_online(device_id)
        except Exception:  # a store error: the results still go out at their next resend
            logger.exception("mqtt ingress: could not bring %s's unacknowledged results forward", device_id)
            return
        if due:
            logger.info("mqtt ingress: %s is online; resending its %d unacknowledged results", device_id, due)

    async def _handle(self, device_id: str, payload: bytes) -> None:
        limit = self._service.limits.max_request_bytes
        if len(payload) > limit:  # not run; parsed only for its trace id (the broker's max_packet_size bounds it)
            await self._reject(device_id, payload, RequestTooLarge(len(payload), limit))
            return
        try:
            request = decode_request(payload)
        except ProtocolError as exc:
            await self._reject(device_id, payload, exc)
            return
        if request.device_id != device_id:
            await self._reject(
                device_id, payload, MalformedMessage(f"sent on {device_id}'s topic as {request.device_id}")
            )
            return
        try:
            ack = await self._service.escalate(request, payload)
        except QuotaExceeded:  # logged and counted by the service; unconfirmed, the device sends it again later
            self.counts["over_quota"] += 1
            return
        except InvalidInput as exc:  # logged and counted by the service
            self.counts["rejected"] += 1
            self._service.answer_refused(device_id, request.trace_id, f"rejected: {exc}")
            return
        self.counts["accepted"] += 1
        self._confirm(device_id, ack)

    def _confirm(self, device_id: str, ack: EscalationAck) -> None:
        """The hub has the escalation: tell the device, so it stops sending it. If this is lost, the
        device's next resend is a duplicate, confirmed again."""
        info = self._client.publish(str(DeviceTopic.accepted(device_id)), encode_escalation_ack(ack), qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            logger.warning("mqtt ingress: confirmation of %s not queued (rc %s)", ack.trace_id, info.rc)

    async def _reject(self, device_id: str, payload: bytes, error: Exception) -> None:
        """Answer with a FAILED result if the request names its trace, so the device stops sending it."""
        try:
            trace_id = validate_trace_id(pb.EscalationRequest.FromString(payload).trace_id)
        except (DecodeError, ProtocolError):
            self.counts["undecodable"] += 1
            logger.error("mqtt ingress: undecodable escalation from %s dropped: %s", device_id, error)
            self._service.metrics.escalations.labels(ack="undecodable").inc()
            return
        self.counts["rejected"] += 1
        self._service.metrics.escalations.labels(ack="rejected").inc()
        logger.warning("mqtt ingress: escalation %s from %s rejected: %s", trace_id, device_id, error)
        self._service.answer_refused(device_id, trace_id, f"rejected: {error}")
