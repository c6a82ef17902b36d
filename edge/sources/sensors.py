"""Sensor streams: JSON lines from an MQTT topic, a serial port or stdin, checked against a declared schema.

Each sensor keeps only its latest valid reading; the judge sees the numeric
fields as ``<sensor>.<field>`` (booleans as 0/1), so a policy can escalate
frames while, say, ``door.open`` is 1 or ``thermo.celsius`` is above 60.

A line that is not JSON, or does not match the schema, is logged, counted
and skipped; the reader goes on. A serial port that disappears is reopened
with capped, jittered backoff.
"""

from __future__ import annotations

import abc
import logging
import random
import sys
import threading
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from types import MappingProxyType
from typing import IO, Any, Optional

import paho.mqtt.client as mqtt
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from common.mqtt import new_client
from edge.config import MqttConfig, SensorConfig
from edge.errors import SourceError

logger = logging.getLogger(__name__)

FIELD_TYPES: dict[str, type] = {"number": float, "boolean": bool, "string": str}


class SensorState:
    """The latest numeric value of every sensor field. Readers write; the judge reads without a lock.

    Each update swaps in a new immutable mapping, so a reader always sees one
    consistent snapshot.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Mapping[str, float] = MappingProxyType({})
        self.readings: dict[str, int] = {}

    def values(self) -> Mapping[str, float]:
        return self._values

    def update(self, sensor: str, reading: Mapping[str, Any]) -> None:
        numeric = {
            f"{sensor}.{k}": float(v) for k, v in reading.items() if isinstance(v, (int, float)) and v is not None
        }
        with self._lock:
            self._values = MappingProxyType({**self._values, **numeric})
            self.readings[sensor] = self.readings.get(sensor, 0) + 1


class SensorSchema:
    """A pydantic model built from the config's ``fields``: every declared field is required."""

    def __init__(self, config: SensorConfig) -> None:
        fields: dict[str, Any] = {name: (FIELD_TYPES[kind], ...) for name, kind in config.fields.items()}
        self._model: type[BaseModel] = create_model(
            f"Sensor_{config.name}", __config__=ConfigDict(extra="ignore", strict=False), **fields
        )

    def parse(self, line: bytes) -> dict[str, Any]:
        """One JSON line -> the declared fields; raise SourceError saying what is wrong."""
        try:
            return self._model.model_validate_json(line).model_dump()
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'line'}: {e['msg']}" for e in exc.errors())
            raise SourceError(problems) from exc


ErrorCallback = Callable[[str, str], None]


class SensorReader(abc.ABC):
    """Reads one sensor in the background; ``start()`` begins, ``close()`` stops."""

    def __init__(self, config: SensorConfig, state: SensorState, on_error: Optional[ErrorCallback] = None) -> None:
        self.config = config
        self._state = state
        self._schema = SensorSchema(config)
        self._on_error = on_error
        self.invalid = 0

    def handle_line(self, line: bytes) -> bool:
        """Validate one line and record it; False (logged and counted) when it is invalid."""
        line = line.strip()
        if not line:
            return False
        try:
            reading = self._schema.parse(line)
        except SourceError as exc:
            self.invalid += 1
            logger.warning("sensor %s: invalid reading skipped: %s", self.config.name, exc)
            if self._on_error is not None:
                self._on_error(self.config.name, "invalid")
            return False
        self._state.update(self.config.name, reading)
        return True

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class LineStreamSensor(SensorReader):
    """JSON lines from a file-like stream: stdin, or a serial port (reopened with backoff if it goes away)."""

    def __init__(
        self,
        config: SensorConfig,
        state: SensorState,
        open_stream: Callable[[], AbstractContextManager[IO[bytes]]],
        on_error: Optional[ErrorCallback] = None,
        backoff_max_s: float = 30.0,
    ) -> None:
        super().__init__(config, state, on_error)
        self._open = open_stream
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._backoff_max_s = backoff_max_s

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"sensor-{self.config.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            try:
                with self._open() as stream:
                    delay = 0.5
                    while not self._stop.is_set():
                        line = stream.readline()
                        if line:
                            self.handle_line(line)
                        elif self.config.kind == "stdin":
                            logger.info("sensor %s: stdin ended", self.config.name)
                            return
                        # serial: b"" is the read timeout on a quiet port; keep listening
            except OSError as exc:  # pyserial's SerialException is an OSError
                logger.warning("sensor %s: %s; reopening in %.1fs", self.config.name, exc, delay)
                if self._on_error is not None:
                    self._on_error(self.config.name, "disconnected")
            self._stop.wait(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._backoff_max_s)

    def close(self) -> None:
        self._stop.set()
        # A blocking readline on a quiet port returns at its timeout; stdin may block for good (daemon thread).
        if self._thread is not None and self.config.kind != "stdin":
            self._thread.join(timeout=2.0)


class MqttSensor(SensorReader):
    """JSON lines as MQTT messages on ``topic`` (one reading per message), on the device's broker."""

    def __init__(
        self,
        config: SensorConfig,
        state: SensorState,
        mqtt_config: MqttConfig,
        client_id: str,
        on_error: Optional[ErrorCallback] = None,
    ) -> None:
        super().__init__(config, state, on_error)
        if not config.topic:
            raise SourceError(f"sensor {config.name!r}: kind mqtt needs a topic")
        self._topic = config.topic
        self._mqtt = mqtt_config
        self._client = new_client(client_id, username=mqtt_config.username or client_id, password=mqtt_config.password)
        self._client.on_connect = lambda c, *_: c.subscribe(self._topic, qos=0)
        self._client.on_message = self._on_message

    def _on_message(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        self.handle_line(bytes(message.payload))

    def start(self) -> None:
        self._client.connect_async(self._mqtt.host, self._mqtt.port, keepalive=self._mqtt.keepalive_s)
        self._client.loop_start()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def open_sensor(
    config: SensorConfig,
    state: SensorState,
    mqtt_config: MqttConfig,
    device_id: str,
    on_error: Optional[ErrorCallback] = None,
) -> SensorReader:
    if config.kind == "mqtt":
        return MqttSensor(config, state, mqtt_config, f"tandem-edge-{device_id}-sensor-{config.name}", on_error)
    if config.kind == "stdin":
        return LineStreamSensor(config, state, lambda: _NoClose(sys.stdin.buffer), on_error)
    return LineStreamSensor(config, state, lambda: _open_serial(config), on_error)


def _open_serial(config: SensorConfig) -> IO[bytes]:
    if not config.port:
        raise SourceError(f"sensor {config.name!r}: kind serial needs a port")
    try:
        import serial  # pyserial
    except ImportError as exc:
        raise OSError(f"serial sensors need pyserial: {exc}") from exc
    port: IO[bytes] = serial.Serial(config.port, config.baudrate, timeout=1.0)
    return port


class _NoClose:
    """stdin in a ``with`` block without closing it."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def __enter__(self) -> IO[bytes]:
        return self._stream

    def __exit__(self, *exc: object) -> None:
        return None
