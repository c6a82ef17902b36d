"""The hub's ingress as a Ray Serve deployment: the device-facing gRPC methods and the HTTP app, over one ``Hub``.

Serve builds the deployment on a replica and calls its methods; everything else is the ``Hub``
(``cloud.hub``), which this class only holds. Rules arrive in ``user_config`` and are applied in place
by ``reconfigure`` (no replica restart).
"""

from __future__ import annotations

from typing import Any, Optional

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from cloud.config import HubConfig
from cloud.deployments.pool import ServePool
from cloud.errors import HubError, grpc_status
from cloud.hub import Hub, LocalPool
from cloud.ingress import grpc as grpc_ingress
from cloud.ingress import v2


@serve.deployment(name="Ingress", max_ongoing_requests=256)
@serve.ingress()
class Ingress:
    async def __init__(self, pool: Optional[DeploymentHandle], config: dict[str, Any]) -> None:  # type: ignore[misc]
        # async (Serve allows it; mypy does not) so the hub's background loops run on the replica's event loop.
        # pool None: model_pool "ingress", the models run here (LocalPool, batching as the ModelPool does).
        hub_config = HubConfig.model_validate(config)
        models = (
            ServePool(pool, hub_config.app_name)
            if pool is not None
            else LocalPool(hub_config.artifacts_dir(), hub_config.max_image_pixels, hub_config.batch_max_size)
        )
        self._hub = Hub(hub_config, models)
        self._hub.start()

    async def __del__(self) -> None:
        """Serve drains the replica (scaling in, a redeploy, shutdown): intake stops, running traces finish and send
        their results, the rest are left for another replica (their leases lapse) or the next start."""
        await self._hub.close()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Hot reload: ``user_config: {routing: {...}}`` replaces the rules in place (no replica restart)."""
        if "routing" in user_config:
            await self._hub.reconfigure(user_config["routing"])

    async def Escalate(self, request, grpc_context):
        return await grpc_ingress.escalate(self._hub.service, request, grpc_context)

    async def EscalateAndWait(self, request, grpc_context):
        return await grpc_ingress.escalate_and_wait(self._hub.service, request, grpc_context)

    # The Open Inference Protocol v2 over gRPC (inference.GRPCInferenceService).
    async def ServerLive(self, request, grpc_context):
        return self._hub.v2_grpc.server_live()

    async def ServerReady(self, request, grpc_context):
        return self._hub.v2_grpc.server_ready()

    async def ModelReady(self, request, grpc_context):
        return self._hub.v2_grpc.model_ready(request)

    async def ServerMetadata(self, request, grpc_context):
        return self._hub.v2_grpc.server_metadata()

    async def ModelMetadata(self, request, grpc_context):
        return await v2_call(grpc_context, self._hub.v2_grpc.model_metadata(request), v2.v2pb.ModelMetadataResponse)

    async def ModelInfer(self, request, grpc_context):
        return await v2_call(grpc_context, self._hub.v2_grpc.model_infer(request), v2.v2pb.ModelInferResponse)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self._hub.http_app()

    async def status(self) -> dict[str, Any]:
        return await self._hub.status()


async def v2_call(context: Any, call: Any, empty: Any) -> Any:
    """A v2 gRPC call; a hub error becomes its status code from cloud.errors (unknown model: NOT_FOUND)."""
    try:
        return await call
    except HubError as exc:
        context.set_code(grpc_status(exc))
        context.set_details(str(exc))
        return empty()
