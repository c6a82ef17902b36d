"""``tandem hub run``: the hub on one machine, until SIGINT or SIGTERM.

Settings come from ``--config FILE`` (YAML, the fields of ``HubConfig``), overridden by
any flag given; by default HTTP on port 8000 and gRPC on 9000.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from typing import Any

from pydantic import ValidationError

from cloud.app import start_hub, stop_hub
from cloud.config import HubConfig, load_hub_config
from edge.config import describe_errors
from edge.errors import ConfigError

logger = logging.getLogger(__name__)


FLAGS = {
    "model": "model_path",
    "http_port": "http_port",
    "grpc_port": "grpc_port",
    "mqtt_host": "mqtt_host",
    "mqtt_port": "mqtt_port",
    "store": "trace_store_path",
    "result_encoding": "result_encoding",
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
    config = hub_config(args)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    start_hub(config)
    logger.info("hub ready")
    print(f"hub ready: gRPC :{config.grpc_port}, HTTP :{config.http_port}", flush=True)
    try:
        stop.wait()
    finally:
        stop_hub()
    return 0
