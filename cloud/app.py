"""The hub as a Ray Serve application. Every ``ray.*`` call in the project is in this module.

    gRPC :9000 tandem.v1.Escalation ─┐              router (rules, balancer, breaker, cache)
    MQTT .../+/escalations, +/acks ───┼─> Ingress ──┬─handle──> ModelPool (ONNX Runtime, multiplexed, batched)
    HTTP :8000 /v1/traces, /v1/models ┘     │       └─tritonclient──> external v2 servers (Triton, KServe)
    HTTP/gRPC  Open Inference Protocol v2 ──┤
                                            └─> trace store (SQLite) ─> delivery: the waiting gRPC call, an HTTP
                                                callback, or the MQTT results topic; resent until the device acks

Why Ray Serve's own gRPC proxy rather than a gRPC server inside a
deployment: the proxy runs on every node and routes to healthy replicas, so
the ingress scales like any deployment and a replica restart drops no
listening socket; a server inside a replica would bind one port per replica
and need its own load balancer. Requests carry ``application`` metadata
(``HubConfig.app_name``) to pick this application.

``serve run cloud.app:build_app model_path=...`` works too (typed builder). The routing rules
arrive in Ingress's ``user_config`` (hot-reloaded by ``reconfigure``), or from ``routing_path``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import ray
from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayActorError, RaySystemError, RayTaskError
from ray.serve.context import _get_global_client
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ServeDeploySchema

from cloud.config import HubConfig
from cloud.dispatch.callbacks import HttpCallbacks
from cloud.dispatch.delivery import Delivery
from cloud.dispatch.mqtt import MqttDispatcher
from cloud.errors import HubError, ReplicaFailed, grpc_status, one_line
from cloud.escalations import EscalationService
from cloud.ingress import grpc as grpc_ingress
from cloud.ingress import mqtt as mqtt_ingress
from cloud.ingress import v2
from cloud.ingress.http import build_http_app
from cloud.metrics import HubMetrics
from cloud.models.classifier import Classifier
from cloud.registry import SqliteRegistry, serving
from cloud.routing import ModelAnswer, ModelBackend, Router, RoutingConfig, parse_routing
from cloud.routing.backends import build_backends, close_backends
from cloud.routing.config import resolve_registry
from cloud.traces.store import TraceStore
from protocol.codec import Encoding
from protocol.errors import MalformedMessage, ProtocolError
from protocol.messages import EscalationRequest, Prediction

logger = logging.getLogger(__name__)

GRPC_PROXY_LIMIT_ENV = "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"
REGISTRY_REPORT_S = 10.0  # how often the Ingress writes serving versions' health and replicas to the registry
PRUNE_S = 3600.0  # how often the trace store drops traces past trace_retention_s
ORPHAN_CHECK_S = 30.0  # how often the Ingress looks for accepted traces whose run died

GRPC_SERVICERS = [
    # tandem.v1.Escalation with raw-bytes requests, so the hub's own parser maps a bad one to INVALID_ARGUMENT.
    "cloud.ingress.grpc.add_escalation_servicer",
    # The Open Inference Protocol v2, as tritonclient ships it.
    "cloud.ingress.v2_grpc.add_GRPCInferenceServiceServicer_to_server",
]


@serve.deployment(name="ModelPool", max_ongoing_requests=64)
class ModelPool:
    """Every ONNX model the rules name, loaded on demand by content hash, with dynamic batching.

    ``@serve.multiplexed`` keeps up to ``max_models`` models per replica and evicts the least recently
    used; Serve routes a request to a replica that has its model already (``multiplexed_model_id``).
    Requests that arrive within batch_wait_ms run as one batch per model; a request alone in the
    replica runs at once. max_ongoing_requests must exceed the batch size, or Serve never lets a
    batch fill.
    """

    def __init__(
        self, artifacts_dir: str, max_batch_size: int, batch_wait_ms: float, max_models: int, max_image_pixels: int
    ) -> None:
        artifacts = Path(artifacts_dir)
        self._loads = 0
        self._in_flight = 0  # predict calls in this replica that have their model and no answer yet

        async def load(sha256: str) -> Classifier:
            self._loads += 1
            logger.info("model pool: loading %s", sha256[:12])
            return await asyncio.to_thread(Classifier, artifacts / sha256, max_image_pixels=max_image_pixels)

        # Built here rather than as a decorated method so the per-replica limit comes from the config.
        self._model = serve.multiplexed(max_num_models_per_replica=max_models)(load)
        self._batch.set_max_batch_size(max_batch_size)
        self._batch.set_batch_wait_timeout_s(batch_wait_ms / 1000.0)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _batch(self, items: list[tuple[Classifier, EscalationRequest]]) -> list[ModelAnswer | Exception]:
        """One model run per model in the batch; a bad input fails only its own request."""
        by_model: dict[int, list[int]] = {}
        for index, (model, _) in enumerate(items):
            by_model.setdefault(id(model), []).append(index)
        answers: list[ModelAnswer | Exception] = [ValueError("not run")] * len(items)
        for indexes in by_model.values():
            model = items[indexes[0]][0]
            results = model.predict_batch([items[i][1].input for i in indexes])
            for i, result in zip(indexes, results, strict=True):
                answers[i] = result if isinstance(result, Exception) else ModelAnswer(result, len(indexes))
        return answers

    async def predict(self, request: EscalationRequest) -> ModelAnswer:
        model = await self._model(serve.get_multiplexed_model_id())
        self._in_flight += 1
        try:
            if self._in_flight == 1:
                # Nobody here to batch with: waiting batch_wait_ms could only add latency. The run goes
                # to a thread so requests arriving meanwhile are counted and batched.
                [result] = await asyncio.to_thread(model.predict_batch, [request.input])
                answer = result if isinstance(result, Exception) else ModelAnswer(result, 1)
            else:
                answer = await self._batch((model, request))
        finally:
            self._in_flight -= 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def spec(self, name: str) -> v2.ModelSpec:
        model = await self._model(serve.get_multiplexed_model_id())
        session, version = model.model.runner.session, model.model.head.info.version or "1"
        return v2.spec_from_onnx(name, version, session.get_inputs(), session.get_outputs())

    async def run_tensors(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = await self._model(serve.get_multiplexed_model_id())
        return await asyncio.to_thread(model.run_tensors, inputs)

    def loads(self) -> int:
        """How many model loads this replica has done (multiplexing: a model evicted and used again loads again)."""
        return self._loads


class ServeBackend(ModelBackend):
    """A model on the hub's own pool: the handle asks for the replica that has its artifact loaded.

    Ray's errors are translated here, at the boundary: a bad input stays MalformedMessage (no strike
    against the replica), anything else becomes ReplicaFailed with a one-line reason. Ray's own text
    (a traceback with colour codes, pid and address) goes to the hub's log, never to a device."""

    def __init__(self, pool: DeploymentHandle, sha256: str) -> None:
        self._handle = pool.options(multiplexed_model_id=sha256)

    async def predict(self, request: EscalationRequest, previous: Optional[Prediction]) -> ModelAnswer:
        try:
            return await self._handle.predict.remote(request)
        except RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, ProtocolError):
                raise MalformedMessage(str(cause)) from None
            logger.warning("model pool replica failed on %s: %s", request.trace_id, exc)
            raise ReplicaFailed(f"replica raised {type(cause).__name__}: {one_line(str(cause))}") from None
        except (RayActorError, RaySystemError) as exc:
            logger.warning("model pool replica unavailable for %s: %s", request.trace_id, exc)
            raise ReplicaFailed(f"replica unavailable ({type(exc).__name__})") from None


class PoolTensorModels(v2.TensorModels):
    """The v2 protocol's view of the pool: the rules' ONNX models by name."""

    def __init__(self, pool: DeploymentHandle, artifacts: dict[str, str]) -> None:
        self._pool = pool
        self._artifacts = artifacts  # model name -> sha256
        self._specs: dict[str, v2.ModelSpec] = {}

    def names(self) -> list[str]:
        return list(self._artifacts)

    async def spec(self, name: str) -> v2.ModelSpec:
        if name not in self._specs:
            handle = self._pool.options(multiplexed_model_id=self._artifacts[name])
            self._specs[name] = await handle.spec.remote(name)
        return self._specs[name]

    async def run(self, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await self._pool.options(multiplexed_model_id=self._artifacts[name]).run_tensors.remote(inputs)


@serve.deployment(name="Ingress", max_ongoing_requests=256)
@serve.ingress()
class Ingress:
    async def __init__(self, pool: DeploymentHandle, config: dict[str, Any]) -> None:
        # async so that recovery can schedule work on the replica's event loop.
        hub = HubConfig.model_validate(config).absolute()
        self._pool = pool
        self._max_request_bytes = hub.max_request_bytes
        self._store = TraceStore(hub.trace_store_path)
        self._store.open()
        self._registry = SqliteRegistry(hub.registry_file(), hub.artifacts_dir())
        self._registry.open()
        self._metrics = HubMetrics()
        self._metrics.watch_unacked(self._store.count_unacked)
        self._dispatcher = MqttDispatcher(
            hub.mqtt_host,
            hub.mqtt_port,
            hub.mqtt_username,
            hub.mqtt_password,
            on_delivered=lambda trace_id: self._delivery.delivered(trace_id),  # noqa: PLW0108 - built below
            metrics=self._metrics,
        )
        callbacks = (
            HttpCallbacks(
                hub.delivery.callbacks,
                on_acked=lambda trace_id, device_id: self._delivery.acknowledged(trace_id, device_id, "callback"),
                metrics=self._metrics,
            )
            if hub.delivery.callbacks
            else None
        )
        self._delivery = Delivery(
            self._store, self._dispatcher, hub.delivery, self._metrics, Encoding(hub.result_encoding), callbacks
        )
        self._tensor_models = PoolTensorModels(pool, {})
        self._service = EscalationService(
            self._store, self._router(hub.routing()), self._delivery, self._metrics, limits=hub.input_limits()
        )
        self._v2 = v2.V2Service(lambda: self._tensor_models)
        self._v2_grpc = v2.V2Grpc(self._v2)
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
        loop = asyncio.get_running_loop()
        # Sends what is due: results not acknowledged in time, and any a restart left unsent.
        self._resender = loop.create_task(self._delivery.run())
        self._reporter = loop.create_task(self._report_to_registry())
        self._pruner = loop.create_task(self._prune_traces(hub.trace_retention_s))
        self._orphans = loop.create_task(self._rerun_orphans())

    def _router(self, routing: RoutingConfig) -> Router:
        """Rules -> a router whose Serve replicas are the pool, by each model file's sha256. Registry versions
        the rules name are resolved to their artifacts here (RoutingError if one cannot be served)."""
        routing = resolve_registry(routing, self._registry)
        artifacts = {
            name: self._registry.put_artifact(entry.model_file.read_bytes())
            for name, entry in routing.onnx_models().items()
        }
        self._tensor_models = PoolTensorModels(self._pool, artifacts)
        return Router(routing, build_backends(routing, lambda name, _entry: ServeBackend(self._pool, artifacts[name])))

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Hot reload: ``user_config: {routing: {...}}`` replaces the rules in place (no replica restart).

        Rules that fail to validate are logged and the running ones stay; ``tandem hub run`` and
        ``tandem hub routing check`` validate before they deploy, so this is the last line."""
        if "routing" not in user_config:
            return
        try:
            router = self._router(parse_routing(user_config["routing"], "user_config.routing"))
        except (HubError, OSError) as exc:
            logger.error("routing: new rules refused, the old ones stay: %s", exc)
            return
        old = self._service.router
        self._service.use(router)
        logger.info("routing: %d rules, %d models in use", len(router.config.routes), len(router.config.models))
        serving.report(self._registry, router.config, router.circuits, previous=old.config)
        await close_backends(old.backends)

    async def _report_to_registry(self) -> None:
        """Every REGISTRY_REPORT_S: the registry versions in use, with their replicas and health."""
        while True:
            router = self._service.router
            try:
                serving.report(self._registry, router.config, router.circuits)
            except Exception:  # a bug here must not end the reports for good
                logger.exception("registry: report failed; trying again in %.0f s", REGISTRY_REPORT_S)
            await asyncio.sleep(REGISTRY_REPORT_S)

    async def _rerun_orphans(self) -> None:
        """Every ORPHAN_CHECK_S: an accepted trace with no result and no run in progress (its run died) runs again.
        One more line of defence: nothing the hub accepted may stay unanswered."""
        while True:
            await asyncio.sleep(ORPHAN_CHECK_S)
            try:
                self._service.recover(received_before=time.time() - ORPHAN_CHECK_S)
            except Exception:  # a store error: logged, tried again next round
                logger.exception("trace store: looking for unfinished traces failed")

    async def _prune_traces(self, retention_s: float) -> None:
        """Every PRUNE_S: delete finished traces past the retention (never one whose result is still being sent)."""
        while True:
            try:
                deleted = self._store.prune(time.time() - retention_s)
                if deleted:
                    logger.info("trace store: deleted %d traces older than %.0f s", deleted, retention_s)
            except Exception:  # a store error (a full disk): logged, tried again next round
                logger.exception("trace store: pruning failed; trying again in %.0f s", PRUNE_S)
            await asyncio.sleep(PRUNE_S)

    async def Escalate(self, request, grpc_context):
        return await grpc_ingress.escalate(self._service, request, grpc_context)

    async def EscalateAndWait(self, request, grpc_context):
        return await grpc_ingress.escalate_and_wait(self._service, request, grpc_context)

    # The Open Inference Protocol v2 over gRPC (inference.GRPCInferenceService).
    async def ServerLive(self, request, grpc_context):
        return self._v2_grpc.server_live()

    async def ServerReady(self, request, grpc_context):
        return self._v2_grpc.server_ready()

    async def ModelReady(self, request, grpc_context):
        return self._v2_grpc.model_ready(request)

    async def ServerMetadata(self, request, grpc_context):
        return self._v2_grpc.server_metadata()

    async def ModelMetadata(self, request, grpc_context):
        return await v2_call(grpc_context, self._v2_grpc.model_metadata(request), v2.v2pb.ModelMetadataResponse)

    async def ModelInfer(self, request, grpc_context):
        return await v2_call(grpc_context, self._v2_grpc.model_infer(request), v2.v2pb.ModelInferResponse)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_http_app(
            self._store, self._registry, self._v2, self.status, self._metrics, max_body_bytes=self._max_request_bytes
        )

    async def status(self) -> dict[str, Any]:
        """The rules in use, the cache, each replica's circuit, and one pool replica's model loads."""
        router, cache = self._service.router, self._service.cache
        return {
            "pid": os.getpid(),  # the same pid after a reload: reconfigured in place, not restarted
            "digest": router.config.digest(),
            "routes": [r.name for r in router.config.routes],
            "models": sorted(router.config.models),
            "cache": {"entries": len(cache), "hits": cache.hits, "misses": cache.misses},
            "replicas": {
                model: {key: state.value for key, state in router.circuits(model).items()} for model in router.backends
            },
            "pool_loads": await self._pool.loads.remote(),
        }


async def v2_call(context: Any, call: Any, empty: Any) -> Any:
    """A v2 gRPC call; a hub error becomes its status code from cloud.errors (unknown model: NOT_FOUND)."""
    try:
        return await call
    except HubError as exc:
        context.set_code(grpc_status(exc))
        context.set_details(str(exc))
        return empty()


def build_app(config: Union[HubConfig, dict[str, Any]]) -> serve.Application:
    """The application; ``serve run``/``serve deploy`` call this with their config's ``args`` as a dict.

    (Ray hands over a typed model only when the annotation is a class at run time; with postponed
    annotations here it sees a string, so the dict is validated here instead.)
    """
    config = HubConfig.model_validate(config).absolute() if isinstance(config, dict) else config.absolute()
    cpus = {"num_cpus": config.replica_num_cpus}
    pool = ModelPool.options(
        ray_actor_options={**cpus, "num_gpus": config.model_num_gpus},
        max_ongoing_requests=config.model_max_ongoing_requests,
    ).bind(
        str(config.artifacts_dir()),
        config.batch_max_size,
        config.batch_wait_ms,
        config.max_models_per_replica,
        config.max_image_pixels,
    )
    return Ingress.options(ray_actor_options=cpus).bind(pool, config.model_dump(mode="json"))


def deploy_config(config: HubConfig, routing: Optional[RoutingConfig] = None) -> ServeDeploySchema:
    """The hub as a Serve config, as ``serve deploy`` would send it; the rules ride in Ingress's user_config."""
    ingress: dict[str, Any] = {"name": "Ingress"}
    if routing is not None:
        ingress["user_config"] = {"routing": routing.model_dump(mode="json")}
    return ServeDeploySchema.model_validate(
        {
            "http_options": {"host": config.http_host, "port": config.http_port},
            "grpc_options": {"port": config.grpc_port, "grpc_servicer_functions": GRPC_SERVICERS},
            "applications": [
                {
                    "name": config.app_name,
                    "route_prefix": "/",
                    "import_path": "cloud.app:build_app",
                    "args": config.absolute().model_dump(mode="json"),
                    "deployments": [ingress],
                }
            ],
        }
    )


def start_hub(config: HubConfig, routing: Optional[RoutingConfig] = None) -> None:
    """Start (or join) Ray, start Serve's HTTP and gRPC proxies, deploy the app; return when it is healthy."""
    # The gRPC proxy refuses larger messages itself (RESOURCE_EXHAUSTED) before they cross Ray. It reads this
    # when it starts, in the processes a local Ray starts from here; a cluster sets it on its nodes.
    os.environ.setdefault(GRPC_PROXY_LIMIT_ENV, str(config.max_request_bytes))
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
        grpc_options={"port": config.grpc_port, "grpc_servicer_functions": GRPC_SERVICERS},
    )
    deploy(config, routing)
    logger.info("hub: HTTP on %s:%d, gRPC on %d", config.http_host, config.http_port, config.grpc_port)


def deploy(config: HubConfig, routing: Optional[RoutingConfig] = None, timeout_s: int = 300) -> None:
    """Apply the app's config, as ``serve deploy`` does. Only the rules changed: Serve calls the running
    ingress's ``reconfigure`` (no restart). Waits until the application is RUNNING."""
    client = _get_global_client()
    client.deploy_apps(deploy_config(config, routing))
    client._wait_for_application_running(config.app_name, timeout_s=timeout_s)


def stop_hub() -> None:
    serve.shutdown()
    ray.shutdown()
