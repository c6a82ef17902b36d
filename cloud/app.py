"""The hub as a Ray Serve application: the app, its deployment config, and starting and stopping it.

Every ``ray.*`` call in the project is here or in ``cloud.deployments``; the hub itself is ``cloud.hub.Hub``.

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

import contextlib
import io
import logging
import os
import re
from typing import Any, Optional, Union

import ray
from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema

from cloud.config import HubConfig
from cloud.deployments.ingress import Ingress
from cloud.deployments.pool import ModelPool
from cloud.errors import HubError
from cloud.routing import RoutingConfig

logger = logging.getLogger(__name__)

GRPC_PROXY_LIMIT_ENV = "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the colours Ray puts on its lines

ESCALATION_SERVICER = "cloud.ingress.grpc.add_escalation_servicer"
GRPC_SERVICERS = [
    # tandem.v1.Escalation with raw-bytes requests, so the hub's own parser maps a bad one to INVALID_ARGUMENT.
    ESCALATION_SERVICER,
    # The Open Inference Protocol v2, as tritonclient ships it.
    "cloud.ingress.v2_grpc.add_GRPCInferenceServiceServicer_to_server",
]


def grpc_options(config: HubConfig) -> dict[str, Any]:
    """Serve's gRPC proxy, which speaks plain text only: a secured hub takes escalations on its own TLS port
    (``cloud.ingress.device_tls``) and leaves only the v2 inference protocol here."""
    servicers = [s for s in GRPC_SERVICERS if config.security is None or s != ESCALATION_SERVICER]
    return {"port": config.grpc_port, "grpc_servicer_functions": servicers}


def build_app(config: Union[HubConfig, dict[str, Any]]) -> serve.Application:
    """The application; ``serve run``/``serve deploy`` call this with their config's ``args`` as a dict.

    (Ray hands over a typed model only when the annotation is a class at run time; with postponed
    annotations here it sees a string, so the dict is validated here instead.)
    """
    config = HubConfig.model_validate(config).absolute() if isinstance(config, dict) else config.absolute()
    cpus = {"num_cpus": config.replica_num_cpus}
    ingress = Ingress.options(ray_actor_options=cpus, num_replicas=config.ingress_replicas)  # type: ignore[attr-defined]
    if config.model_pool == "ingress":  # the models run in the Ingress replicas: no ModelPool deployment
        return ingress.bind(None, config.model_dump(mode="json"))
    # serve.deployment turns each class into a Deployment, which its type hints do not say.
    scaling = {"autoscaling_config": config.pool_autoscaling.model_dump()} if config.pool_autoscaling else {}
    pool = ModelPool.options(  # type: ignore[attr-defined]
        ray_actor_options={**cpus, "num_gpus": config.model_num_gpus},
        max_ongoing_requests=config.model_max_ongoing_requests,
        **scaling,
    ).bind(
        str(config.artifacts_dir()),
        config.batch_max_size,
        config.batch_wait_ms,
        config.max_models_per_replica,
        config.max_image_pixels,
    )
    return ingress.bind(pool, config.model_dump(mode="json"))


def deploy_config(config: HubConfig, routing: Optional[RoutingConfig] = None) -> ServeDeploySchema:
    """The hub as a Serve config, as ``serve deploy`` would send it; the rules ride in Ingress's user_config."""
    ingress: dict[str, Any] = {"name": "Ingress"}
    if routing is not None:
        ingress["user_config"] = {"routing": routing.model_dump(mode="json")}
    return ServeDeploySchema.model_validate(
        {
            "http_options": config.http_options(),
            "grpc_options": grpc_options(config),
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
        http_options=config.http_options(),
        grpc_options=grpc_options(config),
    )
    deploy(config, routing)
    logger.info("hub: HTTP on %s:%d, gRPC on %d", config.http_host, config.http_port, config.grpc_port)


def deploy(config: HubConfig, routing: Optional[RoutingConfig] = None, timeout_s: int = 300) -> None:
    """Apply the app's config, as ``serve deploy`` does. Only the rules changed: Serve calls the running
    ingress's ``reconfigure`` (no restart). Waits until the application is RUNNING."""
    client = _get_global_client()
    if client is None:
        raise HubError("Serve is not running here: start the hub first (start_hub)")
    client.deploy_apps(deploy_config(config, routing))
    client._wait_for_application_running(config.app_name, timeout_s=timeout_s)


def stop_hub() -> None:
    """Serve shuts down gracefully (replicas finish what they hold), then Ray.

    What Ray's driver prints meanwhile goes to this module's log instead of the caller's stdout: Serve's
    controller ends its own graceful shutdown by dying, and Ray reports that as a failed task
    ("(raylet) Task ServeController.graceful_shutdown failed ..."), which would land in the middle, or after
    the end, of what the caller prints. Ray joins its printing thread before ``ray.shutdown`` returns."""
    with contextlib.redirect_stdout(_LogLines(logging.INFO)):
        serve.shutdown()
        ray.shutdown()


class _LogLines(io.TextIOBase):
    """A text stream whose lines become log records."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self._level = level

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        for line in _ANSI.sub("", text).splitlines():
            if line.strip():
                logger.log(self._level, "ray: %s", line.strip())
        return len(text)
