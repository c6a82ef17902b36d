"""Config files as a user might get them wrong: the edge config, the hub's settings and the routing rules load,
or are refused with ConfigError / RoutingError naming the problem."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from cloud.cli import FLAGS, hub_config
from cloud.config import HubConfig
from cloud.errors import RoutingError
from cloud.routing import load_routing
from common.errors import ConfigError
from edge.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [
    (ROOT / "deploy" / "jetson" / "edge.example.yaml").read_text(),
    (ROOT / "deploy" / "cloud" / "hub.example.yaml").read_text(),
    (ROOT / "deploy" / "cloud" / "routing.yaml").read_text(),
]
SCALARS = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=12)


@st.composite
def yaml_texts(draw: st.DrawFn) -> str:
    """A shipped config with one value replaced, a key removed or added; or YAML (or not) of any shape."""
    kind = draw(st.sampled_from(["edit", "text"]))
    if kind == "text":
        return draw(st.text(max_size=200))
    data = yaml.safe_load(draw(st.sampled_from(SEEDS)))
    node = data
    path = []
    while isinstance(node, dict) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node, key=str)))
        path.append(key)
        if not isinstance(node[key], dict):
            break
        node = node[key]
    if isinstance(node, dict):
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        key = path[-1] if path and path[-1] in node else draw(st.sampled_from(sorted(node, key=str) or ["x"]))
        if action == "remove":
            node.pop(key, None)
        elif action == "add":
            node[draw(st.text(max_size=8))] = draw(SCALARS)
        else:
            node[key] = draw(SCALARS | st.lists(SCALARS, max_size=3))
    return yaml.safe_dump(data)


def hub_settings(path: Path) -> HubConfig:
    """What `tandem hub run --config FILE` does with the file."""
    return hub_config(argparse.Namespace(config=path, **dict.fromkeys(FLAGS)))


@pytest.mark.parametrize(
    ("name", "load", "error"),
    [
        ("edge.yaml", load_config, ConfigError),
        ("hub.yaml", hub_settings, ConfigError),
        ("routing.yaml", load_routing, RoutingError),
    ],
)
@given(text=yaml_texts())
def test_a_config_file_loads_or_the_error_names_it(tmp_path_factory, name, load, error, text):
    path = tmp_path_factory.mktemp("cfg") / name
    path.write_text(text)
    try:
        load(path)
    except error as exc:
        assert str(path) in str(exc)
