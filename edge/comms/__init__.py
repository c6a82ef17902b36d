"""The device's links to the hub: escalations up (gRPC), verdicts down (MQTT)."""

from edge.comms.grpc_client import GrpcTransport
from edge.comms.mqtt import ResultSubscriber
from edge.comms.transport import Transport

__all__ = ["GrpcTransport", "ResultSubscriber", "Transport"]
