"""The model pool as a Ray Serve deployment, and the hub's handles on it.

ModelPool          the deployment: every ONNX model the rules name, multiplexed by sha256, batched
ServeBackend       the router's view of one model in it (Ray's errors translated here)
PoolTensorModels   the v2 protocol's view of it
ServePool          both, for the ``Hub`` (``cloud.hub.ModelPool``)
ServeScaler        its replica bounds, for the orchestrator
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
from ray import serve
from ray.exceptions import RayActorError, RaySystemError, RayTaskError
from ray.serve._private.client import ServeControllerClient
from ray.serve.context import _get_global_client
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ServeDeploySchema

from cloud.errors import ActionFailed, ReplicaFailed, ReplicaUnavailable, one_line
from cloud.hub import ModelPool as PoolClient
from cloud.ingress import v2
from cloud.models import CloudModel, load_model
from cloud.orchestrator.actuator import PoolScaler
from cloud.routing import ModelAnswer, ModelBackend
from cloud.routing.steps import so_far
from protocol.errors import MalformedMessage, ProtocolError
from protocol.messages import EscalationRequest, Prediction

logger = logging.getLogger(__name__)


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

        async def load(sha256: str) -> CloudModel:
            self._loads += 1
            logger.info("model pool: loading %s", sha256[:12])
            return await asyncio.to_thread(load_model, artifacts / sha256, max_image_pixels)

        # Built here rather than as a decorated method so the per-replica limit comes from the config.
        self._model = serve.multiplexed(max_num_models_per_replica=max_models)(load)
        # serve.batch's wrapper has these setters; its type hints describe only the wrapped method.
        self._batch.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self._batch.set_batch_wait_timeout_s(batch_wait_ms / 1000.0)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _batch(self, items: list[tuple[CloudModel, EscalationRequest]]) -> list[ModelAnswer | Exception]:
        """One model run per model in the batch; a bad input fails only its own request."""
        by_model: dict[int, list[int]] = {}
        for index, (model, _) in enumerate(items):
            by_model.setdefault(id(model), []).append(index)
        answers: list[ModelAnswer | Exception] = [ValueError("not run")] * len(items)
        for indexes in by_model.values():
            model = items[indexes[0]][0]
            results = model.predict_requests([items[i][1] for i in indexes])
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
                [result] = await asyncio.to_thread(model.predict_requests, [request])
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
        return v2.spec_from_onnx(name, model.version, model.session.get_inputs(), model.session.get_outputs())

    async def run_tensors(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = await self._model(serve.get_multiplexed_model_id())
        return await asyncio.to_thread(model.run_tensors, inputs)

    async def preload(self) -> None:
        """Load the multiplexed model on this replica (no request runs)."""
        await self._model(serve.get_multiplexed_model_id())

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
            return await self._handle.predict.remote(so_far(request, previous))
        except RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, ProtocolError):
                raise MalformedMessage(str(cause)) from None
            logger.warning("model pool replica failed on %s: %s", request.trace_id, exc)
            raise ReplicaFailed(f"replica raised {type(cause).__name__}: {one_line(str(cause))}") from None
        except (RayActorError, RaySystemError) as exc:
            logger.warning("model pool replica unavailable for %s: %s", request.trace_id, exc)
            raise ReplicaUnavailable(f"replica unavailable ({type(exc).__name__})") from None


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


class ServePool(PoolClient):
    """The Serve deployment as the hub's model pool."""

    def __init__(self, pool: DeploymentHandle, app_name: str) -> None:
        self._pool = pool
        self._scaler = ServeScaler(app_name)

    def scaler(self) -> ServeScaler:
        return self._scaler

    def backend(self, sha256: str) -> ModelBackend:
        return ServeBackend(self._pool, sha256)

    def tensor_models(self, artifacts: dict[str, str]) -> v2.TensorModels:
        return PoolTensorModels(self._pool, artifacts)

    async def loads(self) -> int:
        loads: int = await self._pool.loads.remote()
        return loads

    async def preload(self, sha256: str) -> None:
        await self._pool.options(multiplexed_model_id=sha256).preload.remote()


class ServeScaler(PoolScaler):
    """The ModelPool deployment's replica bounds, through Serve's controller.

    ``scale`` takes the application's own deployed config (what ``tandem hub run`` or ``serve deploy`` sent),
    replaces ModelPool's ``autoscaling_config`` bounds in it, and applies it as ``serve deploy`` would: only the
    replica settings change, which Serve carries out without restarting a replica or dropping a request. An
    application started with ``serve.run`` (no deployed config) cannot be scaled this way: ActionFailed says so.
    """

    def __init__(self, app_name: str, deployment: str = "ModelPool") -> None:
        self._app = app_name
        self._deployment = deployment

    async def bounds(self) -> Optional[tuple[int, int, int]]:
        details = await asyncio.to_thread(_serve_details)
        app = details.get("applications", {}).get(self._app)
        deployment = (app or {}).get("deployments", {}).get(self._deployment)
        if deployment is None:
            return None
        config = deployment.get("deployment_config", {})
        running = sum(1 for r in deployment.get("replicas", []) if r.get("state") == "RUNNING")
        auto = config.get("autoscaling_config")
        if auto:
            return int(auto["min_replicas"]), int(auto["max_replicas"]), running
        fixed = int(config.get("num_replicas") or deployment.get("target_num_replicas") or running)
        return fixed, fixed, running

    async def scale(self, min_replicas: int, max_replicas: int) -> None:
        await asyncio.to_thread(self._apply, min_replicas, max_replicas)

    def _apply(self, min_replicas: int, max_replicas: int) -> None:
        details = _serve_details()
        apps = details.get("applications", {})
        deployed = (apps.get(self._app) or {}).get("deployed_app_config")
        if not deployed:
            raise ActionFailed(f"application {self._app} was not deployed from a config: scale it with serve deploy")
        others = [d for d in deployed.get("deployments", []) if d.get("name") != self._deployment]
        mine: dict[str, Any] = next(
            (d for d in deployed.get("deployments", []) if d.get("name") == self._deployment), {}
        )
        mine = {k: v for k, v in mine.items() if k != "num_replicas"}  # autoscaling replaces a fixed count
        bounds = {"min_replicas": min_replicas, "max_replicas": max_replicas}
        mine.update(name=self._deployment, autoscaling_config={**(mine.get("autoscaling_config") or {}), **bounds})
        applications = [a["deployed_app_config"] for name, a in apps.items() if name != self._app]
        config = {
            "proxy_location": details.get("proxy_location"),
            "http_options": details.get("http_options"),
            "grpc_options": details.get("grpc_options"),
            "applications": [*applications, {**deployed, "deployments": [*others, mine]}],
        }
        try:
            schema = ServeDeploySchema.model_validate({k: v for k, v in config.items() if v is not None})
            _client().deploy_apps(schema)
        except (ValueError, RayTaskError) as exc:
            raise ActionFailed(f"Serve refused the new replica bounds: {exc}") from exc
        logger.info("model pool: replicas %d..%d", min_replicas, max_replicas)


def _client() -> ServeControllerClient:
    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        raise ActionFailed("no Serve controller is running")
    return client


def _serve_details() -> dict[str, Any]:
    return _client().get_serve_details()
