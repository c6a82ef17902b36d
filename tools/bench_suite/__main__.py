"""``tools/bench <suite>``: run one benchmark suite."""

from __future__ import annotations

import argparse
import logging
import sys

from tools.bench_suite import edge, fleet, hub, orchestrator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/bench")
    suites = parser.add_subparsers(dest="suite", required=True)
    edge_parser = suites.add_parser("edge", help="the device runtime's speed, memory and cascade")
    edge.add_arguments(edge_parser)
    hub_parser = suites.add_parser("hub", help="the hub's round trip and dynamic batching")
    hub.add_arguments(hub_parser)
    orchestrator_parser = suites.add_parser(
        "orchestrator", help="the replay harness: rules vs rules + a language model"
    )
    orchestrator.add_arguments(orchestrator_parser)
    fleet_parser = suites.add_parser("fleet", help="a simulated fleet of N devices against one hub")
    fleet.add_arguments(fleet_parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return {"edge": edge.run, "hub": hub.run, "orchestrator": orchestrator.run, "fleet": fleet.run}[args.suite](args)


if __name__ == "__main__":
    raise SystemExit(main())
