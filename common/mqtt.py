"""The one way the project makes a paho-mqtt client, so every connection gets the same care.

paho's defaults cost us twice when measured: Nagle's algorithm stays on, which
turns QoS 1 round trips into tens of ms (``TCP_NODELAY`` is set on every socket
paho opens, reconnects included), and without a reconnect delay a broker restart
is hammered. Every client here speaks MQTT 3.1.1 with paho's version-2
callbacks and reconnects with a 1-30 s backoff. Given ``tls``, it presents that
certificate and trusts only the fleet CA (``common.tls``); a broker that uses the
certificate's identity as the user name ignores the user name sent.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Optional

import paho.mqtt.client as mqtt

from common.tls import TlsFiles, client_context

RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30


@dataclass(frozen=True)
class Will:
    """The message the broker publishes for a client that vanishes without saying goodbye."""

    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1


def set_tcp_nodelay(sock: object) -> None:
    """Turn Nagle's algorithm off on a TCP socket (a websocket or TLS wrapper is left as it is)."""
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def new_client(
    client_id: str,
    *,
    username: Optional[str] = None,
    password: Optional[str] = None,
    clean_session: bool = True,
    manual_ack: bool = False,
    will: Optional[Will] = None,
    max_queued_messages: Optional[int] = None,
    tls: Optional[TlsFiles] = None,
) -> mqtt.Client:
    """A paho client, configured but not connected (callers ``connect_async`` and ``loop_start`` it).

    ``clean_session=False`` with a fixed ``client_id`` keeps the broker's session (subscriptions and queued
    QoS 1 messages) across reconnects; ``manual_ack`` holds each PUBACK until the handler calls ``client.ack``;
    ``max_queued_messages`` 0 means paho never drops an outgoing message while the broker is away.
    """
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
        manual_ack=manual_ack,
    )
    if username is not None:
        client.username_pw_set(username, password)
    if tls is not None:
        client.tls_set_context(client_context(tls))
    if will is not None:
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    if max_queued_messages is not None:
        client.max_queued_messages_set(max_queued_messages)
    client.reconnect_delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)
    client.on_socket_open = lambda _client, _userdata, sock: set_tcp_nodelay(sock)
    return client
