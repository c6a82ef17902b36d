"""The device's links to the hub: escalations up (gRPC or MQTT), verdicts and acknowledgements down (MQTT)."""

from edge.comms.grpc_client import GrpcTransport
from edge.comms.link import DeviceLink
from edge.comms.transport import Transport

__all__ = ["DeviceLink", "GrpcTransport", "Transport"]
