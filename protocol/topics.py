"""The MQTT topic scheme: ``tandem/v1/devices/{device_id}/{channel}``.

Topics are value objects that validate themselves, so a device id that would
break the scheme (a ``/``, a wildcard, an empty string) is refused where it is
made, not at the broker.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

from protocol.errors import InvalidTopic

PREFIX = "tandem/v1/devices"
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Channel(enum.Enum):
    """What a device topic carries."""

    RESULTS = "results"
    ACKS = "acks"  # device -> hub: the device has stored a result (ResultAck); the hub stops resending it
    ESCALATIONS = "escalations"
    ACCEPTED = "accepted"  # hub -> device: the hub has recorded an escalation (EscalationAck); no more resends
    DESIRED = "desired"  # hub -> device, retained: the settings (and model bundle) it should run (protocol.fleet)
    REPORTED = "reported"  # device -> hub, retained: what it is and what it applied, or why it refused
    AVAILABILITY = "availability"
    TELEMETRY = "telemetry"  # device -> hub: the heartbeat
    ALERTS = "alerts"


# Who sends on each channel: what a broker's ACL lets a device write, and what it lets it read.
DEVICE_WRITES = frozenset(
    {Channel.ESCALATIONS, Channel.ACKS, Channel.REPORTED, Channel.AVAILABILITY, Channel.TELEMETRY, Channel.ALERTS}
)
DEVICE_READS = frozenset({Channel.RESULTS, Channel.ACCEPTED, Channel.DESIRED})


def validate_device_id(device_id: str) -> str:
    """Return device_id if it is 1-64 of ``A-Z a-z 0-9 _ . -``, starting with a letter or digit."""
    if not _DEVICE_ID.match(device_id):
        raise InvalidTopic(
            f"device id {device_id!r} must be 1-64 characters of A-Z a-z 0-9 _ . - starting with a letter or digit"
        )
    return device_id


def _device_id_value(device_id: str) -> str:
    """validate_device_id for pydantic, which reports a ValueError as a field error."""
    try:
        return validate_device_id(device_id)
    except InvalidTopic as exc:
        raise ValueError(str(exc)) from exc


DeviceId = Annotated[str, AfterValidator(_device_id_value)]
"""A device id as a pydantic field: checked where a config or a message is read."""


@dataclass(frozen=True)
class DeviceTopic:
    device_id: str
    channel: Channel

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)

    def __str__(self) -> str:
        return f"{PREFIX}/{self.device_id}/{self.channel.value}"

    @classmethod
    def results(cls, device_id: str) -> DeviceTopic:
        return cls(device_id, Channel.RESULTS)

    @classmethod
    def acks(cls, device_id: str) -> DeviceTopic:
        return cls(device_id, Channel.ACKS)

    @classmethod
    def accepted(cls, device_id: str) -> DeviceTopic:
        return cls(device_id, Channel.ACCEPTED)

    @classmethod
    def availability(cls, device_id: str) -> DeviceTopic:
        return cls(device_id, Channel.AVAILABILITY)

    @classmethod
    def desired(cls, device_id: str) -> DeviceTopic:
        return cls(device_id, Channel.DESIRED)

    @classmethod
    def parse(cls, topic: str) -> DeviceTopic:
        """The inverse of ``str()``: raise InvalidTopic for anything outside the scheme."""
        prefix = PREFIX + "/"
        if not topic.startswith(prefix):
            raise InvalidTopic(f"topic {topic!r} does not start with {prefix!r}")
        device_id, _, channel = topic[len(prefix) :].partition("/")
        try:
            return cls(device_id, Channel(channel))
        except ValueError as exc:
            raise InvalidTopic(f"topic {topic!r} names no known channel") from exc
