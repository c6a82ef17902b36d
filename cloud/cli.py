"""``tandem hub ...``: the hub's commands (the ``tandem`` command itself is ``tandem.cli``).

    tandem hub run [...]                 run the hub on this machine until SIGINT or SIGTERM
    tandem hub models ...                the model registry: register, list, show, update, retire
    tandem hub routing check FILE        validate routing rules before deploying them
    tandem hub devices|settings|audit    the fleet: inventory, settings by scope, who changed what
    tandem hub keys|bundles|rollout      signing keys, signed model bundles, rollouts in waves

``hub run`` takes its settings from ``--config FILE`` (YAML, the fields of ``HubConfig``),
overridden by any flag given; by default HTTP on port 8000 and gRPC on 9000. Ray is imported
only when the hub starts (``cloud.app``), so ``tandem --help`` and ``hub models`` stay quick.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cloud.api.access import token_sha256
from cloud.config import HubConfig, Role, load_hub_config
from cloud.errors import RoutingError
from cloud.fleet.cli import add_parsers as add_fleet_parsers
from cloud.fleet.rollout_cli import add_parsers as add_rollout_parsers
from cloud.orchestrator.cli import add_parsers as add_orchestrator_parsers
from cloud.orchestrator.config import Mode
from cloud.registry import SqliteRegistry
from cloud.registry.cli import add_parser as add_models_parser
from cloud.routing import load_routing
from cloud.routing.config import resolve_registry
from cloud.security.cli import add_pki_parsers
from common.config import describe_errors
from common.errors import ConfigError

logger = logging.getLogger(__name__)


FLAGS = {
    "model": "model_path",
    "routing": "routing_path",
    "http_port": "http_port",
    "grpc_port": "grpc_port",
    "mqtt_host": "mqtt_host",
    "mqtt_port": "mqtt_port",
    "store": "trace_store_path",
    "result_encoding": "result_encoding",
    "database_url": "database_url",
    "ingress_replicas": "ingress_replicas",
    "model_pool": "model_pool",
}


def hub_config(args: argparse.Namespace) -> HubConfig:
    """The config file's settings (paths relative to it), then the flags given, then $RAY_ADDRESS."""
    settings: dict[str, Any] = {}
    if args.config is not None:
        settings = load_hub_config(args.config)
    settings.update({field: getattr(args, flag) for flag, field in FLAGS.items() if getattr(args, flag) is not None})
    if os.environ.get("RAY_ADDRESS"):
        settings["ray_address"] = os.environ["RAY_ADDRESS"]
    try:
        return HubConfig.model_validate(settings)
    except ValidationError as exc:
        raise ConfigError(f"{args.config or 'hub settings'}: {describe_errors(exc)}") from exc


def hub_run(args: argparse.Namespace) -> int:
    from cloud.app import start_hub, stop_hub

    config = hub_config(args)
    routing = config.routing()  # a bad rules file stops the start here, with every problem named
    unknown = config.orchestrator.unknown_models(set(routing.models))
    if config.orchestrator.mode is not Mode.OFF and unknown:
        raise ConfigError(f"orchestrator.watch names models the routing rules do not have: {unknown}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    start_hub(config, routing if config.routing_path else None)
    logger.info("hub ready")
    print(f"hub ready: gRPC :{config.grpc_port}, HTTP :{config.http_port}", flush=True)
    try:
        if config.routing_path is None:
            stop.wait()
        else:
            watch_routing(config, config.routing_path, stop)
    finally:
        stop_hub()
    return 0


def watch_routing(config: HubConfig, path: Path, stop: threading.Event, poll_s: float = 1.0) -> None:
    """Redeploy the rules whenever the file changes (Serve reconfigures the ingress in place).

    A file that does not validate is logged and skipped: the hub keeps the rules it has."""
    from cloud.app import deploy

    seen = _mtime(path)
    while not stop.wait(poll_s):
        now = _mtime(path)
        if now == seen:
            continue
        seen = now
        try:
            routing = load_routing(path)
        except RoutingError as exc:
            logger.error("routing: %s changed but is refused; the old rules stay: %s", path, exc)
            continue
        deploy(config, routing)
        logger.info("routing: reloaded %s (%d routes)", path, len(routing.routes))
        print(f"routing reloaded: {routing.digest()}", flush=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def routing_check(args: argparse.Namespace) -> int:
    """``tandem hub routing check FILE``: 0 and a summary when the rules are usable, 2 and every problem if not."""
    try:
        routing = load_routing(args.file)
    except RoutingError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    missing = [f"{name}: {m.path}" for name, m in routing.onnx_models().items() if m.path and not m.path.is_file()]
    if missing:
        print("refused: model files not found: " + "; ".join(missing), file=sys.stderr)
        return 2
    from_registry = [m.registry for m in routing.onnx_models().values() if m.registry]
    if from_registry and args.registry is None:
        print(f"not checked (no --registry given): {', '.join(from_registry)}")
    elif from_registry:
        registry = SqliteRegistry(args.registry, args.artifacts or args.registry.parent / "artifacts")
        registry.open()
        try:
            resolve_registry(routing, registry)
        except RoutingError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 2
        finally:
            registry.close()
    for route in routing.routes:
        print(f"{route.name}: {route.strategy.value} -> {', '.join(s.model for s in route.steps)}")
    print(f"ok: {len(routing.routes)} routes, {len(routing.models)} models, digest {routing.digest()}")
    return 0


def new_token(args: argparse.Namespace) -> int:
    """A new operator token, and the entry for the hub's config that holds its sha256 (the token itself is not
    stored anywhere: give it to the operator)."""
    token = "tandem_" + secrets.token_urlsafe(32)
    entry = {
        "token_sha256": token_sha256(token),
        "role": args.role,
        "groups": args.groups or [],
        **({"tenant": args.tenant} if args.tenant else {}),
    }
    print(f"token (give it to {args.name}; the hub keeps only its sha256): {token}")
    print("add under fleet.operators in the hub's config:")
    print(yaml.safe_dump({args.name: entry}, default_flow_style=None, sort_keys=False).rstrip())
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """``tandem hub`` and its subcommands, each with its handler."""
    hub = commands.add_parser("hub", help="the cloud hub").add_subparsers(dest="hub_command", required=True)
    run = hub.add_parser("run", help="run the hub on this machine until interrupted")
    run.add_argument("--config", type=Path, help="YAML of the hub's settings (deploy/cloud/hub.example.yaml)")
    run.add_argument("--model", type=Path, help="one ONNX model for every escalation (without --routing)")
    run.add_argument("--routing", type=Path, help="routing rules (deploy/cloud/routing.yaml), reloaded on change")
    run.add_argument("--http-port", type=int, help="HTTP port (default 8000)")
    run.add_argument("--grpc-port", type=int, help="gRPC port (default 9000)")
    run.add_argument("--mqtt-host", help="the MQTT broker's host (default 127.0.0.1)")
    run.add_argument("--mqtt-port", type=int, help="the MQTT broker's port (default 1883)")
    run.add_argument("--store", type=Path, help="SQLite file of the hub's traces (default tandem-hub.db)")
    run.add_argument("--result-encoding", choices=["protobuf", "json"])
    run.add_argument("--database-url", help="PostgreSQL for every store instead of SQLite files (postgresql://...)")
    run.add_argument("--ingress-replicas", type=int, help="Ingress replicas (more than one needs --database-url)")
    run.add_argument(
        "--model-pool", choices=["serve", "ingress"], help="models in a ModelPool deployment, or in the Ingress"
    )
    run.set_defaults(handler=hub_run)
    check = hub.add_parser("routing", help="routing rules").add_subparsers(dest="routing_command", required=True)
    check_cmd = check.add_parser("check", help="validate a routing file; print its routes, or every problem")
    check_cmd.add_argument("file", type=Path)
    check_cmd.add_argument(
        "--registry", type=Path, help="the hub's registry file: check that each NAME@VERSION the rules name is servable"
    )
    check_cmd.add_argument("--artifacts", type=Path, help="the registry's artifacts (default: artifacts/ beside it)")
    check_cmd.set_defaults(handler=routing_check)
    token = hub.add_parser("token", help="a new operator token and its entry for fleet.operators (role, groups)")
    token.add_argument("name", help="the operator's name, recorded with each of their changes")
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--groups", nargs="*", help="device groups they may change (default: all, and the hub)")
    token.add_argument("--tenant", help="the tenant they work for (see tenants in the hub's config)")
    token.set_defaults(handler=new_token)
    add_models_parser(hub)
    add_fleet_parsers(hub)
    add_rollout_parsers(hub)
    add_orchestrator_parsers(hub)
    add_pki_parsers(hub)
