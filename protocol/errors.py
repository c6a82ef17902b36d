"""The protocol's error tree. Every decode or validation failure is one of these."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class: a message or topic that does not follow protocol v1."""


class MalformedMessage(ProtocolError):
    """The bytes are not a message of the expected type, or a field is invalid."""


class UnsupportedSchemaVersion(ProtocolError):
    """The message declares a schema_version this code does not understand."""

    def __init__(self, version: int, supported: int) -> None:
        super().__init__(f"schema_version {version} is not supported (this build speaks {supported})")
        self.version = version
        self.supported = supported


class InvalidTopic(ProtocolError):
    """A topic or device id that does not fit tandem/v1/devices/{device_id}/{channel}."""
