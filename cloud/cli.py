"""``tandem hub run``: the hub on one machine, until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from cloud.app import start_hub, stop_hub
from cloud.config import HubConfig

logger = logging.getLogger(__name__)


def hub_run(args: argparse.Namespace) -> int:
    config = HubConfig(
        model_path=args.model,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        mqtt_host=args.mqtt_host,
        mqtt_port=args.mqtt_port,
        trace_store_path=args.store,
        result_encoding=args.result_encoding,
        ray_address=os.environ.get("RAY_ADDRESS") or None,
    )
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
