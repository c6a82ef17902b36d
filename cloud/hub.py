"""The hub without Ray: one object that builds every part from ``HubConfig`` and hands each its collaborators.

    Hub(config, pool)   no I/O: nothing is opened or started
    hub.start()         (on a running event loop) stores, MQTT clients, delivery, the escalation service,
                        recovery of unfinished traces, and the background loops (resends, registry reports,
                        pruning, orphan reruns)
    await hub.close()   the loops, the MQTT clients, the model backends, the stores; in that order

The Ray Serve ingress (``cloud.deployments.ingress``) holds one, as do tests and anything else that wants
the hub in a process of its own. Where models run is the ``ModelPool`` it is given: the Serve deployment
(``cloud.deployments.pool``), or ``LocalPool`` here, which runs them in this process.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
from fastapi import FastAPI

from cloud.api import build_http_app
from cloud.api.fleet import FleetAccess
from cloud.config import HubConfig, SecurityConfig
from cloud.console.alerts import AlertWatch
from cloud.console.feed import FleetFeed
from cloud.dispatch.callbacks import HttpCallbacks
from cloud.dispatch.delivery import Delivery
from cloud.dispatch.mqtt import MqttDispatcher
from cloud.errors import HubError, OrchestratorError, PkiError
from cloud.escalations import EscalationService
from cloud.fleet.bundles import BundleStore
from cloud.fleet.keys import KeyRing
from cloud.fleet.rollout_store import RolloutStore
from cloud.fleet.rollouts import RolloutService
from cloud.fleet.service import FleetService
from cloud.fleet.store import Device, FleetStore
from cloud.hub_orchestrator import build_orchestrator
from cloud.ingress import mqtt as mqtt_ingress
from cloud.ingress import v2
from cloud.ingress.device_tls import DeviceGateway
from cloud.metrics import HubMetrics
from cloud.models import CloudModel, load_model
from cloud.orchestrator.actuator import PoolScaler
from cloud.orchestrator.config import Mode
from cloud.orchestrator.loop import Orchestrator
from cloud.orchestrator.store import OrchestratorStore
from cloud.registry import SqliteRegistry
from cloud.routing import ModelAnswer, ModelBackend, Router, RoutingConfig, parse_routing, serving
from cloud.routing.backends import build_backends, close_backends
from cloud.routing.config import resolve_registry
from cloud.routing.steps import so_far
from cloud.security.broker import BrokerControl
from cloud.security.enrolment import Identities
from cloud.security.pki import FleetCA
from cloud.tenants import Tenancy
from cloud.traces.store import TraceStore
from protocol.bundle import BundleEnvelope
from protocol.codec import Encoding
from protocol.messages import EscalationRequest, Prediction
from protocol.topics import DeviceTopic

logger = logging.getLogger(__name__)

REGISTRY_REPORT_S = 10.0  # how often the hub writes serving versions' health and replicas to the registry
PRELOAD_AGAIN_S = 60.0  # a model preloaded for a new device is not preloaded again for another this soon
PRUNE_S = 3600.0  # how often the trace store drops traces past trace_retention_s
ORPHAN_CHECK_S = 5.0  # how often the hub looks for accepted traces whose run died, or whose replica did
LEASE_S = 20.0  # a replica's claim on a trace it runs, renewed every LEASE_S / 4 while the run lasts
CRL_REFRESH_S = 86400.0  # how often a secured hub writes a new CRL (each is valid 7 days) and reloads the broker
CLOSE_RUNS_S = 10.0  # how long close() lets running traces finish; the rest run again at the next start


class ModelPool(abc.ABC):
    """Where the hub's own ONNX models run, each known by its artifact's sha256."""

    @abc.abstractmethod
    def backend(self, sha256: str) -> ModelBackend:
        """The router's view of one model in the pool."""

    @abc.abstractmethod
    def tensor_models(self, artifacts: dict[str, str]) -> v2.TensorModels:
        """The v2 protocol's view of the pool: ``artifacts`` maps each model name to its sha256."""

    async def loads(self) -> int:
        """How many model loads the pool has done (one replica's count, where there are several)."""
        return 0

    async def preload(self, sha256: str) -> None:  # noqa: B027 - a pool that loads on first use needs nothing
        """Load a model now, before the first request needs it (a new device's routes)."""

    def scaler(self) -> Optional[PoolScaler]:
        """Its replica bounds, where the pool can scale (Ray Serve's autoscaling); None here."""
        return None


class LocalPool(ModelPool):
    """The models in this process, loaded on first use from the registry's artifacts.

    Batching without a timer: a request that finds its model idle runs at once; those that arrive while a run
    is in progress wait and go together in the next run, up to ``max_batch_size`` (the Serve pool's rule for a
    lone request, and its batches whenever there is a queue)."""

    def __init__(self, artifacts_dir: Path, max_image_pixels: int, max_batch_size: int = 1) -> None:
        self._dir = artifacts_dir
        self._max_pixels = max_image_pixels
        self._max_batch = max_batch_size
        self._models: dict[str, CloudModel] = {}
        self._batchers: dict[str, _Batcher] = {}

    def model(self, sha256: str) -> CloudModel:
        if sha256 not in self._models:
            logger.info("local pool: loading %s", sha256[:12])
            self._models[sha256] = load_model(self._dir / sha256, self._max_pixels)
        return self._models[sha256]

    def batcher(self, sha256: str) -> _Batcher:
        if sha256 not in self._batchers:
            self._batchers[sha256] = _Batcher(self, sha256, self._max_batch)
        return self._batchers[sha256]

    def backend(self, sha256: str) -> ModelBackend:
        return _LocalBackend(self, sha256)

    def tensor_models(self, artifacts: dict[str, str]) -> v2.TensorModels:
        return _LocalTensorModels(self, artifacts)

    async def loads(self) -> int:
        return len(self._models)

    async def preload(self, sha256: str) -> None:
        await asyncio.to_thread(self.model, sha256)


class _Batcher:
    """One model's queue (the event loop's): requests that arrive during a run go together in the next."""

    def __init__(self, pool: LocalPool, sha256: str, max_size: int) -> None:
        self._pool = pool
        self._sha256 = sha256
        self._max = max_size
        self._queue: list[tuple[EscalationRequest, asyncio.Future[tuple[Prediction | Exception, int]]]] = []
        self._running = False

    async def run(self, request: EscalationRequest) -> tuple[Prediction | Exception, int]:
        """The model's answer for one request, and the size of the batch it ran in."""
        future: asyncio.Future[tuple[Prediction | Exception, int]] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
                try:
                    model = await asyncio.to_thread(self._pool.model, self._sha256)
                    results: list[Prediction | Exception] = await asyncio.to_thread(
                        model.predict_requests, [request for request, _ in batch]
                    )
                except Exception as exc:  # the model failed as a whole (it did not load): each request says so
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result((result, len(batch)))
        finally:
            self._running = False


class _LocalBackend(ModelBackend):
    def __init__(self, pool: LocalPool, sha256: str) -> None:
        self._pool = pool
        self._sha256 = sha256

    async def predict(self, request: EscalationRequest, previous: Optional[Prediction]) -> ModelAnswer:
        answer, batch_size = await self._pool.batcher(self._sha256).run(so_far(request, previous))
        if isinstance(answer, Exception):
            raise answer
        return ModelAnswer(answer, batch_size)


class _LocalTensorModels(v2.TensorModels):
    def __init__(self, pool: LocalPool, artifacts: dict[str, str]) -> None:
        self._pool = pool
        self._artifacts = artifacts

    def names(self) -> list[str]:
        return list(self._artifacts)

    async def spec(self, name: str) -> v2.ModelSpec:
        model = await asyncio.to_thread(self._pool.model, self._artifacts[name])
        return v2.spec_from_onnx(name, model.version, model.session.get_inputs(), model.session.get_outputs())

    async def run(self, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = await asyncio.to_thread(self._pool.model, self._artifacts[name])
        return await asyncio.to_thread(model.run_tensors, inputs)


class Hub:
    def __init__(self, config: HubConfig, pool: ModelPool) -> None:
        self.config = config.absolute()
        self.pool = pool
        self.metrics = HubMetrics()
        shared = self.config.database() is not None
        # The name this replica's claims and MQTT client go by: one hub on SQLite keeps its name across restarts
        # (it takes back what it was running); replicas sharing PostgreSQL each get a new one at each start.
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}" if shared else "hub"
        self.store = TraceStore(self.config.location("traces"), owner=self.replica, lease_s=LEASE_S)
        self.registry = SqliteRegistry(self.config.location("registry"), self.config.artifacts_dir())
        self.fleet_store = FleetStore(self.config.location("fleet"))
        self.rollout_store = RolloutStore(self.config.location("rollouts"))
        self.bundles = BundleStore(self.config.bundles_dir(), self.config.artifacts_dir())
        self.orchestrator_store = OrchestratorStore(self.config.location("orchestrator"))
        # Work done once for all replicas (rollouts, pruning, the orchestrator, the CRL): by the leader.
        self._leader = self.fleet_store.db.leader("hub")
        self._orchestrator: Optional[Orchestrator] = None
        self._fleet: Optional[FleetService] = None
        self._rollouts: Optional[RolloutService] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._artifacts: dict[str, str] = {}  # the rules' ONNX model names -> sha256
        self._tensor_models: v2.TensorModels = pool.tensor_models({})
        self.v2 = v2.V2Service(lambda: self._tensor_models)
        self.v2_grpc = v2.V2Grpc(self.v2)
        self._service: Optional[EscalationService] = None
        self._dispatcher: Optional[MqttDispatcher] = None
        self._mqtt_ingress: Optional[mqtt_ingress.MqttEscalations] = None
        self._tasks: list[asyncio.Task[None]] = []
        self._identities: Optional[Identities] = None
        self._gateway: Optional[DeviceGateway] = None
        self._preloaded: dict[str, float] = {}  # model sha256 -> when a new device last had it preloaded
        self._preload_lock = threading.Lock()
        self.feed = FleetFeed(lambda: self.fleet)
        self.alerts = AlertWatch(
            self.fleet_store, lambda: self.fleet, lambda: self.rollouts, self.config.console.alerts, self.metrics
        )

    @property
    def service(self) -> EscalationService:
        if self._service is None:
            raise HubError("the hub is not started")
        return self._service

    @property
    def fleet(self) -> FleetService:
        if self._fleet is None:
            raise HubError("the hub is not started")
        return self._fleet

    @property
    def rollouts(self) -> RolloutService:
        if self._rollouts is None:
            raise HubError("the hub is not started")
        return self._rollouts

    @property
    def orchestrator(self) -> Orchestrator:
        if self._orchestrator is None:
            raise OrchestratorError("the orchestrator is off (orchestrator.mode: off)")
        return self._orchestrator

    def keys(self) -> KeyRing:
        """The bundle-signing keys (KeysError until ``tandem hub keys init`` made them)."""
        return KeyRing.load(self.config.keys_dir())

    def bundle_for_devices(self, bundle_id: str) -> BundleEnvelope:
        """A bundle as devices get it: with the URL its files are fetched from."""
        url = f"{self.config.public_url()}/v1/bundles/{bundle_id}/files"
        return self.bundles.get(bundle_id).model_copy(update={"base_url": url})

    def start(self) -> None:
        """Open the stores, connect to the broker, recover unfinished traces, start the background loops.
        Call it on the event loop the hub will run on."""
        hub = self.config
        loop = self._loop = asyncio.get_running_loop()
        self.store.open()
        self.registry.open()
        self.fleet_store.open()
        self.rollout_store.open()
        self.metrics.watch_unacked(self.store.count_unacked)
        self._dispatcher = MqttDispatcher(
            hub.mqtt_host,
            hub.mqtt_port,
            hub.mqtt_username,
            hub.mqtt_password,
            on_delivered=lambda trace_id: delivery.delivered(trace_id),  # noqa: PLW0108 - built below
            metrics=self.metrics,
            tls=hub.mqtt_tls(),
        )
        callbacks = (
            HttpCallbacks(
                hub.delivery.callbacks,
                on_acked=lambda trace_id, device_id: delivery.acknowledged(trace_id, device_id, "callback"),
                metrics=self.metrics,
            )
            if hub.delivery.callbacks
            else None
        )
        delivery = Delivery(
            self.store, self._dispatcher, hub.delivery, self.metrics, Encoding(hub.result_encoding), callbacks
        )
        dispatcher = self._dispatcher
        self._fleet = FleetService(
            self.fleet_store,
            hub.fleet,
            lambda device_id, payload: dispatcher.publish_state(str(DeviceTopic.desired(device_id)), payload),
            self.metrics,
            bundle=self.bundle_for_devices,
            on_new_device=self._preload_for,
            on_update=lambda device_id, update: self.rollouts.on_update(device_id, update),  # noqa: PLW0108 - built below
            on_sleep=self._device_sleeps,
        )
        self._rollouts = RolloutService(self.rollout_store, self._fleet, self.metrics)
        self._fleet.start()
        self._service = EscalationService(
            self.store,
            self._router(hub.routing()),
            delivery,
            self.metrics,
            limits=hub.input_limits(),
            on_escalation=self._fleet.on_escalation,
            tenancy=Tenancy(hub.tenants, hub.quotas, self.store.count_devices),
            max_concurrent_runs=hub.quotas.max_concurrent_runs,
        )
        self._dispatcher.start()
        self._mqtt_ingress = mqtt_ingress.MqttEscalations(
            self._service,
            self._fleet,
            loop,
            hub.mqtt_host,
            hub.mqtt_port,
            hub.mqtt_username,
            hub.mqtt_password,
            client_id=f"{hub.mqtt_username}-escalations" + ("" if self.replica == "hub" else f"-{self.replica}"),
            tls=hub.mqtt_tls(),
            persistent=self.replica == "hub",
        )
        self._mqtt_ingress.start()
        if hub.security is not None:
            self._identities, self._gateway = self._secure(hub.security)
            self._tasks.append(loop.create_task(self._open_gateway(self._gateway), name="hub-device-gateway"))
            self._tasks.append(
                loop.create_task(self._every(CRL_REFRESH_S, self._led(self._refresh_crl)), name="hub-crl")
            )
        delivery.listen_for_results(loop)
        self._service.recover()
        self._orchestrator = self._build_orchestrator()
        if not hub.fleet.operators:
            logger.warning("admin API: no operators configured (fleet.operators): it is open, changes are anonymous")
        self._tasks += [
            # Sends what is due: results not acknowledged in time, and any a restart left unsent.
            loop.create_task(delivery.run(), name="hub-resends"),
            loop.create_task(self._every(REGISTRY_REPORT_S, self._report_to_registry), name="hub-registry-report"),
            loop.create_task(self._every(PRUNE_S, self._led(self._prune_traces)), name="hub-prune"),
            loop.create_task(self._every(hub.fleet.check_every_s, self._check_fleet), name="hub-fleet-check"),
            loop.create_task(
                self._every(ORPHAN_CHECK_S, self._rerun_orphans, first_after_s=ORPHAN_CHECK_S), name="hub-orphan-reruns"
            ),
            loop.create_task(self._every(LEASE_S / 4, self._renew_claims), name="hub-claims"),
            loop.create_task(
                self._every(hub.console.check_every_s, self._led(self._console_check)), name="hub-console-check"
            ),
        ]
        if self._orchestrator is not None:
            self._tasks.append(loop.create_task(self._orchestrate(self._orchestrator), name="hub-orchestrator"))

    def _secure(self, security: SecurityConfig) -> tuple[Identities, DeviceGateway]:
        """The fleet CA's identity service (and the broker it keeps in step), and the devices' TLS gRPC port."""
        ca = FleetCA(security.pki_path)
        broker = None
        if security.broker_acl_path is not None:
            broker = BrokerControl(
                security.broker_acl_path,
                security.broker_reload_command,
                self.config.mqtt_host,
                self.config.mqtt_port,
                ca.hub_files(),
            )
        fleet_store = self.fleet_store
        identities = Identities(
            ca,
            broker,
            self.metrics,
            lambda who, action, target, detail: fleet_store.audit(time.time(), who, action, target, detail),
            security.enrolment_ttl_s,
        )
        gateway = DeviceGateway(self.service, security.grpc_port, ca.server_files(), ca.crl_path, security.grpc_host)
        return identities, gateway

    async def _refresh_crl(self) -> None:
        await asyncio.to_thread(self.identities().refresh_crl)

    @staticmethod
    async def _open_gateway(gateway: DeviceGateway) -> None:
        try:
            await gateway.start()
        except Exception:  # the hub keeps serving MQTT and HTTP; devices on gRPC retry and say why
            logger.exception("device gRPC could not start: devices cannot escalate over gRPC")

    def identities(self) -> Identities:
        if self._identities is None:
            raise PkiError("device identities need a secured hub (security.pki_path in the hub's config)")
        return self._identities

    def _build_orchestrator(self) -> Optional[Orchestrator]:
        config = self.config.orchestrator
        if config.mode is Mode.OFF:
            return None
        unknown = config.unknown_models(set(self.service.router.config.models))
        if unknown:
            raise HubError(f"orchestrator.watch names models the routing rules do not have: {unknown}")
        self.orchestrator_store.open()
        return build_orchestrator(
            config,
            lambda: self.service.router,
            self.service.use,
            lambda: self.fleet,
            lambda: self.rollouts,
            self.pool.scaler(),
            self.orchestrator_store,
            self.metrics,
        )

    async def _orchestrate(self, orchestrator: Orchestrator) -> None:
        """Load the language model (in a thread: the hub serves meanwhile), then a round every every_s."""
        await orchestrator.start()
        await self._every(self.config.orchestrator.every_s, self._orchestrator_round)

    async def _orchestrator_round(self) -> None:
        if await asyncio.to_thread(self._leader.held):
            await self.orchestrator.tick()

    def _led(self, step: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """``step``, on the leader only (every replica asks each round: a leader that died is replaced)."""

        async def led() -> None:
            if await asyncio.to_thread(self._leader.held):
                await step()

        led.__name__ = step.__name__
        return led

    async def close(self) -> None:
        """Stop the loops and the intake (MQTT ingress), let running traces finish and send their results
        (CLOSE_RUNS_S; the rest are cancelled and run again at the next start, or by another replica once their
        lease lapses), then close the model backends, the result dispatcher and the stores. Safe to call twice."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._gateway is not None:
            await self._gateway.stop()
            self._gateway = None
        if self._mqtt_ingress is not None:
            await asyncio.to_thread(self._mqtt_ingress.close)
            self._mqtt_ingress = None
        if self._service is not None:  # no new escalations come in; the running ones finish and send
            await self._service.stop(CLOSE_RUNS_S)
            await close_backends(self._service.router.backends)
        if self._dispatcher is not None:
            await asyncio.to_thread(self._dispatcher.close)
            self._dispatcher = None
        if self._orchestrator is not None:
            await self._orchestrator.close()
        self._leader.release()
        self.store.close()
        self.registry.close()
        self.fleet_store.close()
        self.rollout_store.close()
        self.orchestrator_store.close()

    def _router(self, routing: RoutingConfig) -> Router:
        """Rules -> a router whose own models are the pool's, by each model file's sha256. Registry versions
        the rules name are resolved to their artifacts here (RoutingError if one cannot be served)."""
        routing = resolve_registry(routing, self.registry)
        artifacts = {
            name: self.registry.put_artifact(entry.model_file.read_bytes())
            for name, entry in routing.onnx_models().items()
        }
        self._tensor_models = self.pool.tensor_models(artifacts)
        self._artifacts = artifacts
        return Router(routing, build_backends(routing, lambda name, _entry: self.pool.backend(artifacts[name])))

    async def reconfigure(self, routing: dict[str, Any]) -> None:
        """New routing rules in place of the old (no restart). Rules that fail to validate are logged and the
        running ones stay; ``tandem hub run`` and ``tandem hub routing check`` validate before they deploy,
        so this is the last line."""
        try:
            router = self._router(parse_routing(routing, "user_config.routing"))
        except (HubError, OSError) as exc:
            logger.error("routing: new rules refused, the old ones stay: %s", exc)
            return
        old = self.service.router
        self.service.use(router)
        logger.info("routing: %d rules, %d models in use", len(router.config.routes), len(router.config.models))
        serving.report(self.registry, router.config, router.circuits, previous=old.config)
        await close_backends(old.backends)

    def http_app(self) -> FastAPI:
        return build_http_app(
            self.store,
            self.registry,
            self.v2,
            self.status,
            self.metrics,
            max_body_bytes=self.config.max_request_bytes,
            fleet=FleetAccess(
                lambda: self.fleet,
                lambda: self.rollouts,
                self.bundles,
                self.keys,
                self.bundle_for_devices,
                lambda sha256: {m.owner for m in self.registry.query() if m.artifact_sha256 == sha256 and m.owner},
            ),
            orchestrator=(lambda: self.orchestrator, lambda: self._loop),
            console=self.feed if self.config.console.enabled else None,
            orchestrator_on=self.config.orchestrator.mode is not Mode.OFF,
            https=self.config.security is not None,
            operators=self.config.fleet.operators,
            tenants=self.config.tenants,
            quotas=self.config.quotas,
            identities=self.identities if self.config.security is not None else None,
        )

    async def status(self) -> dict[str, Any]:
        """The rules in use, the cache, each replica's circuit, and the pool's model loads."""
        router, cache = self.service.router, self.service.cache
        return {
            "pid": os.getpid(),  # the same pid after a reload: reconfigured in place, not restarted
            "digest": router.config.digest(),
            "routes": [r.name for r in router.config.routes],
            "models": sorted(router.config.models),
            "cache": {"entries": len(cache), "hits": cache.hits, "misses": cache.misses},
            "replicas": {
                model: {key: state.value for key, state in router.circuits(model).items()} for model in router.backends
            },
            "pool_loads": await self.pool.loads(),
        }

    # -- background loops ------------------------------------------------------------------------------------

    @staticmethod
    async def _every(period_s: float, step: Callable[[], Awaitable[None]], first_after_s: float = 0.0) -> None:
        """Run ``step`` every period_s until cancelled; an error is logged and the next round tries again."""
        await asyncio.sleep(first_after_s)
        while True:
            try:
                await step()
            except Exception:  # a bug or a store error (a full disk) must not end the loop for good
                logger.exception("hub: %s failed; trying again in %.0f s", step.__name__, period_s)
            await asyncio.sleep(period_s)

    async def _report_to_registry(self) -> None:
        """The registry versions in use, with their replicas and health."""
        router = self.service.router
        serving.report(self.registry, router.config, router.circuits)

    async def _renew_claims(self) -> None:
        self.service.renew_claims()

    async def _rerun_orphans(self) -> None:
        """An accepted trace with no result and no run in progress (its run died) runs again. One more line of
        defence: nothing the hub accepted may stay unanswered."""
        self.service.recover()

    async def _check_fleet(self) -> None:
        """Every replica writes the escalations it saw (``FleetService.check``); the leader moves rollouts."""
        await asyncio.to_thread(self.fleet.check)
        if await asyncio.to_thread(self._leader.held):
            await asyncio.to_thread(self.rollouts.check)

    def _device_sleeps(self, device_id: str) -> None:
        """A device went to SLEEP (the fleet check's thread): its cached answers go, on the event loop where the
        cache lives. Its models need no telling: unused, they are the pool's least recently used, evicted first."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._release_cache, device_id)

    def _release_cache(self, device_id: str) -> None:
        released = self.service.cache.release(device_id)
        if released:
            logger.info("fleet: %s sleeps; %d cached answers released", device_id, released)

    def _preload_for(self, device: Device) -> None:
        """A new device (session INIT): load the models its routes name, so its first escalation does not wait
        for a model load. Called from paho's thread or the event loop; the loads run on the event loop."""
        if not self.config.fleet.preload or self._loop is None or self._service is None:
            return
        names = self._service.router.models_for(device.device_id, device.group)
        now = time.monotonic()
        with self._preload_lock:  # many new devices at once (a fleet after a hub restart): one load per model
            wanted = sorted(
                sha
                for sha in {self._artifacts[n] for n in names if n in self._artifacts}
                if now - self._preloaded.get(sha, float("-inf")) >= PRELOAD_AGAIN_S
            )
            self._preloaded.update(dict.fromkeys(wanted, now))
        if wanted:
            logger.info("fleet: preloading %d models for %s", len(wanted), device.device_id)
            asyncio.run_coroutine_threadsafe(self._preload(wanted), self._loop)

    async def _preload(self, sha256s: list[str]) -> None:
        for sha256 in sha256s:
            try:
                await self.pool.preload(sha256)
            except Exception as exc:  # the first request loads it instead, and says why if it cannot
                logger.warning("fleet: preloading %s failed: %s", sha256[:12], exc)
                with self._preload_lock:
                    self._preloaded.pop(sha256, None)  # the next new device tries again

    async def _console_check(self) -> None:
        """The alerts (raised, cleared, sent to the webhook); images past console.trace_images_kept forgotten, and
        unlabelled hard examples past console.hard_examples_kept deleted."""
        console = self.config.console
        await asyncio.to_thread(self.alerts.check)
        await asyncio.to_thread(self.store.forget_requests, console.trace_images_kept)
        await asyncio.to_thread(self.store.trim_hard_examples, console.hard_examples_kept)

    async def _prune_traces(self) -> None:
        """Finished traces past the retention are deleted (never one whose result is still being sent)."""
        retention_s = self.config.trace_retention_s
        deleted = self.store.prune(time.time() - retention_s)
        if deleted:
            logger.info("trace store: deleted %d traces older than %.0f s", deleted, retention_s)
