"""The hub as a Ray Serve application. Every ``ray.*`` call in the project is in this module.

    gRPC :9000 tandem.v1.Escalation ─┐
    MQTT .../+/escalations (QoS 1) ───┼─> Ingress ──handle──> StrongModel (ONNX Runtime)
    HTTP :8000 /v1/traces, /v1/models ┘     │
                                            └─> trace store (SQLite) ─> MQTT results topic

Why Ray Serve's own gRPC proxy rather than a gRPC server inside a
deployment: the proxy runs on every node and routes to healthy replicas, so
the ingress scales like any deployment and a replica restart drops no
listening socket; a server inside a replica would bind one port per replica
and need its own load balancer. Requests carry ``application`` metadata
(``HubConfig.app_name``) to pick this application.

``serve run cloud.app:build_app model_path=...`` works too (typed builder).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Union

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from cloud.config import HubConfig
from cloud.dispatch.mqtt import MqttDispatcher
from cloud.escalations import EscalationService, ModelAnswer, ModelClient
from cloud.ingress import grpc as grpc_ingress
from cloud.ingress import mqtt as mqtt_ingress
from cloud.ingress.http import build_http_app
from cloud.models.classifier import Classifier
from cloud.registry import SqliteRegistry
from cloud.traces.store import TraceStore
from protocol.codec import Encoding
from protocol.messages import EscalationRequest

logger = logging.getLogger(__name__)

GRPC_SERVICER = "protocol._generated.tandem.v1.tandem_pb2_grpc.add_EscalationServicer_to_server"


@serve.deployment(name="StrongModel", max_ongoing_requests=64)
class StrongModel:
    """The model, with dynamic batching: requests that arrive within batch_wait_ms run as one batch.

    max_ongoing_requests must exceed the batch size, or Serve never lets a batch fill.
    """

    def __init__(self, model_path: str, max_batch_size: int, batch_wait_ms: float) -> None:
        self._classifier = Classifier(Path(model_path))
        self._batch.set_max_batch_size(max_batch_size)
        self._batch.set_batch_wait_timeout_s(batch_wait_ms / 1000.0)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _batch(self, requests: list[EscalationRequest]) -> list[ModelAnswer | Exception]:
        results = self._classifier.predict_batch([r.input for r in requests])
        return [r if isinstance(r, Exception) else ModelAnswer(r, len(requests)) for r in results]

    async def predict(self, request: EscalationRequest) -> ModelAnswer:
        answer = await self._batch(request)
        if isinstance(answer, Exception):
            raise answer
        return answer


class HandleModelClient(ModelClient):
    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    async def predict(self, request: EscalationRequest) -> ModelAnswer:
        return await self._handle.predict.remote(request)


@serve.deployment(name="Ingress", max_ongoing_requests=256)
@serve.ingress()
class Ingress:
    async def __init__(self, model: DeploymentHandle, config: dict[str, Any]) -> None:
        # async so that recovery can schedule work on the replica's event loop.
        hub = HubConfig.model_validate(config).absolute()
        self._store = TraceStore(hub.trace_store_path)
        self._store.open()
        self._registry = SqliteRegistry(hub.registry_file(), hub.artifacts_dir())
        self._registry.open()
        self._dispatcher = MqttDispatcher(
            hub.mqtt_host,
            hub.mqtt_port,
            hub.mqtt_username,
            hub.mqtt_password,
            on_delivered=lambda trace_id: self._service.mark_delivered(trace_id),  # noqa: PLW0108 - built below
        )
        self._service = EscalationService(
            self._store, HandleModelClient(model), self._dispatcher, Encoding(hub.result_encoding)
        )
        self._dispatcher.start()
        self._mqtt_ingress = mqtt_ingress.MqttEscalations(
            self._service,
            asyncio.get_running_loop(),
            hub.mqtt_host,
            hub.mqtt_port,
            hub.mqtt_username,
            hub.mqtt_password,
            # One replica here; several need a client id per replica that survives restarts.
            client_id=f"{hub.mqtt_username}-escalations",
        )
        self._mqtt_ingress.start()
        self._service.recover()

    async def Escalate(self, request, grpc_context):
        return await grpc_ingress.escalate(self._service, request, grpc_context)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_http_app(self._store, self._registry)


def build_app(config: Union[HubConfig, dict[str, Any]]) -> serve.Application:
    """The application; ``serve run``/``serve deploy`` call this with their config's ``args`` as a dict.

    (Ray hands over a typed model only when the annotation is a class at run time; with postponed
    annotations here it sees a string, so the dict is validated here instead.)
    """
    config = HubConfig.model_validate(config).absolute() if isinstance(config, dict) else config.absolute()
    options = {"ray_actor_options": {"num_cpus": config.replica_num_cpus}}
    model = StrongModel.options(**options, max_ongoing_requests=config.model_max_ongoing_requests).bind(
        str(config.model_path), config.batch_max_size, config.batch_wait_ms
    )
    return Ingress.options(**options).bind(model, config.model_dump(mode="json"))


def start_hub(config: HubConfig) -> None:
    """Start (or join) Ray, start Serve's HTTP and gRPC proxies, deploy the app; return when it is healthy."""
    ray.init(
        # "local" always starts a new local cluster; joining one takes an explicit address.
        address=config.ray_address or "local",
        include_dashboard=False,
        log_to_driver=False,
        # A small object store: escalations are small, and CI machines have little shared memory.
        object_store_memory=None if config.ray_address else 256 * 1024 * 1024,
    )
    serve.start(
        http_options={"host": config.http_host, "port": config.http_port},
        grpc_options={"port": config.grpc_port, "grpc_servicer_functions": [GRPC_SERVICER]},
    )
    serve.run(build_app(config), name=config.app_name, route_prefix="/")
    logger.info("hub: HTTP on %s:%d, gRPC on %d", config.http_host, config.http_port, config.grpc_port)


def stop_hub() -> None:
    serve.shutdown()
    ray.shutdown()
