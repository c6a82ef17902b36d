"""The v2 gRPC service (inference.GRPCInferenceService) for Ray Serve's gRPC proxy, from tritonclient's stubs.

tritonclient generated its messages as module ``grpc_service_pb2`` but ships them as
``tritonclient.grpc.service_pb2``; Ray pickles each request between its proxy and the
replica, and pickle finds a class by its ``__module__``. Importing this module (the proxy
does, through ``grpc_servicer_functions``) registers the module under the name pickle looks for.
"""

from __future__ import annotations

import sys

from tritonclient.grpc import service_pb2
from tritonclient.grpc.service_pb2_grpc import add_GRPCInferenceServiceServicer_to_server

sys.modules.setdefault(service_pb2.ModelInferRequest.__module__, service_pb2)

__all__ = ["add_GRPCInferenceServiceServicer_to_server", "service_pb2"]
