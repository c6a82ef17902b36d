"""free_port hands out ports outside the kernel's ephemeral range, never the same one twice."""

import socket

from tandem.broker import _FIRST_PORT, _ephemeral_start, free_port


def test_ports_are_distinct_bindable_and_outside_the_ephemeral_range():
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    for port in ports:
        assert _FIRST_PORT <= port < _ephemeral_start()
        with socket.socket() as s:
            s.bind(("0.0.0.0", port))  # still free on every address


def test_a_taken_port_is_never_handed_out(monkeypatch):
    held = socket.socket()
    held.bind(("0.0.0.0", 0))
    taken = held.getsockname()[1]
    picks = iter([taken, taken, _FIRST_PORT + 7])
    monkeypatch.setattr("random.Random.randint", lambda self, a, b: next(picks))
    monkeypatch.setattr("tandem.broker._GIVEN_PORTS", set())
    try:
        assert free_port() == _FIRST_PORT + 7
    finally:
        held.close()
