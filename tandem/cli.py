"""The ``tandem`` command: one entry point that dispatches to each side's command module.

    tandem edge ...      the device (``edge.cli``): run, check-config, calibrate, replay
    tandem hub ...       the hub (``cloud.cli``): run, models, routing check
    tandem demo [--json] hub + broker + one device on the demo stream (``tandem.demo``)

A device installs only ``edge``, ``common`` and ``protocol`` with their packages: without the
hub's (the cloud extra), ``tandem hub`` and ``tandem demo`` are simply not offered.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from common.errors import TandemError
from edge.cli import add_commands as add_edge_commands

logger = logging.getLogger(__name__)


def _demo(args: argparse.Namespace) -> int:
    from tandem.demo import run_demo

    return run_demo(args)


def _add_hub_commands(commands: argparse._SubParsersAction) -> None:
    """``tandem hub`` and ``tandem demo``, where the hub's packages are installed."""
    try:
        from cloud.cli import add_commands
    except ImportError as exc:  # a device without the cloud extra: no hub commands to offer
        logger.debug("tandem hub and tandem demo are not available here: %s", exc)
        return
    add_commands(commands)
    _add_demo_command(commands)


def _add_demo_command(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="run hub, broker and one device on the demo digits stream")
    demo.add_argument(
        "--workload",
        choices=["digits", "detection"],
        default="digits",
        help="digits: one camera, a digit classifier; detection: two cameras on one device, a light object "
        "detector there and a strong one on the hub, crops escalated as JPEG",
    )
    demo.add_argument("--models", type=Path, default=Path(".tandem/demo"), help="output of python -m tools.demo_models")
    demo.add_argument(
        "--detect-models",
        type=Path,
        default=Path(".tandem/detect"),
        help="detection: output of python -m tools.detection_models",
    )
    demo.add_argument("--json", action="store_true", help="end with the summary as one JSON object on the last line")
    demo.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="the judge's confidence threshold, or for detection its box threshold (default: calibrated)",
    )
    demo.add_argument(
        "--target-escalation",
        type=float,
        default=0.15,
        help="without --threshold: calibrate on the calibration stream for this share of escalations",
    )
    demo.add_argument("--deadline-ms", type=int, default=10_000, help="how long a frame waits for the hub")
    demo.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    pace = demo.add_mutually_exclusive_group()
    pace.add_argument(
        "--fps", type=float, default=None, help="play the stream at this rate (default: the video's own, like a camera)"
    )
    pace.add_argument(
        "--fast",
        action="store_true",
        help="play the stream as fast as the device can (round trips then include queueing)",
    )
    demo.add_argument(
        "--orchestrator",
        choices=["off", "observe", "approve", "auto"],
        default="auto",
        help="the hub's orchestrator mode; its decisions are printed as they happen",
    )
    demo.add_argument(
        "--strong-capacity",
        type=float,
        default=2.0,
        help="calls/s the orchestrator is told the strong model takes: below the demo's escalation rate, so its "
        "rules lower the device's threshold while the stream plays (100: nothing to do, and nothing done)",
    )
    demo.add_argument(
        "--broker",
        choices=["auto", "mosquitto", "embedded"],
        default="auto",
        help="auto: Mosquitto when installed, else the embedded amqtt broker",
    )
    demo.add_argument(
        "--secure",
        action="store_true",
        help="TLS everywhere: a fleet CA for this run, the device enrolled through the admin API, Mosquitto's "
        "TLS listeners with per-device ACLs, gRPC with client certificates",
    )
    demo.add_argument(
        "--stay",
        action="store_true",
        help="after the stream ends, keep the hub, the device and the fleet console up until Ctrl-C",
    )
    demo.set_defaults(handler=_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem", description="Edge-cloud inference: devices answer, the hub decides the hard cases."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True)
    add_edge_commands(commands)
    _add_hub_commands(commands)

    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except TandemError as exc:
        print(f"tandem: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
