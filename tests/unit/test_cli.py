"""The ``tandem`` command: every subcommand reaches its own handler, and the device's commands stand alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cloud import cli as hub_cli
from cloud.registry import cli as registry_cli
from edge import cli as edge_cli
from tandem import cli as tandem_cli

COMMANDS = [
    (["edge", "run", "--config", "x.yaml"], edge_cli._edge_run),
    (["edge", "check-config", "x.yaml"], edge_cli._edge_check),
    (["edge", "calibrate", "--config", "x.yaml", "--target-escalation", "0.1"], edge_cli._edge_calibrate),
    (["edge", "replay", "--config", "x.yaml", "--all"], edge_cli._edge_replay),
    (["hub", "run", "--model", "m.onnx"], hub_cli.hub_run),
    (["hub", "routing", "check", "rules.yaml"], hub_cli.routing_check),
    (["hub", "models", "list"], registry_cli.run),
    (["demo", "--fast"], tandem_cli._demo),
]


@pytest.mark.parametrize(("argv", "handler"), COMMANDS, ids=[" ".join(argv[:2]) for argv, _ in COMMANDS])
def test_each_command_reaches_its_handler(argv, handler):
    assert tandem_cli.build_parser().parse_args(argv).handler is handler


def test_the_device_commands_need_nothing_of_the_hub():
    """With the hub's packages hidden (as on a Jetson, which installs edge, common and protocol only),
    ``tandem`` still offers the device's commands, and only those."""
    hide_cloud = (
        "import sys, importlib.abc\n"
        "class Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('cloud', 'ray', 'fastapi', 'tritonclient', 'amqtt', 'cachetools'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from tandem.cli import build_parser\n"
        "commands = build_parser()._subparsers._group_actions[0].choices\n"
        "print(sorted(commands))\n"
    )
    out = subprocess.run([sys.executable, "-c", hide_cloud], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['edge']"
