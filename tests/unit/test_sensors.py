"""Sensor streams: JSON lines checked against the declared schema, from a pipe and from a serial port (a pty)."""

import os
import time

import pytest

from edge.config import MqttConfig, SensorConfig, SourceConfig
from edge.errors import SourceError
from edge.sources import open_source
from edge.sources.live import gstreamer_available
from edge.sources.sensors import LineStreamSensor, SensorSchema, SensorState, open_sensor


def thermo(kind: str = "stdin", **kw) -> SensorConfig:
    return SensorConfig(name="thermo", kind=kind, fields={"celsius": "number", "door_open": "boolean"}, **kw)


def wait_for(predicate, timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_schema_accepts_declared_fields_and_names_what_is_wrong():
    schema = SensorSchema(thermo())
    assert schema.parse(b'{"celsius": 21.5, "door_open": false, "extra": "ignored"}') == {
        "celsius": 21.5,
        "door_open": False,
    }
    with pytest.raises(SourceError, match="door_open: Field required"):
        schema.parse(b'{"celsius": 21.5}')
    with pytest.raises(SourceError, match="celsius"):
        schema.parse(b'{"celsius": "hot", "door_open": true}')
    with pytest.raises(SourceError, match="Invalid JSON"):
        schema.parse(b"celsius=21")


def test_lines_from_a_pipe_update_the_state_and_bad_lines_are_counted():
    read_fd, write_fd = os.pipe()
    state, errors = SensorState(), []
    sensor = LineStreamSensor(thermo(), state, lambda: os.fdopen(read_fd, "rb"), lambda n, e: errors.append((n, e)))
    sensor.start()
    with os.fdopen(write_fd, "wb", buffering=0) as w:
        w.write(b'{"celsius": 20, "door_open": false}\nnot json\n{"celsius": 65.5, "door_open": true}\n')
        assert wait_for(lambda: state.readings.get("thermo") == 2)
    assert state.values() == {"thermo.celsius": 65.5, "thermo.door_open": 1.0}
    assert sensor.invalid == 1 and errors == [("thermo", "invalid")]
    sensor.close()


def test_serial_port_is_read():
    pytest.importorskip("serial")
    controller, device = os.openpty()
    state = SensorState()
    sensor = open_sensor(thermo("serial", port=os.ttyname(device)), state, MqttConfig(), "cam-1")
    sensor.start()
    try:

        def sent_and_read() -> bool:  # pyserial flushes input on open, so keep sending until it is read
            os.write(controller, b'{"celsius": 30, "door_open": false}\n')
            return state.values().get("thermo.celsius") == 30.0

        assert wait_for(sent_and_read)
    finally:
        sensor.close()
        os.close(controller)
        os.close(device)


def test_gstreamer_source_says_when_opencv_lacks_it():
    config = SourceConfig(kind="gstreamer", pipeline="videotestsrc ! videoconvert ! appsink")
    if gstreamer_available():
        source = open_source(config)
        source.close()
    else:
        with pytest.raises(SourceError, match="no GStreamer support"):
            open_source(config)


@pytest.mark.parametrize(("kind", "field"), [("stream", "url"), ("gstreamer", "pipeline"), ("video", "path")])
def test_a_source_without_its_target_is_a_config_error(kind, field):
    with pytest.raises(ValueError, match=f"needs {field}"):
        SourceConfig(kind=kind)
